"""Specification of the analysis runner and `patch-align analyze` (run and compare).

Fast tests plant tokens in the model-free `AnalysisAccumulator`, so every expected number is
known; the end-to-end tests load the tiny upstream checkpoints (marked slow: model loading).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patch_align.analysis import AlignmentAccumulator, matrix_entropy
from patch_align.analysis.runner import AnalysisAccumulator, AnalysisOptions
from patch_align.cli import main

D = 6
WORDS = ["red", "box", "sky", "dog", "cat", "sea"]
# vocabulary id of each dictionary row: rows are words 10..15 of a made-up vocabulary
WORD_IDS = torch.arange(10, 16)


def _accumulator(**options) -> AnalysisAccumulator:
    return AnalysisAccumulator(torch.eye(D) * 2.0, WORD_IDS, WORDS, AnalysisOptions(**options))


def _two_region_image() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
    """A 2×2 grid: region 'red' owns patches 0-1, 'dog' owns 2-3; tokens equal their label's embedding."""
    embeddings = torch.eye(D)[[0, 3]] * 2.0  # (R=2, D): the dictionary rows of 'red' and 'dog'
    masks = torch.tensor([[True, True, False, False], [False, False, True, True]])
    tokens = embeddings[[0, 0, 1, 1]] * torch.tensor([[1.0], [3.0], [2.0], [0.5]])  # (P=4, D)
    return tokens, embeddings, masks, [[10], [13]]


def test_planted_perfect_alignment_scores_one_and_equals_the_pure_accumulator():
    tokens, embeddings, masks, label_ids = _two_region_image()
    runner = _accumulator()
    runner.add_tokens(tokens, tokens)
    runner.add_image(tokens, embeddings, masks, label_ids)
    pure = AlignmentAccumulator()
    pure.update(tokens, embeddings, masks)
    result = runner.result()["alignment"]
    assert result == pure.result()
    assert result["miou"] == 1.0
    assert result["pointing_accuracy"] == 1.0
    assert result["mean_cos_inside"] == pytest.approx(1.0)
    assert result["mean_cos_outside"] == pytest.approx(0.0)


def test_planted_swapped_labels_give_the_pure_functions_value():
    tokens, embeddings, masks, label_ids = _two_region_image()
    swapped = masks[[1, 0]]
    runner = _accumulator(assign="threshold", fixed_threshold=0.5)
    runner.add_tokens(tokens, tokens)
    runner.add_image(tokens, embeddings, swapped, label_ids)
    pure = AlignmentAccumulator(assign="threshold", fixed_threshold=0.5)
    pure.update(tokens, embeddings, swapped)
    assert runner.result()["alignment"] == pure.result()
    assert runner.result()["alignment"]["miou"] == 0.0
    assert runner.result()["alignment"]["pointing_accuracy"] == 0.0


def test_images_without_regions_feed_entropy_but_not_alignment():
    tokens, embeddings, masks, label_ids = _two_region_image()
    runner = _accumulator()
    runner.add_tokens(tokens, tokens)
    runner.add_image(tokens, embeddings, masks, label_ids)
    runner.add_tokens(tokens, tokens)
    runner.add_image(tokens, embeddings[:0], masks[:0], [])
    result = runner.result()
    assert result["alignment"]["images"] == 1
    assert result["compression"]["tokens"] == 8
    assert result["decomposition"]["patches"] == 8
    assert result["decomposition"]["patches_skipped_unlabelled"] == 4


def test_entropies_equal_the_one_shot_matrix_entropy():
    generator = torch.Generator().manual_seed(0)
    vision = [torch.randn(5, 3, generator=generator) for _ in range(3)]
    projected = [torch.randn(5, D, generator=generator) for _ in range(3)]
    runner = _accumulator(entropy_center=True, entropy_order=2.0)
    tokens, embeddings, masks, label_ids = _two_region_image()
    for v, p in zip(vision, projected, strict=True):
        runner.add_tokens(v, p)
    runner.add_image(tokens, embeddings, masks, label_ids)
    compression = runner.result()["compression"]
    options = {"center": True, "order": 2.0}
    assert compression["h_vision"] == pytest.approx(
        float(matrix_entropy(torch.cat(vision), **options)), abs=1e-9
    )
    assert compression["h_projected"] == pytest.approx(
        float(matrix_entropy(torch.cat(projected), **options)), abs=1e-9
    )
    assert compression["h_words"] == pytest.approx(float(matrix_entropy(torch.eye(D), **options)), abs=1e-9)
    assert compression["delta_h"] == pytest.approx(compression["h_vision"] - compression["h_projected"])


