"""Merge a LoRA fine-tune into its base LLM and write a full LLaVA checkpoint.

    python scripts/merge_lora_weights.py --model-path ./checkpoints/llava-v1.5-7b-lora \
        --model-base lmsys/vicuna-7b-v1.5 --save-model-path ./checkpoints/llava-v1.5-7b-merged

The result loads with `load_pretrained_model(path, None, name)` and by upstream LLaVA.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from llava.mm_utils import get_model_name_from_path  # noqa: E402
from llava.model.builder import load_pretrained_model  # noqa: E402
from llava.model.checkpoints import CheckpointKind, detect_checkpoint_kind, write_tokenizer  # noqa: E402


def merge_lora(model_path: str, model_base: str | None, save_model_path: str) -> None:
    if detect_checkpoint_kind(model_path) is not CheckpointKind.LORA:
        raise SystemExit(f"{model_path} holds no LoRA adapter (adapter_config.json): nothing to merge")
    tokenizer, model, _, _ = load_pretrained_model(
        model_path, model_base, get_model_name_from_path(model_path), device_map="cpu", device="cpu"
    )
    model.save_pretrained(save_model_path)
    write_tokenizer(tokenizer, save_model_path)
    print(f"merged {model_path} into {model_base or 'its recorded base'} -> {save_model_path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-path", required=True, help="LoRA output folder (adapter, non_lora_trainables.bin)"
    )
    parser.add_argument("--model-base", default=None, help="the base LLM the LoRA was trained on")
    parser.add_argument("--save-model-path", required=True, help="where to write the merged full checkpoint")
    args = parser.parse_args(argv)
    merge_lora(args.model_path, args.model_base, args.save_model_path)


if __name__ == "__main__":
    main()
