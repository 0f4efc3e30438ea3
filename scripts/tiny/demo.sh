#!/usr/bin/env bash
# The tiny end-to-end run behind `make demo` (CPU, a few minutes): the LLaVA-1.5 pipeline on the
# tiny models, once with the caption-only stage 1 and once with the patch-aligned stage 1, then
# stage 2 from each projector, then `patch-align analyze` on both projectors and a comparison.
# The tiny models are random (not pretrained), so the numbers show the pipeline works end to
# end; they are not a reproduction of the paper (that is the miniature world's job).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/tiny/env.sh
RUNS="${RUNS:-./runs/demo}"
EPOCHS="${EPOCHS:-4}"
export EPOCHS DISABLE_TQDM="${DISABLE_TQDM:-True}"
PAD_PATH="$TINY_ROOT/data/pad.json"
[ -f "$PAD_PATH" ] || "$PYTHON" scripts/tiny/make_patch_align_pad.py "$TINY_PRETRAIN_JSON" "$TINY_IMAGES" "$PAD_PATH"

step() { printf '\n=== %s ===\n' "$*"; }
quiet() { "$@" > "$RUNS/$LOG.log" 2>&1 || { tail -40 "$RUNS/$LOG.log"; exit 1; }; }
mkdir -p "$RUNS"
SECONDS=0
for method in caption patch_align; do
    script=scripts/tiny/pretrain.sh
    [ "$method" = patch_align ] && script=scripts/tiny/pretrain_patch_align.sh
    step "stage 1 ($method): projector only"
    LOG="stage1-$method" OUTPUT_DIR="$RUNS/stage1-$method" PAD_PATH="$PAD_PATH" quiet bash "$script"
    step "stage 2 ($method projector): full fine-tune"
    LOG="stage2-$method" OUTPUT_DIR="$RUNS/stage2-$method" \
        PRETRAIN_MM_MLP_ADAPTER="$RUNS/stage1-$method/mm_projector.bin" quiet bash scripts/tiny/finetune.sh
    step "analysis ($method projector)"
    LOG="analyze-$method" quiet "$PYTHON" -m patch_align.cli analyze --model-path "$RUNS/stage1-$method" \
        --model-base "$TINY_LLM" --pad "$PAD_PATH" --image-folder "$TINY_IMAGES" \
        --out "$RUNS/analysis-$method" --no-progress
done
step "comparison"
LOG=compare quiet "$PYTHON" -m patch_align.cli analyze compare "$RUNS/analysis-caption" \
    "$RUNS/analysis-patch_align" --out "$RUNS/comparison"
cat "$RUNS/comparison/comparison.md"
step "a question to each stage-2 model"
image="$(ls "$TINY_IMAGES" | head -1)"
for method in caption patch_align; do
    answer="$("$PYTHON" -m llava.eval.run_llava --model-path "$RUNS/stage2-$method" \
        --image-file "$TINY_IMAGES/$image" --query "What is in the picture?" --temperature 0 \
        --max_new_tokens 12 2>/dev/null | tail -1)"
    printf '%-12s %s\n' "$method:" "$answer"
done
step "done in ${SECONDS}s; outputs in $RUNS (comparison.png, analysis-*/report.md, logs)"
