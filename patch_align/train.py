"""Patch-aligned training entry: `python -m patch_align.train` or `python patch_align/train.py`.

Every flag of `llava/train/train.py`, plus the plugin's (`PatchAlignArguments`).
"""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # run as a file path, as LLaVA's launch scripts do
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from llava.train.train import train
from patch_align.recipe import PatchAlignRecipe


def main(argv: list[str] | None = None, attn_implementation: str | None = None) -> None:
    train(PatchAlignRecipe(), argv=argv, attn_implementation=attn_implementation)


if __name__ == "__main__":
    main()