def test_planted_word_mixtures_are_recovered_with_precision_and_recall_one():
    # both patches of a region covered by the labels 'red box' (ids 10, 11): x = 2·e_red + 1·e_box
    tokens = torch.stack([torch.eye(D)[0] * 2 + torch.eye(D)[1], torch.eye(D)[0] * 2 + torch.eye(D)[1]])
    embeddings = torch.eye(D)[[0]] * 2.0
    runner = _accumulator(pursuit="omp", max_atoms=4)
    runner.add_tokens(tokens, tokens)
    runner.add_image(tokens, embeddings, torch.tensor([[True, True]]), [[10, 11, 99]])
    decomposition = runner.result()["decomposition"]
    assert decomposition["word_precision"] == 1.0
    assert decomposition["word_recall"] == 1.0
    assert decomposition["mean_atoms_used"] == 2.0  # stops at the residual tolerance, not at 4 atoms
    assert decomposition["mean_explained_variance"] == pytest.approx(1.0)
    assert decomposition["label_tokens_outside_dictionary"] == 1  # id 99 is not a dictionary word


def test_a_negative_coefficient_word_is_reported_apart_not_recovered():
    # x = 2·e_red − 1·e_box on a patch labelled 'red box': 'box' enters with a negative coefficient
    tokens = torch.stack([torch.eye(D)[0] * 2 - torch.eye(D)[1]])
    runner = _accumulator(pursuit="mp", max_atoms=4)
    runner.add_tokens(tokens, tokens)
    runner.add_image(tokens, torch.eye(D)[[0]] * 2.0, torch.tensor([[True]]), [[10, 11]])
    decomposition = runner.result()["decomposition"]
    assert (decomposition["true_positives"], decomposition["recovered_total"]) == (1, 1)
    assert decomposition["word_precision"] == 1.0 and decomposition["word_recall"] == 0.5
    assert (decomposition["negative_true_positives"], decomposition["negative_recovered_total"]) == (1, 1)
    assert decomposition["any_sign_word_recall"] == 1.0  # what the sign-blind count claimed


def test_entropy_variants_per_image_and_pooled_and_over_caption_token_sets():
    # two images of 2 orthonormal tokens each on disjoint axes: per image log 2, pooled log 4
    images = torch.eye(D)[:4].reshape(2, 2, D)
    runner = _accumulator()
    runner.add_image_tokens(images[..., :4], images)
    tokens, embeddings, masks, label_ids = _two_region_image()
    runner.add_image(tokens, embeddings, masks, label_ids)
    runner.add_caption_tokens(torch.eye(D)[:3])  # one 3-token caption: log 3, normalised 1
    runner.add_caption_tokens(torch.eye(D)[:1])  # one token: skipped, counted
    entropy = runner.result()["entropy"]
    assert entropy["vision"]["per_set"]["uncentred_mean"] == pytest.approx(math.log(2), abs=1e-12)
    assert entropy["projected"]["pooled"]["uncentred"] == pytest.approx(math.log(4), abs=1e-12)
    assert entropy["vision"]["pooled"]["uncentred_normalized"] == pytest.approx(1.0, abs=1e-12)  # D_v = 4
    # the ceiling is log min(N, D) = log 4 on both sides although D = 6 > D_v = 4
    assert entropy["projected"]["pooled"]["uncentred_normalized"] == pytest.approx(1.0, abs=1e-12)
    assert entropy["delta_h"]["per_set_uncentred_normalized"] == pytest.approx(0.0, abs=1e-12)
    assert entropy["words"]["pooled"]["uncentred"] == pytest.approx(math.log(D), abs=1e-12)
    captions = entropy["captions"]
    assert captions["per_set"]["uncentred_mean"] == pytest.approx(math.log(3), abs=1e-12)
    assert captions["per_set"]["uncentred_normalized_mean"] == pytest.approx(1.0, abs=1e-12)
    assert (captions["per_set"]["sets"], captions["per_set"]["sets_skipped"]) == (1, 1)
    assert captions["pooled"]["tokens"] == 4


def test_report_marks_alignment_at_or_below_chance_and_tables_the_entropy_variants():
    from patch_align.analysis.cli import format_report

    tokens, embeddings, masks, label_ids = _two_region_image()
    runner = _accumulator()
    runner.add_image_tokens(tokens.unsqueeze(0), tokens.unsqueeze(0))
    runner.add_image(tokens, embeddings.flip(0), masks, label_ids)  # labels swapped: IoU 0, below chance
    metrics = runner.result()
    metrics["data"] = {"images": 1}
    metrics["run"] = {"model_path": "m", "model_base": None, "projector": None, "pad": "p",
                      "image_folder": "i", "aspect_mode": "pad", "patch_grid": [2, 2], "patch_size": 1,
                      "select_feature": "patch", "device": "cpu"}
    report = format_report(metrics)
    chance = metrics["alignment"]["chance_miou"]
    assert f"- Align mIoU 0.0000 vs {chance:.4f} by chance: ≤ baseline (chance)" in report
    assert "- pointing accuracy 0.0000 vs 0.5000 by chance: ≤ baseline (chance)" in report
    assert "| projected | per_set |" in report and "| ΔH vision − projected | pooled |" in report


