# Sourced by the eval scripts of this folder. Settings (environment, with defaults):
#   MODEL_PATH  checkpoint folder (./checkpoints/llava-v1.5-7b)   MODEL_BASE  base LLM of LoRA checkpoints
#   CKPT        name of the answers folder (basename of MODEL_PATH) CONV_MODE  chat template (vicuna_v1)
#   BATCH_SIZE  questions per generate call (8)                   PYTHON     interpreter (python)
#   EVAL_DIR    data root (./playground/data/eval)
#   CUDA_VISIBLE_DEVICES  GPUs to use, one process (one chunk of the questions) per GPU
MODEL_PATH="${MODEL_PATH:-./checkpoints/llava-v1.5-7b}"
MODEL_BASE="${MODEL_BASE:-}"
CKPT="${CKPT:-$(basename "$MODEL_PATH")}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
BATCH_SIZE="${BATCH_SIZE:-8}"
PYTHON="${PYTHON:-python}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"

IFS=',' read -ra GPULIST <<< "${CUDA_VISIBLE_DEVICES:-0}"
CHUNKS=${#GPULIST[@]}

require_files() {
    # Fail before any model loads when an input is missing, naming it.
    local path
    for path in "$@"; do
        if [ ! -e "$path" ]; then
            echo "missing: $path (see docs/evaluation.md for the data layout)" >&2
            return 1
        fi
    done
}

answer_in_chunks() {
    # answer_in_chunks QUESTION_FILE IMAGE_FOLDER ANSWERS_DIR [more model_vqa_loader flags]
    # One greedy model_vqa_loader process per GPU on chunk IDX of CHUNKS, answers in
    # ANSWERS_DIR/${CHUNKS}_${IDX}.jsonl (resumable), then ANSWERS_DIR/merge.jsonl = the chunks in order.
    local question_file="$1" image_folder="$2" answers_dir="$3"
    shift 3
    mkdir -p "$answers_dir"
    local idx pid failed=0
    local -a pids=()
    for idx in $(seq 0 $((CHUNKS - 1))); do
        CUDA_VISIBLE_DEVICES="${GPULIST[$idx]}" "$PYTHON" -m llava.eval.model_vqa_loader \
            --model-path "$MODEL_PATH" \
            ${MODEL_BASE:+--model-base "$MODEL_BASE"} \
            --question-file "$question_file" \
            --image-folder "$image_folder" \
            --answers-file "$answers_dir/${CHUNKS}_${idx}.jsonl" \
            --num-chunks "$CHUNKS" \
            --chunk-idx "$idx" \
            --temperature 0 \
            --conv-mode "$CONV_MODE" \
            --batch-size "$BATCH_SIZE" \
            "$@" &
        pids+=("$!")
    done
    # Wait on each process: a bare `wait` would hide a failed chunk and merge a partial file.
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    if [ "$failed" -ne 0 ]; then
        echo "a chunk failed; re-run the script to resume from the answers already written" >&2
        return 1
    fi
    : > "$answers_dir/merge.jsonl"
    for idx in $(seq 0 $((CHUNKS - 1))); do
        cat "$answers_dir/${CHUNKS}_${idx}.jsonl" >> "$answers_dir/merge.jsonl"
    done
}
