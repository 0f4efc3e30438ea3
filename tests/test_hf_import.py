"""llava-hf import and the `patch-align export hf` / `import hf` commands (issue 14).

Round trip: export → import → export writes the same tensors and the same config, tokenizer and
processor files; the imported checkpoint (full, or mm_projector.bin + its LLM) loads with our loader
and gives the original model's logits.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava.model.builder import load_pretrained_model
from patch_align.cli import main

EXPORT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
                "preprocessor_config.json", "chat_template.jinja")


def export(argv: list[str], capsys) -> int:
    code = main(argv)
    capsys.readouterr()
    return code


def error_of(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    return err


@pytest.fixture(scope="module")
def exported(golden_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", "hf", "--model-path", str(golden_dir / "llava-v1.5-tiny"), "--out", str(out)]) == 0
    return out


def probe_logits(model_path: str, model_base: str | None, golden_dir: Path) -> torch.Tensor:
    """Our logits (T, V) on the upstream golden probe prompt and image."""
    from PIL import Image

    from llava.eval.run_llava import single_turn_prompt
    from llava.mm_utils import process_images, tokenizer_image_token

    tokenizer, model, processor, _ = load_pretrained_model(model_path, model_base, None, device="cpu")
    image = Image.open(sorted((golden_dir / "fixtures-437" / "images").iterdir())[0]).convert("RGB")
    ids = tokenizer_image_token(single_turn_prompt("vicuna_v1", "<image>\nWhat is it?"), tokenizer,
                                return_tensors="pt")[None]
    with torch.no_grad():
        return model.eval()(input_ids=ids, images=process_images([image], processor, model.config)).logits[0]


@pytest.mark.parametrize("projector_only", [False, True])
def test_export_import_export_writes_the_same_tensors_and_files(exported, tmp_path, capsys, projector_only):
    imported, again = tmp_path / "ours", tmp_path / "hf-again"
    assert export(["import", "hf", "--model-path", str(exported), "--out", str(imported)]
                  + (["--projector-only"] if projector_only else []), capsys) == 0
    base = ["--model-base", str(imported / "llm")] if projector_only else []
    assert export(["export", "hf", "--model-path", str(imported), *base, "--out", str(again)], capsys) == 0
    first, second = load_file(exported / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    for name in EXPORT_FILES:
        assert (exported / name).read_text() == (again / name).read_text(), name


def test_imported_full_checkpoint_gives_the_original_models_logits(exported, golden_dir, tmp_path, capsys):
    argv = ["import", "hf", "--model-path", str(exported), "--out", str(tmp_path / "ours")]
    assert export(argv, capsys) == 0
    assert (tmp_path / "ours" / "model.safetensors").is_file()
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and config["image_aspect_ratio"] == "pad"
    assert config["mm_vision_tower"] == str((tmp_path / "ours" / "vision_tower").resolve())
    # LLaVA trains right-padded; the export's left padding is for generation only
    assert config["tokenizer_padding_side"] == "right"
    assert json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())["padding_side"] == "right"
    original = probe_logits(str(golden_dir / "llava-v1.5-tiny"), None, golden_dir)
    imported = probe_logits(str(tmp_path / "ours"), None, golden_dir)
    assert imported.shape == (original.shape[0], 384)  # the export's rows for <image> and padding stay
    assert torch.equal(imported[:, : original.shape[1]], original)


def test_projector_only_import_is_a_stage1_checkpoint_that_loads_with_its_recorded_llm(
    exported, golden_dir, tmp_path, capsys
):
    out = tmp_path / "ours"
    assert export(["import", "hf", "--model-path", str(exported), "--out", str(out), "--projector-only"],
                  capsys) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "llm", "mm_projector.bin", "vision_tower"]
    projector = torch.load(out / "mm_projector.bin", weights_only=True)
    assert sorted(projector) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                                 "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    original = probe_logits(str(golden_dir / "llava-v1.5-tiny"), None, golden_dir)
    # no model_base: the loader takes the LLM folder the config records (a local folder)
    imported = probe_logits(str(out), None, golden_dir)
    assert torch.equal(imported[:, : original.shape[1]], original)


def test_export_refuses_a_projector_llava_hf_cannot_hold_before_loading(golden_dir, tmp_path, capsys):
    folder = tmp_path / "linear"
    shutil.copytree(golden_dir / "llava-v1.5-tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "linear"}))
    err = error_of(["export", "hf", "--model-path", str(folder), "--out", str(tmp_path / "hf")], capsys)
    assert err == ("patch-align export hf: error: mm_projector_type 'linear' has no llava-hf counterpart: "
                   "LlavaMultiModalProjector is mlp2x_gelu (linear_1, GELU, linear_2)")
    (folder / "config.json").write_text(json.dumps({**config, "mm_use_im_start_end": True}))
    err = error_of(["export", "hf", "--model-path", str(folder), "--out", str(tmp_path / "hf")], capsys)
    assert err.endswith("mm_use_im_start_end=True: llava-hf has no image start/end or patch tokens")


def test_export_of_a_lora_checkpoint_without_its_base_names_the_missing_base(golden_dir, tmp_path, capsys):
    folder = tmp_path / "lora"
    shutil.copytree(golden_dir / "llava-v1.5-tiny-lora", folder)
    adapter = json.loads((folder / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = str(tmp_path / "gone")
    (folder / "adapter_config.json").write_text(json.dumps(adapter))
    err = error_of(["export", "hf", "--model-path", str(folder), "--out", str(tmp_path / "hf")], capsys)
    assert f"{folder} is a lora checkpoint and needs the language model it was trained on" in err
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())


def test_export_and_import_refuse_a_non_empty_output_folder(golden_dir, exported, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    for argv in (["export", "hf", "--model-path", str(golden_dir / "llava-v1.5-tiny")],
                 ["import", "hf", "--model-path", str(exported)]):
        err = error_of([*argv, "--out", str(tmp_path / "full")], capsys)
        assert err.endswith(f"error: --out {tmp_path / 'full'} is not empty: give a new folder")


def test_import_of_a_folder_that_is_not_llava_hf_names_its_model_type(golden_dir, tmp_path, capsys):
    err = error_of(["import", "hf", "--model-path", str(golden_dir / "llava-v1.5-tiny"),
                    "--out", str(tmp_path / "ours")], capsys)
    assert err == (f"patch-align import hf: error: {golden_dir / 'llava-v1.5-tiny' / 'config.json'}: "
                   "model_type is 'llava_llama', a llava-hf folder has 'llava'")


def test_import_of_a_llava_hf_folder_without_weights_is_an_error(exported, tmp_path, capsys):
    folder = tmp_path / "no-weights"
    shutil.copytree(exported, folder)
    (folder / "model.safetensors").unlink()
    err = error_of(["import", "hf", "--model-path", str(folder), "--out", str(tmp_path / "ours")], capsys)
    assert err.endswith(f"error: {folder} holds no model weights (*.safetensors / pytorch_model*.bin)")


def test_export_dtype_flag_sets_the_weights_and_config_dtype(golden_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    assert export(["export", "hf", "--model-path", str(golden_dir / "llava-v1.5-tiny"), "--out", str(out),
                   "--dtype", "bfloat16"], capsys) == 0
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_export_with_an_unknown_conversation_mode_lists_the_templates(golden_dir, tmp_path, capsys):
    err = error_of(["export", "hf", "--model-path", str(golden_dir / "llava-v1.5-tiny"), "--out",
                    str(tmp_path / "hf"), "--conv-mode", "vicuna"], capsys)
    assert err.startswith("patch-align export hf: error: --conv-mode 'vicuna' is not a template; choose from")
    assert "'vicuna_v1'" in err
