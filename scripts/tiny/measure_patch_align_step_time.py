"""Step-time ratio patch-aligned / caption-only at the tiny shape: `patch-align bench train`'s figures.

Kept as the entry docs/patch_align.md used to name; the measurement itself is the benchmark's
(alternating Trainer steps in one process, docs/performance.md), so there is one way to time a step.
Usage: python scripts/tiny/measure_patch_align_step_time.py [STEPS] [WORK_FOLDER]
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from patch_align.bench.shapes import shape_named  # noqa: E402
from patch_align.bench.train import TrainBenchOptions, run_train_bench  # noqa: E402


def main(steps: str = "60", work: str = "runs/bench") -> None:
    options = TrainBenchOptions(shape=shape_named("tiny"), work=work, methods=("caption", "patch_cosine"),
                                steps=int(steps), rounds=3, warmup=2, device="cpu")
    caption, patch = run_train_bench(options).methods
    print(
        f"batch {options.batch_size}, {caption.step.count} steps each: caption-only "
        f"{caption.step.median * 1e3:.2f} ms (batch fetch {caption.data.median * 1e3:.2f} ms), "
        f"patch-aligned {patch.step.median * 1e3:.2f} ms (batch fetch {patch.data.median * 1e3:.2f} ms), "
        f"ratio {patch.ratio_to_caption:.3f}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
