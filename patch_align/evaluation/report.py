"""Write a suite's results: results.json (everything), results.md (tables), results.png (bar chart).

Table and chart show scores ×100 (accuracies in %, BLEU/METEOR/ROUGE-L/CIDEr as papers print them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"


def metric_columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(task, metric) pairs in task order, each metric once, over all checkpoints."""
    columns: list[tuple[str, str]] = []
    for task in results["tasks"]:
        for checkpoint in results["checkpoints"].values():
            for metric in checkpoint["tasks"][task["name"]]["metrics"]:
                if (task["name"], metric) not in columns:
                    columns.append((task["name"], metric))
    return columns


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _markdown_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A markdown table whose first `text_columns` columns are left-aligned and the rest right-aligned."""
    rule = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _baseline_of(results: dict[str, Any], task: str, metric: str) -> float | None:
    return results.get("baselines", {}).get(task, {}).get("metrics", {}).get(metric)


def results_markdown(results: dict[str, Any]) -> str:
    """Scores (rows checkpoints, columns task metrics; a first `blind baseline` row when the suite
    fits baselines, and `(≤)` after a score that does not beat it), the baselines' methods, and a
    timing table (rows checkpoint × task)."""
    from patch_align.evaluation.baselines import BASELINE_MARK, at_or_below

    columns = metric_columns(results)
    baselines = results.get("baselines", {})
    score_rows = []
    if baselines:
        score_rows.append(["blind baseline"] + [_cell(_baseline_of(results, t, m)) for t, m in columns])
    for name, checkpoint in results["checkpoints"].items():
        row = [name]
        for task, metric in columns:
            value = checkpoint["tasks"][task]["metrics"].get(metric)
            mark = " (≤)" if at_or_below(value, _baseline_of(results, task, metric)) else ""
            row.append(_cell(value) + mark)
        score_rows.append(row)
    baseline_lines = []
    if baselines:
        baseline_lines = [f"(≤): {BASELINE_MARK}: the score does not beat the blind baseline, which "
                          "never looks at the image (fit on the task's `baseline_train`, scored by the "
                          "task's own scorer):", ""]
        baseline_lines += [f"- {task}: {entry['method']}" for task, entry in baselines.items()]
        baseline_lines.append("")
    timing_rows = []
    for name, checkpoint in results["checkpoints"].items():
        for task, entry in checkpoint["tasks"].items():
            timing = entry["timing"]
            rate = timing["questions_per_s"]
            timing_rows.append([
                name, task, str(timing["questions"]), str(timing["generated"]), str(timing["resumed"]),
                f"{timing['generation_s']:.2f}", "–" if rate is None else f"{rate:.2f}",
                f"{timing['scoring_s']:.2f}", str(entry["failures"]),
            ])
    limit = f", first {results['limit']} questions per task" if results["limit"] else ""
    parts = [
        "# Evaluation results",
        "",
        f"Suite `{results['suite']}`{limit}. Scores ×100.",
        "",
        _markdown_table(["checkpoint"] + [f"{task}: {metric}" for task, metric in columns], score_rows),
        "",
        *baseline_lines,
        "## Timings",
        "",
        "`unparsed`: answers with no readable box (rec) or option letter (mc), scored as wrong.",
        "",
        _markdown_table(["checkpoint", "task", "questions", "generated", "resumed", "generation s",
                         "questions/s", "scoring s", "unparsed"], timing_rows, text_columns=2),
        "",
    ]
    return "\n".join(parts)


def plot_results(results: dict[str, Any], path: str | Path) -> None:
    """Grouped bar chart: one group per task (its first metric), one bar per checkpoint, values on bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["checkpoints"])
    groups = []  # (task, metric) charted: each task's first metric
    for task in results["tasks"]:
        first = next(iter(results["checkpoints"][names[0]]["tasks"][task["name"]]["metrics"]))
        groups.append((task["name"], first))
    width = 0.8 / len(names)
    # Wide enough for value labels over every bar, capped so that text stays legible when shown scaled.
    figure_width = min(14.0, max(6.0, 3.0 + len(groups) * (0.4 + 0.3 * len(names))))
    figure, axes = plt.subplots(figsize=(figure_width, 5.0))
    colours = plt.get_cmap("tab10")
    tallest = 0.0
    for index, name in enumerate(names):
        task_results = results["checkpoints"][name]["tasks"]
        values = [100 * task_results[task]["metrics"][metric] for task, metric in groups]
        tallest = max([tallest, *values])
        offsets = [g + (index - (len(names) - 1) / 2) * width for g in range(len(groups))]
        bars = axes.bar(offsets, values, width * 0.92, label=name, color=colours(index % 10))
        axes.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=2, fontsize=8)
    axes.set_xticks(range(len(groups)), [f"{task}\n{metric}" for task, metric in groups], fontsize=9)
    axes.set_ylabel("score ×100")
    axes.set_ylim(0, max(tallest * 1.18, 1.0))
    axes.set_title("Evaluation suite: checkpoints compared")
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    # Below the axes: long checkpoint names would otherwise squeeze the bars.
    axes.legend(title="checkpoint", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                ncol=min(len(names), 3))
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


def write_results(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, results.md and results.png into `out_dir`; returns them by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / RESULTS_JSON, "markdown": out_dir / RESULTS_MD,
             "figure": out_dir / RESULTS_PNG}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["markdown"].write_text(results_markdown(results))
    plot_results(results, paths["figure"])
    return paths
