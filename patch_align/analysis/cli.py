"""The `patch-align analyze ...` commands: measure one checkpoint, or compare finished runs.

    patch-align analyze --model-path CKPT [--model-base BASE] [--projector FILE] --pad PAD
                        --image-folder DIR --out DIR [options]      → metrics.json, report.md, PNGs
    patch-align analyze compare RUN_A RUN_B ... --out DIR            → comparison.md, comparison.png

The run flags sit on the `analyze` parser itself and `compare` is an optional subcommand, so
both forms parse; the run's required flags are checked once it is clear no subcommand was given.
The model is loaded only inside the command that needs it, after the output folder and the
options are checked; the run flags' defaults are read from `AnalysisOptions`. Bad input (a
missing file, a bad PAD record with `--on-error error`, a folder without metrics.json) is a
`CommandError`: `patch-align analyze [compare]: error: ...`, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from patch_align.cli import CommandError, output_folder, set_command
from patch_align.wandb_report import REPORT_TO, check_wandb_available, flat_numbers, report_to_wandb

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
SUMMARY_FIGURE = "summary.png"
COMPARISON_TABLE = "comparison.md"
COMPARISON_FIGURE = "comparison.png"
_RUN_REQUIRED = ("model_path", "pad", "image_folder", "out")

# (section, key, row title) of the numbers compared side by side; docs/metrics.md defines each.
COMPARED_METRICS = (
    ("compression", "h_vision", "H_vision (nats)"),
    ("compression", "h_projected", "H_projected (nats)"),
    ("compression", "h_words", "H_words (nats)"),
    ("compression", "delta_h", "ΔH = H_vision − H_projected"),
    ("entropy", "vision.per_set.uncentred_normalized_mean", "H_vision per image / log min(N, D)"),
    ("entropy", "projected.per_set.uncentred_normalized_mean", "H_projected per image / log min(N, D)"),
    ("entropy", "delta_h.per_set_uncentred_normalized", "ΔH per image, normalised"),
    ("entropy", "delta_h.pooled_centred_normalized", "ΔH pooled centred, normalised"),
    ("alignment", "miou", "Align mIoU"),
    ("alignment", "chance_miou", "Align mIoU by chance"),
    ("alignment", "pointing_accuracy", "pointing accuracy"),
    ("alignment", "chance_pointing_accuracy", "pointing by chance"),
    ("alignment", "mean_cos_inside", "mean cos inside"),
    ("alignment", "mean_cos_outside", "mean cos outside"),
    ("decomposition", "mean_explained_variance", "MP explained variance"),
    ("decomposition", "word_precision", "MP word precision"),
    ("decomposition", "word_recall", "MP word recall"),
    ("decomposition", "negative_true_positives", "MP label words with a negative coefficient"),
    ("probes", "embedding_gap", "embedding gap"),
    ("probes", "nearest_word_is_label_rate", "nearest word is a label word"),
    ("alignment", "regions_scored", "regions scored"),
    ("data", "images", "images"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `analyze` group (run flags + the `compare` subcommand) on the top-level `subparsers`.

    The run flags' defaults are `AnalysisOptions`' own field defaults (one source for both)."""
    from patch_align.analysis.runner import ON_ERROR, PURSUITS, AnalysisOptions

    default = {option.name: option.default for option in fields(AnalysisOptions)}
    analyze = subparsers.add_parser(
        "analyze",
        help="measure compression, patch alignment and decomposition of a projector",
        description="Run every metric of docs/metrics.md on a checkpoint over a PAD file, or compare runs "
        "with 'patch-align analyze compare RUN_DIR ... --out DIR'.",
    )
    source = analyze.add_argument_group("model and data (required unless 'compare')")
    source.add_argument("--model-path", help="full LLaVA checkpoint, or a stage-1 projector folder")
    source.add_argument("--model-base", help="the LLM a projector folder was trained on")
    source.add_argument(
        "--projector", help="an mm_projector.bin whose weights replace the loaded projector's"
    )
    source.add_argument("--pad", help="PAD file (.json array or .jsonl)")
    source.add_argument("--image-folder", help="folder the PAD records' 'image' paths are relative to")
    source.add_argument("--out", help="output folder (created)")
    run = analyze.add_argument_group("run")
    run.add_argument(
        "--max-images", type=int, default=default["max_images"], metavar="N", help="first N PAD records only"
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=default["batch_size"],
        metavar="B",
        help="images per tower forward (default %(default)s)",
    )
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument(
        "--examples",
        type=int,
        default=default["example_images"],
        metavar="N",
        help="images to draw (default %(default)s)",
    )
    run.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default=default["on_error"],
        help="a bad PAD record/region: stop (error) or skip and count it (default %(default)s)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--report-to", choices=REPORT_TO, default="none",
        help="also log metrics, figures and a metrics table to a wandb run under OUT (default none)",
    )
    masks = analyze.add_argument_group("region masks (as in training)")
    masks.add_argument(
        "--patch-mask-threshold",
        type=float,
        default=default["patch_mask_threshold"],
        metavar="TAU",
        help="min fraction of a patch a region must cover (default %(default)s)",
    )
    masks.add_argument(
        "--patch-mask-fallback",
        choices=("argmax", "none"),
        default=default["patch_mask_fallback"],
        help="default %(default)s",
    )
    entropy = analyze.add_argument_group("matrix entropy")
    entropy.add_argument("--entropy-center", action="store_true", help="use the covariance")
    entropy.add_argument("--no-entropy-normalize", action="store_true", help="do not L2-normalise tokens")
    entropy.add_argument(
        "--entropy-order",
        type=float,
        default=default["entropy_order"],
        help="Rényi order, 1 = von Neumann (default %(default)s)",
    )
    entropy.add_argument(
        "--caption-file",
        default=default["caption_file"],
        help="LLaVA JSON whose answer turns are the text-side token sets (e.g. the world's pretrain.json): "
        "adds per-caption and pooled caption entropies beside the word table's",
    )
    entropy.add_argument(
        "--max-captions", type=int, default=default["max_captions"], metavar="N", help="first N captions only"
    )
    align = analyze.add_argument_group("alignment")
    align.add_argument(
        "--assign", choices=("argmax", "threshold"), default=default["assign"], help="default %(default)s"
    )
    align.add_argument(
        "--background-threshold",
        type=float,
        default=default["background_threshold"],
        help="argmax: patches whose best cosine is below it get no label",
    )
    align.add_argument(
        "--threshold-k",
        type=float,
        default=default["threshold_k"],
        help="threshold: t = mean + k·std per map (default %(default)s)",
    )
    align.add_argument(
        "--fixed-threshold",
        type=float,
        default=default["fixed_threshold"],
        help="threshold: one t for all maps",
    )
    pursuit = analyze.add_argument_group("decomposition and probes")
    pursuit.add_argument(
        "--pursuit", choices=PURSUITS, default=default["pursuit"], help="default %(default)s"
    )
    pursuit.add_argument("--max-atoms", type=int, default=default["max_atoms"], help="default %(default)s")
    pursuit.add_argument(
        "--residual-tol",
        type=float,
        default=default["residual_tol"],
        help="stop once ||r||/||x|| <= this (default %(default)s)",
    )
    pursuit.add_argument(
        "--chunk-size",
        type=int,
        default=default["chunk_size"],
        help="tokens per pursuit/probe chunk (default %(default)s)",
    )
    pursuit.add_argument(
        "--word-min-chars", type=int, default=default["word_min_chars"], help="default %(default)s"
    )
    pursuit.add_argument(
        "--allow-non-alpha-words",
        action="store_true",
        help="keep word pieces with any letter, not only all-letter ones",
    )
    pursuit.add_argument(
        "--words-per-patch",
        type=int,
        default=default["words_per_patch"],
        help="MP words drawn per patch (default %(default)s)",
    )
    set_command(analyze, lambda args: run_command(args, analyze))

    commands = analyze.add_subparsers(dest="analyze_command", metavar="compare")
    compare = commands.add_parser(
        "compare",
        help="side-by-side table and figure of finished runs",
        description="Read RUN/metrics.json of each run folder; write comparison.md and comparison.png.",
    )
    compare.add_argument("runs", nargs="+", help="run folders (or their metrics.json files)")
    compare.add_argument("--out", required=True, help="output folder (created)")
    set_command(compare, compare_command)


