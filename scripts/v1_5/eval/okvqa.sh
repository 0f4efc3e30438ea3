#!/usr/bin/env bash
# OK-VQA val: VQA accuracy over the 10 human answers.
# Data (docs/evaluation.md), under ./playground/data/eval/okvqa/:
#   OpenEnded_mscoco_val2014_questions.json, mscoco_val2014_annotations.json   the official files
#   val2014/                                                                  the COCO val2014 images
# llava_okvqa_val.jsonl is made from the questions file on the first run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
source scripts/v1_5/eval/common.sh

DATA="$EVAL_DIR/okvqa"
ANSWERS="$DATA/answers/llava_okvqa_val/$CKPT"
require_files "$DATA/OpenEnded_mscoco_val2014_questions.json" "$DATA/mscoco_val2014_annotations.json" \
    "$DATA/val2014"
if [ ! -f "$DATA/llava_okvqa_val.jsonl" ]; then
    "$PYTHON" -m patch_align.evaluation.prepare okvqa \
        --questions "$DATA/OpenEnded_mscoco_val2014_questions.json" --out-dir "$DATA"
fi
answer_in_chunks "$DATA/llava_okvqa_val.jsonl" "$DATA/val2014" "$ANSWERS" --max_new_tokens 16
"$PYTHON" -m llava.eval.eval_vqa \
    --annotation-file "$DATA/mscoco_val2014_annotations.json" \
    --result-file "$ANSWERS/merge.jsonl" \
    --metric vqa \
    --out "$ANSWERS/scores.json"
