#!/usr/bin/env bash
# LLaVA-1.5 stage 2 from the patch-aligned projector: the upstream fine-tune recipe
# (scripts/v1_5/finetune.sh, ZeRO-3) unchanged, only the stage-1 projector differs.
# Every path can be overridden from the environment; extra flags are passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER:-./checkpoints/llava-v1.5-7b-pretrain-patch-align/mm_projector.bin}"
export OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-patch-align}"
exec bash scripts/v1_5/finetune.sh "$@"
