#!/usr/bin/env bash
# Stage 2 on a Qwen2.5 LLM with a SigLIP tower: the LLaVA-1.5 instruction-tuning recipe
# (scripts/v1_5/finetune.sh: global batch 128, lr 2e-5, 1 epoch, ZeRO-3, padded images,
# modality-grouped batches) with Qwen's ChatML template (qwen_2: `<|im_start|>` turns, Qwen's
# system prompt, answers supervised up to their `<|im_end|>`). Pad images are filled with SigLIP's
# mean (127). Needs the stage-1 projector (PRETRAIN_MM_MLP_ADAPTER), e.g. from
# scripts/qwen2/pretrain_patch_align.sh. VERSION=qwen_2_5 takes Qwen2.5's own system prompt.
# Every path can be overridden from the environment; extra flags are passed on.
# With fewer GPUs keep PER_DEVICE_BATCH x GRAD_ACCUM x GPUs = 128.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-Qwen/Qwen2.5-7B-Instruct}"
VISION_TOWER="${VISION_TOWER:-google/siglip-so400m-patch14-384}"
VERSION="${VERSION:-qwen_2}"
DATA_PATH="${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data}"
PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER:-./checkpoints/llava-qwen2.5-7b-siglip-pretrain-patch-align/mm_projector.bin}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-qwen2.5-7b-siglip}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-16}"
GRAD_ACCUM="${GRAD_ACCUM:-1}"
# deepspeed launcher options, e.g. "--num_gpus 4" or "--hostfile hostfile" (docs/distributed.md)
DEEPSPEED_ARGS="${DEEPSPEED_ARGS:-}"

# shellcheck disable=SC2086  # DEEPSPEED_ARGS is split into its options on purpose
exec deepspeed $DEEPSPEED_ARGS llava/train/train_mem.py \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path "$MODEL_NAME_OR_PATH" \
    --version "$VERSION" \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --pretrain_mm_mlp_adapter "$PRETRAIN_MM_MLP_ADAPTER" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_vision_select_feature patch \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-5 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb \
    "$@"
