#!/usr/bin/env bash
# COCO captions, Karpathy test split: BLEU-1..4, METEOR (needs java), ROUGE-L, CIDEr (SPICE is skipped).
# Data (docs/evaluation.md), under ./playground/data/eval/coco_caption/:
#   dataset_coco.json   Karpathy's split file    val2014/   the COCO val2014 images
# llava_coco_caption_test.jsonl and coco_caption_test_references.json are made on the first run.
# Needs the eval extra: pip install 'patch-align[eval]'.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
source scripts/v1_5/eval/common.sh

DATA="$EVAL_DIR/coco_caption"
SPLIT="${SPLIT:-test}"
ANSWERS="$DATA/answers/coco_caption_$SPLIT/$CKPT"
require_files "$DATA/dataset_coco.json" "$DATA/val2014"
if [ ! -f "$DATA/llava_coco_caption_$SPLIT.jsonl" ] || [ ! -f "$DATA/coco_caption_${SPLIT}_references.json" ]; then
    "$PYTHON" -m patch_align.evaluation.prepare coco-captions \
        --karpathy "$DATA/dataset_coco.json" --split "$SPLIT" --out-dir "$DATA"
fi
# Karpathy image paths start with their COCO folder (val2014/...), hence the image folder $DATA.
answer_in_chunks "$DATA/llava_coco_caption_$SPLIT.jsonl" "$DATA" "$ANSWERS" --max_new_tokens 48
"$PYTHON" -m patch_align.evaluation.prepare score-captions \
    --references "$DATA/coco_caption_${SPLIT}_references.json" \
    --result-file "$ANSWERS/merge.jsonl" \
    --out "$ANSWERS/scores.json"
