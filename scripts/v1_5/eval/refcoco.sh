#!/usr/bin/env bash
# Referring-expression grounding on RefCOCO, RefCOCO+ and RefCOCOg: Acc@IoU>=0.5 per split.
# Data (docs/evaluation.md): ./playground/data/eval/refcoco/<dataset>_<split>.jsonl made by
#   python -m llava.eval.convert_refcoco --refs refs(unc).json --instances instances.json \
#       --dataset refcoco --out-dir ./playground/data/eval/refcoco
# and the COCO train2014 images in ./playground/data/eval/refcoco/train2014.
# SPLITS (space-separated) picks the question files; settings of common.sh apply.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
source scripts/v1_5/eval/common.sh

DATA="$EVAL_DIR/refcoco"
SPLITS="${SPLITS:-refcoco_val refcoco_testA refcoco_testB refcoco+_val refcoco+_testA refcoco+_testB refcocog_val refcocog_test}"
for SPLIT in $SPLITS; do
    require_files "$DATA/$SPLIT.jsonl" "$DATA/train2014"
done
for SPLIT in $SPLITS; do
    ANSWERS="$DATA/answers/$SPLIT/$CKPT"
    answer_in_chunks "$DATA/$SPLIT.jsonl" "$DATA/train2014" "$ANSWERS" --max_new_tokens 64
    "$PYTHON" -m llava.eval.eval_rec \
        --question-file "$DATA/$SPLIT.jsonl" \
        --result-file "$ANSWERS/merge.jsonl" \
        --out "$ANSWERS/scores.json"
done
