#!/usr/bin/env bash
# CPU twin of scripts/v1_5/pretrain_patch_align.sh on the tiny models: stage 1 with
# L = L_caption + beta * L_patch (scripts/tiny/pretrain.sh with the plugin's entry and flags).
# Without PAD_PATH a PAD file is derived from the tiny images' box colours
# (scripts/tiny/make_patch_align_pad.py). Extra flags are passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/tiny/env.sh
PAD_PATH="${PAD_PATH:-$TINY_ROOT/data/pad.json}"
if [ ! -f "$PAD_PATH" ]; then
    "$PYTHON" scripts/tiny/make_patch_align_pad.py "$TINY_PRETRAIN_JSON" "$TINY_IMAGES" "$PAD_PATH"
fi

ENTRY=patch_align/train_mem.py OUTPUT_DIR="${OUTPUT_DIR:-./runs/tiny/llava-tiny-pretrain-patch-align}" \
exec bash scripts/tiny/pretrain.sh \
    --pad_path "$PAD_PATH" \
    --patch_loss_weight "${PATCH_LOSS_WEIGHT:-5.0}" \
    --patch_beta_schedule linear \
    --patch_pooling mean \
    "$@"
