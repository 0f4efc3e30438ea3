"""Small process-wide helpers used by upstream-style scripts."""
from __future__ import annotations

import torch


def _skip_reset_parameters(self: torch.nn.Module) -> None:
    """Leave the freshly allocated weights as they are; a checkpoint overwrites them anyway."""


def disable_torch_init() -> None:
    """Make `nn.Linear` and `nn.LayerNorm` skip their random initialisation, for this process.

    Upstream's scripts call this before loading a model, to skip drawing random weights
    that the checkpoint overwrites. Kept for scripts that import it; nothing in this project
    calls it: transformers 5's `from_pretrained` already builds models on the meta device,
    and the patch lasts for the whole process, so any layer built later (a new projector, a
    model in the same test session) would start from uninitialised memory.
    """
    torch.nn.Linear.reset_parameters = _skip_reset_parameters
    torch.nn.LayerNorm.reset_parameters = _skip_reset_parameters
