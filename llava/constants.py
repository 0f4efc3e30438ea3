"""Constants shared by the data pipeline, the model and the inference helpers.

The values are part of upstream LLaVA's public surface: checkpoints, datasets and eval
harnesses depend on them, so they never change.
"""

CONTROLLER_HEART_BEAT_EXPIRATION = 30
WORKER_HEART_BEAT_INTERVAL = 15
LOGDIR = "."

# Label value ignored by the causal-LM loss (torch's cross_entropy default).
IGNORE_INDEX = -100
# Placeholder id in `input_ids` where the projected image features are spliced in.
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
