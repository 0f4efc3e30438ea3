"""The miniature world: generated images with exact ground truth, and the small models trained on it.

`patch_align.world.generator.make_world` writes the world's files; `patch_align.world.bootstrap`
trains its "pretrained" CLIP and Llama. The modules import torch only where they need it.
"""
