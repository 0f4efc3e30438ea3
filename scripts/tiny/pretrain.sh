#!/usr/bin/env bash
# CPU twin of scripts/v1_5/pretrain.sh on the tiny models: same entry and flags, except no
# DeepSpeed/bf16/tf32 and a small batch. Extra flags are passed on; ENTRY picks the training file
# (the patch-aligned and SEA twins run patch_align/train_mem.py through this script).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/tiny/env.sh
OUTPUT_DIR="${OUTPUT_DIR:-./runs/tiny/llava-tiny-pretrain}"

exec "$PYTHON" "${ENTRY:-llava/train/train_mem.py}" \
    --model_name_or_path "$TINY_LLM" \
    --version plain \
    --data_path "$TINY_PRETRAIN_JSON" \
    --image_folder "$TINY_IMAGES" \
    --vision_tower "$TINY_CLIP" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs "${EPOCHS:-4}" \
    --per_device_train_batch_size 4 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
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
