"""`train.py` with FlashAttention-2 (upstream's `train_mem.py`); falls back to SDPA with a
warning when the flash-attn package is missing (SDPA uses flash kernels on recent GPUs)."""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # run as a file path, as upstream's launch scripts do
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from llava.train.train import train


def main(argv: list[str] | None = None) -> None:
    train(argv=argv, attn_implementation="flash_attention_2")


if __name__ == "__main__":
    main()
