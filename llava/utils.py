"""Small process-wide helpers used by upstream-style scripts."""
from __future__ import annotations

import torch


def _skip_reset_parameters(self: torch.nn.Module) -> None:
    """Leave the freshly allocated weights as they are; a checkpoint overwrites them anyway."""


def disable_torch_init() -> None:
    """Make `nn.Linear` and `nn.LayerNorm` skip their random initialisation, for this process.

    Building a model only to load a checkpoint into it spends most of its time drawing
    random weights that are thrown away; scripts call this before `from_pretrained`.
    Layers created afterwards hold uninitialised memory until weights are loaded.
    """
    torch.nn.Linear.reset_parameters = _skip_reset_parameters
    torch.nn.LayerNorm.reset_parameters = _skip_reset_parameters
