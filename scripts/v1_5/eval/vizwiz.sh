#!/usr/bin/env bash
# VizWiz-VQA val (the test answers are not public): VQA accuracy over the 10 human answers.
# Data (docs/evaluation.md), under ./playground/data/eval/vizwiz/:
#   val.json   the official annotations      val/   the val images
# llava_val.jsonl and val_answers.jsonl are made from val.json on the first run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
source scripts/v1_5/eval/common.sh

DATA="$EVAL_DIR/vizwiz"
ANSWERS="$DATA/answers/llava_val/$CKPT"
require_files "$DATA/val.json" "$DATA/val"
if [ ! -f "$DATA/llava_val.jsonl" ] || [ ! -f "$DATA/val_answers.jsonl" ]; then
    "$PYTHON" -m patch_align.evaluation.prepare vizwiz --annotations "$DATA/val.json" --out-dir "$DATA"
fi
answer_in_chunks "$DATA/llava_val.jsonl" "$DATA/val" "$ANSWERS" --max_new_tokens 16
"$PYTHON" -m llava.eval.eval_vqa \
    --annotation-file "$DATA/val_answers.jsonl" \
    --result-file "$ANSWERS/merge.jsonl" \
    --metric vqa \
    --out "$ANSWERS/scores.json"
