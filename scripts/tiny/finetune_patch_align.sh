#!/usr/bin/env bash
# CPU twin of scripts/v1_5/finetune_patch_align.sh: the usual tiny stage 2 (scripts/tiny/finetune.sh),
# starting from the patch-aligned projector. Extra flags are passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER:-./runs/tiny/llava-tiny-pretrain-patch-align/mm_projector.bin}"
export OUTPUT_DIR="${OUTPUT_DIR:-./runs/tiny/llava-tiny-finetune-patch-align}"
exec bash scripts/tiny/finetune.sh "$@"
