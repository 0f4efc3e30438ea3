#!/usr/bin/env bash
# PAD generation over LLaVA's 558K pretraining images: one process per GPU, any number of nodes.
# Every setting can be overridden from the environment; extra flags are passed on, e.g.
#   GPUS_PER_NODE=8 bash scripts/pad/generate.sh --tagger file --tags-file ram_tags.jsonl
# Multi-node: run the same command on every node with NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT set.
# Resume after a crash or preemption: run exactly the same command again (same world size).
# Afterwards, on one node:  patch-align pad merge "$OUT_DIR" --out pad.jsonl
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DATA_PATH="${DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}"
OUT_DIR="${OUT_DIR:-./playground/data/pad/558k-shards}"
TAGGER="${TAGGER:-captions}"
DETECTOR="${DETECTOR:-IDEA-Research/grounding-dino-base}"
SEGMENTER="${SEGMENTER:-facebook/sam-vit-huge}"
BATCH_SIZE="${BATCH_SIZE:-8}"
NUM_WORKERS="${NUM_WORKERS:-6}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29511}"

if [ "${GPUS_PER_NODE}" -lt 1 ]; then
    echo "no GPU found; set GPUS_PER_NODE (or run 'patch-align pad generate' directly on CPU)" >&2
    exit 2
fi

# Ranks never communicate (each owns every WORLD_SIZE-th image), torchrun only sets RANK/WORLD_SIZE.
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m patch_align.cli pad generate \
    --data "$DATA_PATH" \
    --image-folder "$IMAGE_FOLDER" \
    --out "$OUT_DIR" \
    --tagger "$TAGGER" \
    --detector "$DETECTOR" \
    --segmenter "$SEGMENTER" \
    --batch-size "$BATCH_SIZE" \
    --num-workers "$NUM_WORKERS" \
    "$@"
