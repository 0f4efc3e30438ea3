"""`patch_align/train.py` with FlashAttention-2, like LLaVA's `train_mem.py` (SDPA without flash-attn)."""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # run as a file path under deepspeed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from patch_align.train import main

if __name__ == "__main__":
    main(attn_implementation="flash_attention_2")
