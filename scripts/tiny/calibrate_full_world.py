"""Re-run one row of `--full`'s calibration table (docs/demo.md, "Calibration of `--full`").

Each row is the caption-only method alone, seed 0, on a variant of the `--full` world, with stage-2
checkpoints scored every quarter of the run (the learning curve in OUT/report.md). No row runs a
method other than caption-only: the world and the budget are calibrated so that the caption-only
model leaves its blind baselines, never toward a method winning.

    python scripts/tiny/calibrate_full_world.py ROW [--out runs/calibrate-ROW]
    python scripts/tiny/calibrate_full_world.py --list
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from patch_align.world.demo import FULL_PRESET, DemoOptions, DemoPreset, run_demo
from patch_align.world.demo_report import format_table

_FULL = FULL_PRESET.world
_EXACT = replace(_FULL, rec_answer_grid=0, rec_records_per_image=1)  # REC as LLaVA-1.5 answers it
_PLAIN_CLIP = replace(FULL_PRESET.bootstrap, clip_position_scale=0.0)  # transformers' initialisation

# row → (what changes from the --full preset, world, bootstrap settings, stage-2 steps)
ROWS = {
    "exact": ("exact boxes, plain CLIP (the previous --full)", _EXACT, _PLAIN_CLIP, 800),
    "grid": ("grid-snapped boxes, plain CLIP", replace(_EXACT, rec_answer_grid=6), _PLAIN_CLIP, 800),
    "grid-layout3": ("grid-snapped boxes, objects on a 3×3 layout, plain CLIP",
                     replace(_EXACT, rec_answer_grid=6, scene=replace(_FULL.scene, layout_grid=3)),
                     _PLAIN_CLIP, 800),
    "clip": ("exact boxes, position CLIP", _EXACT, FULL_PRESET.bootstrap, 800),
    "grid-clip": ("grid-snapped boxes, position CLIP", replace(_EXACT, rec_answer_grid=6),
                  FULL_PRESET.bootstrap, 800),
    "grid-clip-llama4": ("grid-snapped boxes, position CLIP, 4-layer Llama",
                         replace(_EXACT, rec_answer_grid=6),
                         replace(FULL_PRESET.bootstrap, llm_layers=4), 800),
    "rec3": ("3 REC conversations per image", replace(_FULL, rec_records_per_image=3),
             FULL_PRESET.bootstrap, 800),
    "rec3-1200": ("3 REC conversations per image", replace(_FULL, rec_records_per_image=3),
                  FULL_PRESET.bootstrap, 1200),
    "full": ("the --full world (6 REC conversations per image)", _FULL, FULL_PRESET.bootstrap, 800),
    "full-1200": ("the --full world (6 REC conversations per image)", _FULL, FULL_PRESET.bootstrap, 1200),
}


def row_preset(row: str) -> DemoPreset:
    """The demo preset of one calibration row: `--full` with that row's world, bootstrap and stage 2."""
    _, world, bootstrap, steps = ROWS[row]
    return replace(FULL_PRESET, name=f"calibrate-{row}", world=world, bootstrap=bootstrap,
                   stage2=replace(FULL_PRESET.stage2, steps=steps), stage2_eval_every=steps // 4,
                   curve_eval_limit=150, analyses=("stage1",))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", nargs="?", choices=sorted(ROWS), help="the calibration row to run")
    parser.add_argument("--out", default=None, help="output folder (default runs/calibrate-ROW)")
    parser.add_argument("--list", action="store_true", help="list the rows and what each changes")
    args = parser.parse_args(argv)
    if args.list or not args.row:
        for name, (what, *_rest, steps) in ROWS.items():
            print(f"{name:18s} {what}; stage 2 {steps} steps")
        return 0
    out = Path(args.out or f"runs/calibrate-{args.row}")
    metrics = run_demo(DemoOptions(out=out, preset=row_preset(args.row), methods=("caption",), jobs=1))
    print(format_table(metrics["summary"], metrics["baselines"]))
    print(json.dumps({"rec_oracle": metrics["world"].get("rec_oracle"), "curves": metrics["curves"],
                      "wall_seconds": metrics["wall_seconds"]}, indent=1))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
