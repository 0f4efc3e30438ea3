#!/usr/bin/env bash
# CPU twin of scripts/v1_5/finetune.sh: stage 2 (full fine-tune, v1 template, pad aspect) from a
# stage-1 projector. PRETRAIN_MM_MLP_ADAPTER picks the projector. Extra flags are passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/tiny/env.sh
PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER:-./runs/tiny/llava-tiny-pretrain/mm_projector.bin}"
OUTPUT_DIR="${OUTPUT_DIR:-./runs/tiny/llava-tiny-finetune}"

exec "$PYTHON" llava/train/train_mem.py \
    --model_name_or_path "$TINY_LLM" \
    --version v1 \
    --data_path "$TINY_FINETUNE_JSON" \
    --image_folder "$TINY_IMAGES" \
    --vision_tower "$TINY_CLIP" \
    --mm_projector_type mlp2x_gelu \
    --pretrain_mm_mlp_adapter "$PRETRAIN_MM_MLP_ADAPTER" \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs "${EPOCHS:-4}" \
    --per_device_train_batch_size 4 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --model_max_length 256 \
    --gradient_checkpointing True \
    --dataloader_num_workers 0 \
    --lazy_preprocess True \
    --report_to "${REPORT_TO:-none}" \
    --disable_tqdm "${DISABLE_TQDM:-False}" \
    "$@"