def test_probes_on_tokens_equal_to_words_have_zero_gap_and_hit_the_label():
    tokens, embeddings, masks, label_ids = _two_region_image()
    tokens = embeddings[[0, 0, 1, 1]]
    runner = _accumulator()
    runner.add_tokens(tokens, tokens)
    runner.add_image(tokens, embeddings, masks, label_ids)
    probes = runner.result()["probes"]
    assert probes["embedding_gap"] == pytest.approx(0.0, abs=1e-6)
    assert probes["nearest_word_is_label_rate"] == 1.0
    assert probes["top_nearest_words"] == [["red", 2], ["dog", 2]]


def test_dictionary_ids_and_texts_must_agree():
    with pytest.raises(ValueError, match="must agree"):
        AnalysisAccumulator(torch.eye(D), WORD_IDS[:3], WORDS, AnalysisOptions())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"residual_tol": 1.0}, "residual_tol"),
        ({"pursuit": "lasso"}, "pursuit"),
        ({"batch_size": 0}, "batch_size"),
        ({"patch_mask_threshold": 0.0}, "threshold"),
        ({"assign": "argmax", "fixed_threshold": 0.3}, "fixed_threshold"),
        ({"on_error": "ignore"}, "on_error"),
    ],
)
def test_bad_options_are_rejected_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        AnalysisOptions(**options)


def test_analyze_without_its_required_flags_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--model-path", "somewhere"])
    assert exit_info.value.code == 2
    assert "--pad, --image-folder, --out" in capsys.readouterr().err


def _write_run(folder: Path, miou: float) -> Path:
    tokens, embeddings, masks, label_ids = _two_region_image()
    runner = _accumulator()
    runner.add_tokens(tokens, tokens)
    runner.add_image(tokens, embeddings, masks, label_ids)
    metrics = runner.result()
    metrics["alignment"]["miou"] = miou
    metrics["data"] = {"images": 1}
    metrics["run"] = {"model_path": f"/models/{folder.name}"}
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_compare_writes_a_side_by_side_table_and_figure(tmp_path):
    first = _write_run(tmp_path / "llava", 0.125)
    second = _write_run(tmp_path / "aligned", 0.5)
    assert (
        main(["analyze", "compare", str(first), str(second / "metrics.json"), "--out", str(tmp_path / "cmp")])
        == 0
    )
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| metric | llava | aligned |" in table
    assert "| Align mIoU | 0.1250 | 0.5000 |" in table
    assert "| MP word precision |" in table
    with Image.open(tmp_path / "cmp" / "comparison.png") as png:
        assert png.size[0] > 800 and png.size[1] > 300


