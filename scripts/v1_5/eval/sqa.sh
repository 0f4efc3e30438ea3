#!/usr/bin/env bash
# ScienceQA-IMG (test questions with an image): option-letter accuracy.
# Data (docs/evaluation.md), under ./playground/data/eval/scienceqa/:
#   llava_test_CQM-A.json   LLaVA's test conversations     problems.json   the official problems
#   images/test/            the test images
# llava_test_img.jsonl and test_img_answers.jsonl are made from them on the first run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
source scripts/v1_5/eval/common.sh

DATA="$EVAL_DIR/scienceqa"
ANSWERS="$DATA/answers/llava_test_img/$CKPT"
require_files "$DATA/llava_test_CQM-A.json" "$DATA/problems.json" "$DATA/images/test"
if [ ! -f "$DATA/llava_test_img.jsonl" ] || [ ! -f "$DATA/test_img_answers.jsonl" ]; then
    "$PYTHON" -m patch_align.evaluation.prepare sqa \
        --questions "$DATA/llava_test_CQM-A.json" --problems "$DATA/problems.json" --out-dir "$DATA"
fi
answer_in_chunks "$DATA/llava_test_img.jsonl" "$DATA/images/test" "$ANSWERS" --max_new_tokens 16
"$PYTHON" -m llava.eval.eval_vqa \
    --annotation-file "$DATA/test_img_answers.jsonl" \
    --result-file "$ANSWERS/merge.jsonl" \
    --metric option \
    --out "$ANSWERS/scores.json"