def options_from_args(args: argparse.Namespace):
    """The `AnalysisOptions` the run flags describe (an on/off flag not given keeps the field's default)."""
    from patch_align.analysis.runner import AnalysisOptions

    switches = {
        "entropy_center": True if args.entropy_center else None,
        "entropy_normalize": False if args.no_entropy_normalize else None,
        "word_alpha_only": False if args.allow_non_alpha_words else None,
    }
    return AnalysisOptions(
        batch_size=args.batch_size,
        max_images=args.max_images,
        patch_mask_threshold=args.patch_mask_threshold,
        patch_mask_fallback=args.patch_mask_fallback,
        on_error=args.on_error,
        entropy_order=args.entropy_order,
        assign=args.assign,
        background_threshold=args.background_threshold,
        threshold_k=args.threshold_k,
        fixed_threshold=args.fixed_threshold,
        pursuit=args.pursuit,
        max_atoms=args.max_atoms,
        residual_tol=args.residual_tol,
        chunk_size=args.chunk_size,
        word_min_chars=args.word_min_chars,
        example_images=args.examples,
        words_per_patch=args.words_per_patch,
        caption_file=args.caption_file,
        max_captions=args.max_captions,
        **{name: value for name, value in switches.items() if value is not None},
    )


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    missing = [f"--{name.replace('_', '-')}" for name in _RUN_REQUIRED if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    from patch_align.analysis import figures
    from patch_align.analysis.runner import (
        AnalysisInputError,
        check_analysis_inputs,
        load_analysis_model,
        run_analysis,
    )
    from patch_align.pad import PadFormatError

    try:
        options = options_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    out = output_folder(args.out)
    try:
        check_wandb_available(args.report_to)
        check_analysis_inputs(args.pad, args.image_folder, options.caption_file)
        model = load_analysis_model(args.model_path, args.model_base, args.projector, args.device)
        result = run_analysis(model, args.pad, args.image_folder, options, progress=not args.no_progress)
    except (AnalysisInputError, PadFormatError, ValueError, OSError) as err:
        # loader and PAD errors name their file or record; a traceback would add nothing
        raise CommandError(err) from err
    out.mkdir(parents=True, exist_ok=True)
    figure_files = [
        figures.plot_run_comparison({out.name or "run": result.metrics}, out / SUMMARY_FIGURE).name
    ]
    for example in result.examples:
        safe_id = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in example.record_id)
        figure_files.append(figures.plot_region_maps(example, out / f"maps_{safe_id}.png").name)
        figure_files.append(figures.plot_patch_words(example, out / f"words_{safe_id}.png").name)
    result.metrics["figures"] = figure_files
    (out / METRICS_FILE).write_text(json.dumps(result.metrics, indent=2, allow_nan=False) + "\n")
    (out / REPORT_FILE).write_text(format_report(result.metrics))
    if args.report_to == "wandb":
        numbers = flat_numbers({k: v for k, v in result.metrics.items() if k != "run"})
        rows = [[*key.partition("/")[::2], value] for key, value in numbers.items()]
        report_to_wandb(out, "analyze", numbers, [out / name for name in figure_files],
                        {"metrics": (["section", "metric", "value"], rows)}, result.metrics["run"])
    print(
        f"{out / METRICS_FILE}: mIoU {result.metrics['alignment']['miou']:.4f}, "
        f"ΔH {result.metrics['compression']['delta_h']:.4f} nats; report {out / REPORT_FILE}"
    )
    return 0


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| quantity | value |", "| --- | --- |"] + [
        f"| {name} | {_number(value)} |" for name, value in rows
    ]


