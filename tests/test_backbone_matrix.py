"""The whole recipe on every LLM family x vision tower, on tiny random models with real tokenizer files.

Each combination is built the way real checkpoints are: a tiny base LM of the family (`build_tiny_lm`)
with a tiny tokenizer of the family's own kind (`build_tiny_tokenizer`), and the fixture CLIP or a
tiny SigLIP, all loaded through `from_pretrained`. Per combination, in one process: stage 1 with
the caption-only, patch-aligned and SEA objectives; stage 2 full and LoRA with the family's chat
template; the LoRA merge script; the loader on its three checkpoint kinds; batched generation;
evaluation (`model_vqa_loader`); analysis (matching pursuit over that LLM's own vocabulary); PAD
label tokenisation. Runs are 2 optimizer steps: the matrix checks that everything runs and fits
together, the tests of each part check what it computes.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from family_lms import FIXTURES, LM_VARIANTS, build_variant, stage1_flags

from llava.model.language_model.families import LLM_FAMILIES
from llava.tiny import TINY_LM_VARIANTS

REPO = Path(__file__).resolve().parents[1]
# the chat template each variant's checkpoints are trained with (docs/backbones.md)
TEMPLATES = {name: variant.template for name, variant in TINY_LM_VARIANTS.items()}
TOWERS = ("clip", "siglip")
COMBOS = [(variant, tower) for variant in LM_VARIANTS for tower in TOWERS]
QUESTIONS = [
    {"question_id": 1, "image": "img003.png", "text": "What is in the picture?"},
    {"question_id": 2, "image": "img001.png", "text": "Name one object."},
    {"question_id": 3, "text": "Name a colour."},
]


@dataclass
class RecipeRun:
    """What one combination's recipe produced: folders, loaded logits, answers, analysis metrics."""

    variant: str
    tower_kind: str
    llm: Path
    tower: Path
    runs: dict[str, Path] = field(default_factory=dict)
    class_names: dict[str, str] = field(default_factory=dict)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    generated: dict[int, list[list[int]]] = field(default_factory=dict)
    answers: list[dict] = field(default_factory=list)
    analysis: dict = field(default_factory=dict)
    label_checks: list[tuple[list[int], list[int]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("matrix-models")


@pytest.fixture(scope="module")
def sea_labels(tmp_path_factory) -> Path:
    """Planted colour labels of fixtures-437 in `pad` mode, where both towers place patches alike."""
    from tests.test_siglip_sea import FIXTURE_CLIP_PREPROCESSING, colour_labels

    return colour_labels(tmp_path_factory.mktemp("matrix-sea") / "labels", "pad", FIXTURE_CLIP_PREPROCESSING)


def tower_folder(root: Path, kind: str) -> Path:
    if kind == "clip":
        return FIXTURES / "clip"
    from llava.tiny import build_tiny_siglip

    folder = root / "siglip"
    if not folder.is_dir():  # the fixture CLIP's 4 x 4 grid: 56 px, 14-px patches
        build_tiny_siglip(folder, image_size=56, patch_size=14)
    return folder


def prompt_for(template: str, question: str, image: bool) -> str:
    from llava.constants import DEFAULT_IMAGE_TOKEN
    from llava.conversation import conv_templates

    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{question}" if image else question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def merge_script():
    path = REPO / "scripts" / "merge_lora_weights.py"
    spec = importlib.util.spec_from_file_location("merge_lora_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_logits(folder: Path, base: Path | None, template: str, run: RecipeRun, name: str) -> None:
    """Load `folder` with the loader, record its class and the logits of one image prompt."""
    from PIL import Image

    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(
        str(folder), str(base) if base else None, device_map="cpu", device="cpu", attn_implementation="sdpa"
    )
    ids = tokenizer_image_token(prompt_for(template, "What is in the picture?", True), tokenizer,
                                return_tensors="pt")[None]
    image = Image.open(FIXTURES / "images" / "img000.png").convert("RGB")
    with torch.inference_mode():
        out = model.eval()(input_ids=ids, images=process_images([image], processor, model.config))
    run.class_names[name] = type(model).__name__
    run.logits[name] = out.logits
    return tokenizer, model, processor


def run_recipe(variant: str, tower_kind: str, root: Path, work: Path, sea_labels: Path) -> RecipeRun:
    from PIL import Image

    from llava.eval import model_vqa_loader
    from llava.eval.generation import GenerationSettings, generate_batch_token_ids
    from llava.train.train import build_trainer, train
    from patch_align.analysis.runner import AnalysisOptions, load_analysis_model, run_analysis
    from patch_align.recipe import PatchAlignRecipe
    from patch_align.train import main as patch_align_main

    template = TEMPLATES[variant]
    run = RecipeRun(variant, tower_kind, build_variant(root, variant), tower_folder(root, tower_kind))

    def stage1(name: str, entry, **flags) -> Path:
        run.runs[name] = work / name
        entry(stage1_flags(run.llm, run.tower, work / name, **flags))
        return work / name

    caption = stage1("caption", lambda argv: train(argv=argv))
    patch_flags = {"pad_path": FIXTURES / "pad.json"}
    argv = stage1_flags(run.llm, run.tower, work / "unused", **patch_flags)
    trainer, _ = build_trainer(PatchAlignRecipe(), argv)
    for index in range(4):
        item = trainer.train_dataset[index]
        run.label_checks += [(item["input_ids"].tolist(), ids) for ids in item["region_label_ids"]]
    stage1("patch_aligned", patch_align_main, **patch_flags)
    stage1("sea", patch_align_main, align_objective="sea", sea_labels=sea_labels, image_aspect_ratio="pad")

    stage2 = {
        "version": template, "data_path": FIXTURES / "finetune.json", "tune_mm_mlp_adapter": False,
        "pretrain_mm_mlp_adapter": caption / "mm_projector.bin", "image_aspect_ratio": "pad",
        "per_device_train_batch_size": 2, "learning_rate": 2e-5,
    }
    full = stage1("full", lambda argv: train(argv=argv), **stage2)
    lora = stage1("lora", lambda argv: train(argv=argv), **stage2, lora_enable=True, lora_r=4, lora_alpha=8)
    run.runs["merged"] = work / "merged"
    merge_script().merge_lora(str(lora), str(run.llm), str(work / "merged"))

    image_logits(caption, run.llm, template, run, "projector")
    image_logits(lora, run.llm, template, run, "lora")
    image_logits(work / "merged", None, template, run, "merged")
    tokenizer, model, processor = image_logits(full, None, template, run, "full")

    prompts = [prompt_for(template, q["text"], "image" in q) for q in QUESTIONS]
    images = [Image.open(FIXTURES / "images" / q["image"]).convert("RGB") if "image" in q else None
              for q in QUESTIONS]
    settings = GenerationSettings(max_new_tokens=4)
    for batch_size in (1, len(prompts)):
        run.generated[batch_size] = generate_batch_token_ids(
            model, tokenizer, prompts, images, processor, settings, batch_size=batch_size
        )

    questions = work / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    answers = work / "answers.jsonl"
    model_vqa_loader.main([
        "--model-path", str(full), "--image-folder", str(FIXTURES / "images"),
        "--question-file", str(questions), "--answers-file", str(answers), "--conv-mode", template,
        "--temperature", "0", "--max_new_tokens", "4", "--num-workers", "0", "--device", "cpu",
        "--batch-size", "2",
    ])
    run.answers = [json.loads(line) for line in answers.read_text().splitlines()]

    analysis = load_analysis_model(caption, run.llm, device="cpu")
    options = AnalysisOptions(pursuit="mp", max_images=4, example_images=0, max_atoms=4)
    result = run_analysis(analysis, FIXTURES / "pad.json", FIXTURES / "images", options, progress=False)
    _, ids, texts = analysis.word_dictionary(AnalysisOptions())
    run.analysis = {"metrics": result.metrics, "word_ids": ids.tolist(), "word_texts": texts,
                    "vocab_size": len(analysis.tokenizer)}
    return run


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{v}-{t}" for v, t in COMBOS])
def recipe(request, models_root, sea_labels, tmp_path_factory) -> RecipeRun:
    variant, tower = request.param
    work = tmp_path_factory.mktemp(f"matrix-{variant}-{tower}")
    return run_recipe(variant, tower, models_root, work, sea_labels)


def test_every_stage_writes_its_checkpoint_kind_for_the_familys_model_type(recipe):
    from llava.model.checkpoints import CheckpointKind, detect_checkpoint_kind

    family = LLM_FAMILIES[LM_VARIANTS[recipe.variant][0]]
    kinds = {name: detect_checkpoint_kind(folder) for name, folder in recipe.runs.items()}
    assert kinds == {
        "caption": CheckpointKind.PROJECTOR, "patch_aligned": CheckpointKind.PROJECTOR,
        "sea": CheckpointKind.PROJECTOR, "full": CheckpointKind.FULL, "lora": CheckpointKind.LORA,
        "merged": CheckpointKind.FULL,
    }
    for name, folder in recipe.runs.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == family.llava_model_type, name
        assert config["mm_vision_tower"] == str(recipe.tower), name
        if name in ("full", "lora", "merged"):  # inference picks the trained template from it
            assert config["mm_conv_template"] == TEMPLATES[recipe.variant], name


def test_each_stage1_objective_logs_its_losses(recipe):
    def logged(name: str) -> set[str]:
        history = json.loads((recipe.runs[name] / "trainer_state.json").read_text())["log_history"]
        return {key for entry in history for key in entry}

    assert "loss" in logged("caption")
    assert {"loss_caption", "loss_patch"} <= logged("patch_aligned")
    assert {"loss_caption", "loss_sea"} <= logged("sea")


def test_the_loader_builds_the_familys_class_for_all_three_kinds(recipe):
    family = LLM_FAMILIES[LM_VARIANTS[recipe.variant][0]]
    assert set(recipe.class_names.values()) == {family.causal_lm_class.__name__}
    patches = 16  # a 4 x 4 grid for both towers: CLIP drops its CLS token, SigLIP has none
    shapes = {name: logits.shape for name, logits in recipe.logits.items()}
    assert len(set(shapes.values())) == 1 and next(iter(shapes.values()))[1] > patches
    assert all(torch.isfinite(logits).all() for logits in recipe.logits.values())


def test_the_merged_lora_checkpoint_gives_the_logits_of_the_lora_one(recipe):
    torch.testing.assert_close(recipe.logits["merged"], recipe.logits["lora"], rtol=1e-4, atol=1e-5)


def test_batched_generation_equals_one_prompt_at_a_time(recipe):
    assert recipe.generated[len(QUESTIONS)] == recipe.generated[1]
    assert all(0 < len(ids) <= 4 for ids in recipe.generated[1])


def test_evaluation_answers_every_question(recipe):
    assert [a["question_id"] for a in recipe.answers] == [q["question_id"] for q in QUESTIONS]
    assert all(a["model_id"] and isinstance(a["text"], str) for a in recipe.answers)


def test_analysis_pursues_over_the_llms_own_vocabulary(recipe):
    analysis, metrics = recipe.analysis, recipe.analysis["metrics"]
    assert analysis["word_ids"] and max(analysis["word_ids"]) < analysis["vocab_size"]
    assert all(text.isalpha() and len(text) >= 2 for text in analysis["word_texts"])
    assert metrics["dictionary"]["words"] == len(analysis["word_ids"])
    assert (metrics["decomposition"]["method"], metrics["decomposition"]["patches"]) == ("mp", 4 * 16)
    assert metrics["data"]["images"] == 4


def test_pad_labels_tokenise_as_they_stand_in_the_caption(recipe):
    assert len(recipe.label_checks) == 8  # two regions in each of the first four images
    for caption_ids, label_ids in recipe.label_checks:
        assert label_ids and any(
            caption_ids[i:i + len(label_ids)] == label_ids for i in range(len(caption_ids))
        ), (label_ids, caption_ids)