def test_compare_names_a_folder_without_metrics(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["analyze", "compare", str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")]) == 2
    assert "empty: no metrics.json" in capsys.readouterr().err


def _finite_numbers(value) -> list[float]:
    """Every number in a JSON value (recursively)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    items = value.values() if isinstance(value, dict) else value
    return [number for item in items for number in _finite_numbers(item)]


@pytest.fixture(scope="module")
def full_run(golden_dir, tmp_path_factory) -> Path:
    fixtures = golden_dir / "fixtures-437"
    out = tmp_path_factory.mktemp("analyze") / "full"
    code = main(
        [
            "analyze",
            "--model-path",
            str(golden_dir / "llava-v1.5-tiny"),
            "--pad",
            str(fixtures / "pad.json"),
            "--image-folder",
            str(fixtures / "images"),
            "--out",
            str(out),
            "--max-images",
            "5",
            "--batch-size",
            "2",
            "--examples",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


@pytest.mark.slow
def test_analyze_writes_metrics_report_and_figures(full_run):
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert all(math.isfinite(x) for x in _finite_numbers(metrics))
    assert metrics["data"]["images"] == 5
    assert metrics["alignment"]["images"] == 5
    assert metrics["compression"]["tokens"] == 5 * 16  # 4×4 patch grid of the 56-px tiny tower
    assert metrics["run"]["aspect_mode"] == "pad"
    assert metrics["figures"] == [
        "summary.png",
        "maps_s000.png",
        "words_s000.png",
        "maps_s001.png",
        "words_s001.png",
    ]
    report = (full_run / "report.md").read_text()
    assert "## Alignment" in report and "![maps_s000.png](maps_s000.png)" in report
    for name in metrics["figures"]:
        with Image.open(full_run / name) as png:
            width, height = png.size
            assert 300 <= width <= 4000 and 200 <= height <= 4000
            assert np.asarray(png.convert("L"), dtype=float).std() > 5


@pytest.mark.slow
def test_analyze_alignment_equals_an_independent_recomputation(full_run, golden_dir):
    """LLaVA's own encode_images + the training geometry, scored by the pure accumulator."""
    from llava.mm_utils import process_images
    from llava.model.builder import load_pretrained_model
    from patch_align.geometry import coverage_to_patch_mask, mask_to_patch_coverage, processor_transform
    from patch_align.pad import decode_region_mask, iter_pad_records

    fixtures = golden_dir / "fixtures-437"
    tokenizer, model, processor, _ = load_pretrained_model(
        str(golden_dir / "llava-v1.5-tiny"), None, device="cpu"
    )
    table = model.get_input_embeddings().weight.detach()
    expected = AlignmentAccumulator()
    for number, record in enumerate(iter_pad_records(fixtures / "pad.json")):
        if number == 5:
            break
        image = Image.open(fixtures / "images" / record.image).convert("RGB")
        with torch.no_grad():
            tokens = model.encode_images(process_images([image], processor, model.config))[0]
        transform = processor_transform(record.width, record.height, "pad", processor)
        masks, words = [], []
        for region in record.regions:
            coverage = mask_to_patch_coverage(
                decode_region_mask(region, record.height, record.width), transform
            )
            masks.append(torch.from_numpy(coverage_to_patch_mask(coverage)[0].reshape(-1)))
            ids = tokenizer(region.label, add_special_tokens=False).input_ids
            words.append(table[ids].mean(dim=0))
        expected.update(tokens, torch.stack(words), torch.stack(masks))
    metrics = json.loads((full_run / "metrics.json").read_text())
    for key, value in expected.result().items():
        assert metrics["alignment"][key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.slow
def test_analyze_runs_on_a_stage1_projector_folder_and_a_projector_override(golden_dir, tmp_path):
    fixtures = golden_dir / "fixtures-437"
    data = [
        "--pad",
        str(fixtures / "pad.json"),
        "--image-folder",
        str(fixtures / "images"),
        "--max-images",
        "3",
        "--examples",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ]
    projector_dir = golden_dir / "llava-tiny-pretrain"
    assert (
        main(
            [
                "analyze",
                "--model-path",
                str(projector_dir),
                "--model-base",
                str(fixtures / "llm"),
                "--out",
                str(tmp_path / "stage1"),
                *data,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "analyze",
                "--model-path",
                str(golden_dir / "llava-v1.5-tiny"),
                "--projector",
                str(projector_dir / "mm_projector.bin"),
                "--out",
                str(tmp_path / "override"),
                *data,
            ]
        )
        == 0
    )
    stage1 = json.loads((tmp_path / "stage1" / "metrics.json").read_text())
    override = json.loads((tmp_path / "override" / "metrics.json").read_text())
    assert stage1["run"]["aspect_mode"] == "square"  # the stage-1 config, unlike the finetuned one
    assert override["run"]["projector"] == str(projector_dir / "mm_projector.bin")
    assert override["run"]["aspect_mode"] == "pad"
    for metrics in (stage1, override):
        assert all(math.isfinite(x) for x in _finite_numbers(metrics))
        assert (tmp_path / "stage1" / "maps_s000.png").stat().st_size > 1000
    assert (
        main(
            [
                "analyze",
                "compare",
                str(tmp_path / "stage1"),
                str(tmp_path / "override"),
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    assert "| metric | stage1 | override |" in (tmp_path / "cmp" / "comparison.md").read_text()


@pytest.mark.slow
def test_bad_pad_records_stop_the_run_by_name_or_are_skipped_and_counted(golden_dir, tmp_path, capsys):
    fixtures = golden_dir / "fixtures-437"
    args = [
        "analyze",
        "--model-path",
        str(golden_dir / "llava-v1.5-tiny"),
        "--pad",
        str(fixtures / "pad_bad.json"),
        "--image-folder",
        str(fixtures / "images"),
        "--examples",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main([*args, "--out", str(tmp_path / "strict")]) == 2
    assert "PAD record bad-missing-image: cannot read image" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "lenient"), "--on-error", "skip"]) == 0
    metrics = json.loads((tmp_path / "lenient" / "metrics.json").read_text())
    # missing image (2 regions), RLE of the wrong size, empty mask, blank label
    assert metrics["data"] == {
        "images": 6,
        "regions_used": 5,
        "regions_skipped_bad": 5,
        "regions_outside_view": 0,
        "regions_fallback": 5,
        "images_skipped_bad": 1,
    }
    assert metrics["compression"]["tokens"] == 6 * 16  # images left without regions still feed the entropies
    assert metrics["alignment"]["images"] == 3
