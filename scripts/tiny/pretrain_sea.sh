#!/usr/bin/env bash
# CPU twin of scripts/v1_5/pretrain_sea.sh on the tiny models: stage 1 with L = L_caption + lambda * L_sea.
# Without SEA_LABELS present, it makes them with the real pipeline: gives the tiny CLIP (which has no
# text tokenizer) a character-level one (scripts/tiny/make_sea_clip_tokenizer.py), then runs
# `patch-align sea vocab` and `patch-align sea label` on the tiny pretraining data (square geometry,
# like training). The tiny CLIP is random, so its labels are noise-like: this shows the plumbing.
# Both objectives: ALIGN_OBJECTIVE=both bash scripts/tiny/pretrain_sea.sh (PAD from the box colours).
# Extra flags are passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/tiny/env.sh
ALIGN_OBJECTIVE="${ALIGN_OBJECTIVE:-sea}"
SEA_LABELS="${SEA_LABELS:-$TINY_ROOT/data/sea-labels}"
if [ ! -f "$SEA_LABELS/index.json" ]; then
    "$PYTHON" scripts/tiny/make_sea_clip_tokenizer.py "$TINY_CLIP"
    "$PYTHON" -m patch_align.cli sea vocab --data "$TINY_PRETRAIN_JSON" --min-count 1 \
        --out "$TINY_ROOT/data/sea-vocab.txt"
    "$PYTHON" -m patch_align.cli sea label --clip "$TINY_CLIP" --vocab "$TINY_ROOT/data/sea-vocab.txt" \
        --data "$TINY_PRETRAIN_JSON" --image-folder "$TINY_IMAGES" --out "$SEA_LABELS" \
        --image-aspect-ratio square --device cpu
fi
PAD_FLAGS=()
if [ "$ALIGN_OBJECTIVE" = "both" ]; then
    PAD_PATH="${PAD_PATH:-$TINY_ROOT/data/pad.json}"
    if [ ! -f "$PAD_PATH" ]; then
        "$PYTHON" scripts/tiny/make_patch_align_pad.py "$TINY_PRETRAIN_JSON" "$TINY_IMAGES" "$PAD_PATH"
    fi
    PAD_FLAGS=(--pad_path "$PAD_PATH" --patch_loss_weight 5.0 --patch_beta_schedule linear)
fi

ENTRY=patch_align/train_mem.py OUTPUT_DIR="${OUTPUT_DIR:-./runs/tiny/llava-tiny-pretrain-$ALIGN_OBJECTIVE}" \
exec bash scripts/tiny/pretrain.sh \
    --align_objective "$ALIGN_OBJECTIVE" \
    --sea_labels "$SEA_LABELS" \
    --sea_loss_weight "${SEA_LOSS_WEIGHT:-1.0}" \
    --sea_lambda_schedule constant \
    --sea_window 2 \
    "${PAD_FLAGS[@]}" \
    "$@"
