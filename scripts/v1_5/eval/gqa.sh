#!/usr/bin/env bash
# GQA test-dev balanced: exact match after VQA answer normalisation.
# Data (docs/evaluation.md), under ./playground/data/eval/gqa/:
#   llava_gqa_testdev_balanced.jsonl   LLaVA's question file (question_id, image, text)
#   testdev_balanced_questions.json    the official questions with their answers
#   images/                            the GQA images
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
source scripts/v1_5/eval/common.sh

DATA="$EVAL_DIR/gqa"
SPLIT="llava_gqa_testdev_balanced"
ANSWERS="$DATA/answers/$SPLIT/$CKPT"
require_files "$DATA/$SPLIT.jsonl" "$DATA/testdev_balanced_questions.json" "$DATA/images"
answer_in_chunks "$DATA/$SPLIT.jsonl" "$DATA/images" "$ANSWERS" --max_new_tokens 16
"$PYTHON" -m llava.eval.eval_vqa \
    --annotation-file "$DATA/testdev_balanced_questions.json" \
    --result-file "$ANSWERS/merge.jsonl" \
    --metric exact \
    --out "$ANSWERS/scores.json"
