#!/usr/bin/env bash
# Patch-aligned stage 1 on a Qwen2.5 LLM with a SigLIP tower: the LLaVA-1.5 projector recipe
# (scripts/v1_5/pretrain_patch_align.sh: plain template, mlp2x_gelu, global batch 256, lr 1e-3,
# 1 epoch, ZeRO-2, bf16, L = L_caption + beta * L_patch with beta ramped 0 -> 5) on other backbones.
# The LLM family (qwen2) and the tower (siglip_vision_model) are read from their config.json;
# SigLIP so400m/14 at 384 px gives 27 x 27 = 729 image tokens, all kept ('patch': no CLS to drop),
# the penultimate layer (-2) as LLaVA-NeXT uses it. docs/backbones.md has the flags per family.
# Every path can be overridden from the environment; extra flags are passed on, e.g.
#   MODEL_NAME_OR_PATH=/models/Qwen2.5-7B-Instruct bash scripts/qwen2/pretrain_patch_align.sh --report_to none
# With fewer GPUs keep the global batch: PER_DEVICE_BATCH x GRAD_ACCUM x GPUs = 256.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-Qwen/Qwen2.5-7B-Instruct}"
VISION_TOWER="${VISION_TOWER:-google/siglip-so400m-patch14-384}"
DATA_PATH="${DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}"
PAD_PATH="${PAD_PATH:-./playground/data/LLaVA-Pretrain/pad.jsonl}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-qwen2.5-7b-siglip-pretrain-patch-align}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-32}"
GRAD_ACCUM="${GRAD_ACCUM:-1}"
# deepspeed launcher options, e.g. "--num_gpus 4" or "--hostfile hostfile" (docs/distributed.md)
DEEPSPEED_ARGS="${DEEPSPEED_ARGS:-}"

# shellcheck disable=SC2086  # DEEPSPEED_ARGS is split into its options on purpose
exec deepspeed $DEEPSPEED_ARGS patch_align/train_mem.py \
    --deepspeed ./scripts/zero2.json \
    --model_name_or_path "$MODEL_NAME_OR_PATH" \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --pad_path "$PAD_PATH" \
    --patch_loss_weight 5.0 \
    --patch_beta_schedule linear \
    --patch_mask_threshold 0.5 \
    --patch_pooling mean \
    --pad_on_error error \
    --vision_tower "$VISION_TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_vision_select_feature patch \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
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