def _lookup(metrics: Mapping[str, Any], section: str, key: str) -> Any:
    """metrics[section] then each dot-separated part of key; None where a part is missing."""
    value: Any = metrics.get(section)
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _versus_chance(name: str, value: float, chance: float | None) -> str:
    from patch_align.evaluation.baselines import BASELINE_MARK, at_or_below

    if chance is None:
        return f"{name} {value:.4f} (no chance line for this assignment rule)"
    mark = f": {BASELINE_MARK} (chance)" if at_or_below(value, chance) else ": above chance"
    return f"{name} {value:.4f} vs {chance:.4f} by chance{mark}"


def _entropy_table(entropy: Mapping[str, Any]) -> list[str]:
    """Rows side × scope, columns the four variants (nats; normalised: ÷ log min(N, D))."""
    variants = ("uncentred", "centred", "uncentred_normalized", "centred_normalized")
    lines = ["| tokens | scope | " + " | ".join(variants) + " |", "| --- | --- |" + " --- |" * len(variants)]
    for side in ("vision", "projected", "words", "captions"):
        for scope, suffix in (("pooled", ""), ("per_set", "_mean")):
            values = (entropy.get(side) or {}).get(scope)
            if values:
                cells = [_number(values.get(v + suffix)) for v in variants]
                lines.append(f"| {side} | {scope} | " + " | ".join(cells) + " |")
    delta = entropy.get("delta_h", {})
    for scope in ("pooled", "per_set"):
        cells = [_number(delta.get(f"{scope}_{v}")) for v in variants]
        lines.append(f"| ΔH vision − projected | {scope} | " + " | ".join(cells) + " |")
    return lines


