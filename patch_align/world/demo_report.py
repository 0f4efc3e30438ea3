"""The demo's report.md and figures, from its metrics.json content (pure but for the files written).

Every number is shown with its blind or chance baseline where one exists; a cell whose mean minus
std does not beat its baseline carries a † (`verdicts.above_baseline`). The claims section states,
claim by claim, only what `verdicts.compare` concludes from the table.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from patch_align.world.demo import METHOD_TITLES, TABLE_COLUMNS
from patch_align.world.verdicts import Comparison, above_baseline, compare

Summary = Mapping[str, Mapping[str, Mapping[str, Any]]]
TITLES = {key: title for key, title, _ in TABLE_COLUMNS}
NOT_ABOVE = "†"
# The papers' claims, each as the comparisons that test it (docs/demo.md, "What the tables show").
CLAIMS = (
    Comparison("compression: patch alignment compresses more (PA: ΔH 3.84 vs 2.80)", "delta_h",
               "patch_align", "caption"),
    Comparison("patch alignment: Align mIoU (PA)", "align_miou", "patch_align", "caption"),
    Comparison("patch alignment: pointing (PA)", "pointing_accuracy", "patch_align", "caption"),
    Comparison("alignment generalises to colour-shape pairs never PAD labels", "pointing_held_out_pairs",
               "patch_align", "caption"),
    Comparison("alignment survives stage 2", "align_miou_stage2", "patch_align", "caption"),
    Comparison("multi-semantic: MP recovers words never PAD labels (sizes)", "mp_recall_size_words",
               "patch_align", "caption"),
    Comparison("multi-semantic: MP recovers words never PAD labels (relations)", "mp_recall_relation_words",
               "patch_align", "caption"),
    Comparison("REC: +16 % grounding (PA)", "rec_acc50", "patch_align", "caption"),
    Comparison("VQA: +4 % QA (PA)", "vqa_accuracy", "patch_align", "caption"),
    Comparison("VQA: binding questions (PA)", "vqa_binding", "patch_align", "caption"),
    Comparison("captions: better captions (PA)", "caption_cider", "patch_align", "caption"),
    Comparison("SEA beats caption-only on VQA", "vqa_accuracy", "sea", "caption"),
    Comparison("SEA beats caption-only on REC", "rec_acc50", "sea", "caption"),
    Comparison("SEA beats caption-only on captions", "caption_cider", "sea", "caption"),
    Comparison("SEA: pointing", "pointing_accuracy", "sea", "caption"),
)


# numbers every preset measures: shown even when not measured this run (as n/a, with the reason)
ALWAYS_SHOWN = frozenset({"delta_h", "align_miou", "pointing_accuracy", "mp_precision", "mp_recall",
                          "rec_acc50", "vqa_accuracy", "caption_cider", "stage1_train_s", "stage2_train_s"})


def position_probe_text(clip: dict[str, Any]) -> str:
    """", patch row / column read by a linear probe 0.81 / 0.82 (chance 0.167)" from a bootstrap
    CLIP report; empty for a report from before the probe existed."""
    if "position_probe_row" not in clip:
        return ""
    return (f", patch row / column read by a linear probe {clip['position_probe_row']:.3f} / "
            f"{clip['position_probe_col']:.3f} (chance {clip['position_probe_chance']:.3f})")


def measured_columns(summary: Summary) -> list[tuple[str, str, str]]:
    """The TABLE_COLUMNS shown: every preset's numbers, and the others some row measured (a preset
    without the held-out views shows none of those)."""
    return [c for c in TABLE_COLUMNS
            if c[0] in ALWAYS_SHOWN or any(row[c[0]]["mean"] is not None for row in summary.values())]


def _cell(entry: Mapping[str, Any], fmt: str) -> str:
    if entry["mean"] is None:
        return "n/a"
    cell = fmt.format(entry["mean"])
    return cell + (" ± " + fmt.format(entry["std"]) if entry["n"] > 1 else "")


def format_table(summary: Summary, baselines: Mapping[str, float] | None = None) -> str:
    """The comparison table in markdown: one row per method (or study variant), `mean ± std` with
    several seeds, `n/a` for a number not measured; with `baselines`, a last row of them and a †
    on each cell that does not beat its baseline."""
    baselines = baselines or {}
    columns = measured_columns(summary)
    lines = ["| method | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for group, row in summary.items():
        cells = [METHOD_TITLES.get(group, group)]
        for key, _, fmt in columns:
            mark = NOT_ABOVE if above_baseline(summary, group, key, baselines.get(key)) is False else ""
            cells.append(_cell(row[key], fmt) + mark)
        lines.append("| " + " | ".join(cells) + " |")
    if baselines:
        cells = ["*baseline*"] + [fmt.format(baselines[key]) if key in baselines else ""
                                  for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_claims(summary: Summary, baselines: Mapping[str, float], seeds: int) -> list[str]:
    """One line per claim whose methods ran: its verdict and the numbers behind it."""
    lines = [f"Rule: *reproduced* when the gap exceeds the two stds added ({seeds} seed(s)"
             + ("; with one seed any positive gap counts, so read it as indicative only"
                if seeds == 1 else "")
             + "); *not testable* when both sides fail to beat the baseline.", ""]
    for comparison in CLAIMS:
        result = compare(summary, comparison, baselines)
        if result["verdict"] == "not measured":
            continue
        baseline = "" if result["baseline"] is None else f"; baseline {result['baseline']:.3f}"
        lines.append(
            f"- **{comparison.claim}**: {result['verdict']}. {TITLES[comparison.key]}: "
            f"{METHOD_TITLES.get(comparison.better, comparison.better)} {result['better_mean']:.3f} vs "
            f"{METHOD_TITLES.get(comparison.worse, comparison.worse)} {result['worse_mean']:.3f} "
            f"(gap {result['gap']:+.3f}, stds added {result['spread']:.3f}{baseline}).")
    return lines


def _format_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    keys = sorted({k for points in curves.values() for p in points for k in p if k != "step"})
    lines = ["| run | step | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for run, points in curves.items():
        for point in points:
            values = [f"{point[k]:.3f}" if point.get(k) is not None else "n/a" for k in keys]
            lines.append(f"| {run} | {point['step']} | " + " | ".join(values) + " |")
    return lines


def format_report(metrics: Mapping[str, Any]) -> str:
    """report.md: setting, world and bootstrap quality, SEA labels, the table with baselines, the claims,
    learning curves, figures and timings."""
    settings, boot, world = metrics["settings"], metrics["bootstrap"], metrics["world"]
    seeds = settings["seeds"]
    spread = f"mean ± sample std over seeds 0..{seeds - 1}" if seeds > 1 else "seed 0"
    title = f"study {settings['study']}" if settings.get("study") else f"{settings['preset']} preset"
    lines = [
        f"# patch-align demo ({title})",
        "",
        *([metrics["study"]["question"], ""] if metrics.get("study") else []),
        f"World: {world['train_images']} training / {world['eval_images']} held-out images "
        f"(`{settings['out']}/world`). Bootstrapped CLIP: held-out retrieval top-1 "
        f"{boot['clip']['retrieval_top1']:.3f} (chance {boot['clip']['retrieval_chance']:.3f})"
        f"{position_probe_text(boot['clip'])}; Llama: held-out perplexity {boot['llm']['perplexity']:.2f} "
        f"(unigram {boot['llm']['unigram_perplexity']:.1f}).",
    ]
    ceiling = world.get("rec_oracle")
    if ceiling:
        grid = ceiling["grid"]
        lines.append(f"REC ceiling on this world: a grid-snapped oracle ({grid}×{grid} "
                     f"patches of the padded square) scores Acc@0.5 {ceiling['accuracy']:.3f} "
                     f"(mean IoU {ceiling['mean_iou']:.3f}) on the {ceiling['questions']} held-out REC "
                     "questions.")
    if world["spec"].get("held_out_pairs"):
        lines.append("Colour-shape pairs left out of the training PAD labels: "
                     + ", ".join(f"'{p}'" for p in world["spec"]["held_out_pairs"]) + ".")
    sea = metrics.get("sea_labels")
    if sea:
        signs = "; ".join(f"`{sign}` precision {q['precision']:.3f}, recall {q['recall']:.3f}"
                          for sign, q in sea["signs"].items())
        chance = next(iter(sea["signs"].values())).get("chance_precision")
        signs += "" if chance is None else f" (a uniformly drawn word: precision {chance:.3f})"
        lines += ["", f"SEA labels (top {sea['top_n']} of {sea['vocabulary']} words per patch), measured "
                  "against "
                  f"the exact patch truth of the held-out images: {signs}. Trained with `{sea['chosen']}`."]
    lines += [
        "",
        f"Stage 1: {settings['stage1']['steps']} steps of {settings['stage1']['batch_size']}; stage 2: "
        f"{settings['stage2']['steps']} steps of {settings['stage2']['batch_size']}; identical data, steps "
        f"and seed for every run. Numbers: {spread}. Analysis on the held-out PAD file and its views "
        "(stage-1 projectors, square geometry; 'after stage 2': the stage-2 model's projector, in "
        "stage 2's pad geometry); evaluation on the held-out questions (stage-2 models).",
        "",
        format_table(metrics["summary"], metrics["baselines"]),
        "",
        f"{NOT_ABOVE}: mean − std does not beat the baseline row. Baselines: "
        + "; ".join(f"{TITLES.get(k, k)}: {v}" for k, v in metrics["baseline_sources"].items()) + ".",
        *[f"- **not measured** {key}: {reason}" for key, reason in metrics["not_measured"].items()],
        *[f"- **failed** {name}: {error.splitlines()[0]}" for name, error in metrics["failed_runs"].items()],
        "- ΔH = H_vision − H_projected (nats), Align mIoU and pointing accuracy: `patch-align analyze`",
        "  (docs/metrics.md); MP precision/recall: matching-pursuit words vs. the region labels.",
        "- REC Acc@0.5, VQA accuracy (exact match), CIDEr: `patch-align eval` (docs/demo.md).",
        "- train s: the Trainer's own runtime of each stage (parallel runs share the CPU).",
    ]
    if not metrics.get("study"):
        lines += ["", "## The papers' claims in this miniature", "",
                  *format_claims(metrics["summary"], metrics["baselines"], seeds)]
    if metrics.get("curves"):
        lines += ["", "## Learning curves (stage 2)", "",
                  f"Checkpoints every {settings['stage2_eval_every']} steps, each evaluated on the first "
                  f"{settings['curve_eval_limit']} questions of REC and VQA.", "",
                  "![learning curves](learning_curves.png)", "", *_format_curves(metrics["curves"])]
    lines += ["", "## Figures", "",
              "![study](study.png)" if metrics.get("study") else "![demo metrics](demo_metrics.png)", "",
              "![analysis comparison, seed 0](comparison/comparison.png)", "",
              "![evaluation, every run](eval/results.png)", "",
              "Per-run analysis reports with region maps and matching-pursuit words: "
              + ", ".join(f"[{r['name']}](runs/{r['name']}/analysis/report.md)" for r in metrics["runs"]),
              "", "## Wall time", "",
              f"Training ran {settings['jobs']} subprocesses at a time, so the training stages overlap; the "
              "total is the demo's wall time after its own imports.", "",
              "| stage | seconds |", "|---|---:|",
              *[f"| {stage} | {seconds:.1f} |" for stage, seconds in metrics["stage_seconds"].items()],
              f"| **total** | **{metrics['wall_seconds']:.1f}** |", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_summary(summary: Summary, path: Path, baselines: Mapping[str, float] | None = None) -> Path:
    """Bar chart of every measured table number except times, one bar per row, error bars = std over
    seeds; each number's baseline is a black tick across its group."""
    plt = _pyplot()
    baselines = baselines or {}
    groups = list(summary)
    columns = [(key, title) for key, title, _ in measured_columns(summary) if not key.endswith("_train_s")]
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(11, 0.9 * len(columns)), 4))
    for i, group in enumerate(groups):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, [summary[group][k]["mean"] or 0.0 for k, _ in columns], width,
               yerr=[summary[group][k]["std"] or 0.0 for k, _ in columns], capsize=3,
               label=METHOD_TITLES.get(group, group))
    for j, (key, _) in enumerate(columns):
        if key in baselines:
            ax.hlines(baselines[key], j - 0.45, j + 0.45, color="black", linewidth=1.5,
                      label="baseline" if j == next(i for i, (k, _) in enumerate(columns) if k in baselines)
                      else None)
    ax.set_xticks(range(len(columns)), [title for _, title in columns], rotation=25, ha="right")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("patch-align demo: stage-1 analysis and stage-2 evaluation per method")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], groups: Mapping[str, str], path: Path,
                baselines: Mapping[str, float] | None = None) -> Path:
    """One panel per curve number (REC, VQA, binding VQA, ...) against the stage-2 step: the mean over a
    group's runs (seeds) with a ±std band; `groups` maps run name → group; baselines dashed."""
    from patch_align.world.demo import mean_std

    plt = _pyplot()
    baselines = baselines or {}
    keys = sorted({k for points in curves.values() for p in points for k in p if k != "step"})
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for group in dict.fromkeys(groups.values()):
            runs = [r for r in curves if groups[r] == group]
            steps = sorted({p["step"] for r in runs for p in curves[r]})
            means, stds = [], []
            for step in steps:
                values = [p[key] for r in runs for p in curves[r]
                          if p["step"] == step and p.get(key) is not None]
                mean, std = mean_std(values) if values else (float("nan"), 0.0)
                means.append(mean)
                stds.append(std)
            line = ax.plot(steps, means, marker="o", label=METHOD_TITLES.get(group, group))[0]
            ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(),
                            alpha=0.2)
        if key in baselines:
            ax.axhline(baselines[key], color="black", linestyle="--", linewidth=1, label="baseline")
        ax.set_title(TITLES.get(key, key.replace("nll_", "answer NLL, ")))
        ax.set_xlabel("stage-2 step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_study(summary: Summary, study: Mapping[str, Any], path: Path,
               baselines: Mapping[str, float] | None = None) -> Path:
    """The study's figure: one panel per `study['figure_keys']` number. A numeric `x` parameter gives one
    line per `series` value (a run whose series value is None belongs to every line, e.g. β_max 0);
    otherwise one bar per run, coloured by series value. Error bars: std over seeds."""
    plt = _pyplot()
    baselines = baselines or {}
    runs = study["runs"]  # variant → params
    keys = [k for k in study["figure_keys"] if any(summary[v][k]["mean"] is not None for v in summary)]
    numeric = all(isinstance(params.get(study["x"]), (int, float)) for params in runs.values())
    columns = min(4, len(keys))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    series_values = list(dict.fromkeys(p.get(study["series"]) for p in runs.values()))
    colours = {value: f"C{i}" for i, value in enumerate(series_values)}
    for ax, key in zip(axes.flat, keys, strict=False):
        if numeric:
            for value in [v for v in series_values if v is not None]:
                members = [v for v, p in runs.items()
                           if p.get(study["series"]) in (value, None) and v in summary]
                members.sort(key=lambda v: runs[v][study["x"]])
                ax.errorbar([runs[v][study["x"]] for v in members],
                            [summary[v][key]["mean"] for v in members],
                            yerr=[summary[v][key]["std"] for v in members], marker="o", capsize=3,
                            label=str(value), color=colours[value])
            ax.set_xlabel(study["x"])
        else:
            variants = [v for v in runs if v in summary]
            ax.bar(range(len(variants)), [summary[v][key]["mean"] or 0.0 for v in variants],
                   yerr=[summary[v][key]["std"] or 0.0 for v in variants], capsize=3,
                   color=[colours[runs[v].get(study["series"])] for v in variants])
            ax.set_xticks(range(len(variants)), variants, rotation=35, ha="right", fontsize=7)
        if key in baselines:
            ax.axhline(baselines[key], color="black", linestyle="--", linewidth=1)
        ax.set_title(TITLES.get(key, key), fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if numeric:
        axes.flat[0].legend(title=study["series"], fontsize=8)
    fig.suptitle(f"study {study['name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
