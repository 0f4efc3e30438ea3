#!/usr/bin/env bash
# SEA LLaVA-1.5 stage 1: the upstream projector recipe (plain template, mlp2x_gelu, 8 GPUs x 32 =
# global batch 256, lr 1e-3, 1 epoch, ZeRO-2, bf16) with L = L_caption + lambda * L_sea
# (lambda = 1, constant; learnable temperature from 0.07; one patch per 2x2 window). docs/sea.md.
#
# Make the labels first (once; resumable, one process per GPU). Stage 1 trains with the default
# --image_aspect_ratio square, so the labels use square too; CLIP_DIR is a full CLIPModel folder
# with its tokenizer (e.g. openai/clip-vit-large-patch14-336, downloaded beforehand):
#   patch-align sea vocab --data $DATA_PATH --min-count 5 --out $SEA_LABELS.vocab.txt
#   for i in 0 1 2 3 4 5 6 7; do
#     CUDA_VISIBLE_DEVICES=$i patch-align sea label --clip $CLIP_DIR --vocab $SEA_LABELS.vocab.txt \
#       --data $DATA_PATH --image-folder $IMAGE_FOLDER --out $SEA_LABELS --image-aspect-ratio square \
#       --num-shards 8 --shard-index $i &
#   done; wait
# Both objectives (patch-cosine regions from a PAD file, beta 0 -> 5, plus SEA):
#   ALIGN_OBJECTIVE=both PAD_PATH=./playground/data/LLaVA-Pretrain/pad.jsonl bash scripts/v1_5/pretrain_sea.sh
# Every path can be overridden from the environment; extra flags are passed on. With fewer GPUs keep
# the global batch: PER_DEVICE_BATCH x GRAD_ACCUM x GPUs = 256.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-lmsys/vicuna-7b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
DATA_PATH="${DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}"
SEA_LABELS="${SEA_LABELS:-./playground/data/LLaVA-Pretrain/sea-labels}"
ALIGN_OBJECTIVE="${ALIGN_OBJECTIVE:-sea}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain-$ALIGN_OBJECTIVE}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-32}"
GRAD_ACCUM="${GRAD_ACCUM:-1}"
# deepspeed launcher options, e.g. "--num_gpus 4" or "--hostfile hostfile" (docs/distributed.md)
DEEPSPEED_ARGS="${DEEPSPEED_ARGS:-}"
PAD_FLAGS=()
if [ "$ALIGN_OBJECTIVE" = "both" ]; then
    PAD_FLAGS=(--pad_path "${PAD_PATH:?set PAD_PATH for ALIGN_OBJECTIVE=both}" --patch_loss_weight 5.0
               --patch_beta_schedule linear --patch_pooling mean)
fi

# shellcheck disable=SC2086  # DEEPSPEED_ARGS is split into its options on purpose
exec deepspeed $DEEPSPEED_ARGS patch_align/train_mem.py \
    --deepspeed ./scripts/zero2.json \
    --model_name_or_path "$MODEL_NAME_OR_PATH" \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --align_objective "$ALIGN_OBJECTIVE" \
    --sea_labels "$SEA_LABELS" \
    --sea_loss_weight 1.0 \
    --sea_lambda_schedule constant \
    --sea_window 2 \
    --sea_temperature 0.07 \
    --sea_learnable_temperature True \
    "${PAD_FLAGS[@]}" \
    --vision_tower "$VISION_TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
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
