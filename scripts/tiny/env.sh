# Sourced by the tiny scripts: builds (once; later calls are instant) the tiny CLIP, Llama and data
# that stand in for CLIP-L/336, Vicuna-7B and the LLaVA data on a CPU, and exports their paths.
TINY_ROOT="${TINY_ROOT:-./runs/tiny/setup}"
PYTHON="${PYTHON:-python}"
"$PYTHON" -c "import sys; from llava.tiny import build_tiny_llava_setup; build_tiny_llava_setup(sys.argv[1])" \
    "$TINY_ROOT"
export TINY_LLM="$TINY_ROOT/llm" TINY_CLIP="$TINY_ROOT/clip" TINY_IMAGES="$TINY_ROOT/data/images"
export TINY_PRETRAIN_JSON="$TINY_ROOT/data/pretrain.json" TINY_FINETUNE_JSON="$TINY_ROOT/data/finetune.json"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}"