def format_report(metrics: Mapping[str, Any]) -> str:
    """report.md of one run: its inputs, every metric section as a table, and its figures."""
    from patch_align.analysis.figures import MIOU_NO_ALIGNMENT

    run, data = metrics["run"], metrics["data"]
    miou = metrics["alignment"]["miou"]
    verdict = (
        f"below {MIOU_NO_ALIGNMENT}: the projector shows no real patch-level alignment (PA)"
        if miou < MIOU_NO_ALIGNMENT
        else f"at or above PA's {MIOU_NO_ALIGNMENT} no-alignment line"
    )
    lines = [
        "# Analysis report",
        "",
        f"- model: `{run['model_path']}`" + (f" (base `{run['model_base']}`)" if run["model_base"] else ""),
        f"- projector override: `{run['projector']}`"
        if run["projector"]
        else "- projector: the checkpoint's",
        f"- PAD: `{run['pad']}`, images `{run['image_folder']}`",
        f"- geometry: `{run['aspect_mode']}`, {run['patch_grid'][0]}×{run['patch_grid'][1]} patches of "
        f"{run['patch_size']} px, `{run['select_feature']}`; device `{run['device']}`",
        "- definitions: docs/metrics.md; options: metrics.json → run.options",
        "",
        f"Align mIoU {miou:.4f}: {verdict}.",
        "",
    ]
    alignment = metrics["alignment"]
    if "chance_pointing_accuracy" in alignment:  # metrics.json files from before the chance lines lack it
        lines += [
            "- " + _versus_chance("Align mIoU", miou, alignment.get("chance_miou")),
            "- " + _versus_chance("pointing accuracy", alignment["pointing_accuracy"],
                                  alignment["chance_pointing_accuracy"]),
            "",
        ]
    for title, section in (
        ("Compression", "compression"),
        ("Alignment", "alignment"),
        ("Decomposition", "decomposition"),
        ("Probes", "probes"),
    ):
        rows = [(key, value) for key, value in metrics[section].items() if key != "top_nearest_words"]
        lines += [f"## {title}", "", *_table(rows), ""]
        if section == "compression" and "entropy" in metrics:
            table = _entropy_table(metrics["entropy"])
            lines += ["### Entropy variants (docs/metrics.md §1b)", "", *table, ""]
    words = metrics["probes"]["top_nearest_words"]
    lines += ["Most frequent nearest words: " + ", ".join(f"{w} ({c})" for w, c in words), ""]
    lines += ["## Data", "", *_table(list(data.items())), ""]
    figure_files = metrics.get("figures", [])
    if figure_files:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figure_files] + [""]
    return "\n".join(lines)


def load_runs(paths: list[str]) -> dict[str, dict[str, Any]]:
    """name → metrics of each run folder (or metrics.json path); names are folder names, made unique."""
    runs: dict[str, dict[str, Any]] = {}
    for given in paths:
        path = Path(given)
        metrics_path = path / METRICS_FILE if path.is_dir() else path
        if not metrics_path.is_file():
            raise FileNotFoundError(f"{given}: no {METRICS_FILE} (is it an 'analyze' output folder?)")
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{metrics_path}: not valid JSON: {err}") from err
        for section in ("compression", "alignment"):
            if not isinstance(metrics, dict) or not isinstance(metrics.get(section), dict):
                raise ValueError(f"{metrics_path}: no '{section}' section (not an analyze metrics.json)")
        name = metrics_path.parent.name or str(metrics_path.parent)
        if name in runs:
            name = str(metrics_path.parent)
        if name in runs:
            raise ValueError(f"{given}: the same run is listed twice")
        runs[name] = metrics
    return runs


def format_comparison(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """comparison.md: one row per compared metric, one column per run."""
    names = list(runs)
    lines = [
        "# Run comparison",
        "",
        "Definitions: docs/metrics.md.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for section, key, title in COMPARED_METRICS:
        cells = [_number(_lookup(runs[n], section, key)) for n in names]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Runs:", ""]
    lines += [f"- {n}: model `{runs[n].get('run', {}).get('model_path')}`" for n in names]
    return "\n".join(lines) + "\n"


def compare_command(args: argparse.Namespace) -> int:
    from patch_align.analysis.figures import plot_run_comparison

    out = output_folder(args.out)
    try:
        runs = load_runs(args.runs)
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(err) from err
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPARISON_TABLE).write_text(format_comparison(runs))
    plot_run_comparison(runs, out / COMPARISON_FIGURE)
    print(f"compared {len(runs)} runs: {out / COMPARISON_TABLE}, {out / COMPARISON_FIGURE}")
    return 0
