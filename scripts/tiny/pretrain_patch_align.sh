#!/usr/bin/env bash
# CPU twin of scripts/v1_5/pretrain_patch_align.sh on the tiny models: stage 1 with
# L = L_caption + beta * L_patch. Without PAD_PATH a PAD file is derived from the tiny images'
# box colours (scripts/tiny/make_patch_align_pad.py). Extra flags are passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/tiny/env.sh
OUTPUT_DIR="${OUTPUT_DIR:-./runs/tiny/llava-tiny-pretrain-patch-align}"
PAD_PATH="${PAD_PATH:-$TINY_ROOT/data/pad.json}"
if [ ! -f "$PAD_PATH" ]; then
    "$PYTHON" scripts/tiny/make_patch_align_pad.py "$TINY_PRETRAIN_JSON" "$TINY_IMAGES" "$PAD_PATH"
fi

exec "$PYTHON" patch_align/train_mem.py \
    --model_name_or_path "$TINY_LLM" \
    --version plain \
    --data_path "$TINY_PRETRAIN_JSON" \
    --image_folder "$TINY_IMAGES" \
    --pad_path "$PAD_PATH" \
    --patch_loss_weight "${PATCH_LOSS_WEIGHT:-5.0}" \
    --patch_beta_schedule linear \
    --patch_pooling mean \
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
