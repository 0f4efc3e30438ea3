"""The projector from vision features (C) to the LLM's embedding space (D).

Names and layouts match upstream so that `model.mm_projector.*` state-dict keys load
unchanged: `linear` is one `nn.Linear`; `mlp{N}x_gelu` is an `nn.Sequential` of N
linears with GELU between them (linears at indices 0, 2, 4, ...); `identity` passes the
features through (requires C == D).
"""

from __future__ import annotations

import re

from torch import nn

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self) -> dict:
        return {"mm_projector_type": "identity"}


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """`config.mm_projector_type` in {linear, mlp{N}x_gelu, identity}; maps (..., C) -> (..., D)."""
    projector_type = getattr(config, "mm_projector_type", "linear")
    in_dim, out_dim = config.mm_hidden_size, config.hidden_size
    if projector_type == "linear":
        return nn.Linear(in_dim, out_dim)
    match = _MLP_GELU.match(projector_type)
    if match:
        depth = int(match.group(1))
        if depth < 1:
            raise ValueError(f"mm_projector_type {projector_type!r}: depth must be >= 1")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        if in_dim != out_dim:
            raise ValueError(
                f"identity projector needs mm_hidden_size == hidden_size, got {in_dim} != {out_dim}"
            )
        return IdentityMap()
    raise ValueError(f"unknown mm_projector_type {projector_type!r}: use linear, mlp<N>x_gelu or identity")
