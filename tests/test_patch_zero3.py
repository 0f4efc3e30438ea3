"""Label targets under DeepSpeed ZeRO-3 (one CPU process): correct while the table is partitioned."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, torch, deepspeed
    from torch import nn
    from patch_align.objectives.label_embedding import LabelEmbeddingCache

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 8).requires_grad_(False)  # frozen LLM table, as in stage 1
            self.proj = nn.Linear(8, 8)  # the trainable projector

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = Model()
    full = model.embed.weight.detach().clone()
    config = {"train_batch_size": 1, "zero_optimization": {"stage": 3},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=list(model.proj.parameters()), config=config
    )
    embed = engine.module.embed
    ids = torch.tensor([[3, 7, 0], [12, 0, 0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    cache = LabelEmbeddingCache()
    first, second = cache(embed, ids, mask), cache(embed, ids, mask)  # computed, then cached
    expected = torch.stack([full[[3, 7]].mean(0), full[12]])
    print("RESULT " + json.dumps({
        "local_shape": list(embed.weight.shape), "ds_shape": list(embed.weight.ds_shape),
        "first_error": float((first - expected).abs().max()),
        "second_error": float((second - expected).abs().max()),
    }))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_label_embeddings_are_correct_while_the_table_is_partitioned(tmp_path):
    pytest.importorskip("deepspeed")
    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ,
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        PYTHONPATH=str(root),
    )
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["local_shape"] == [0] and result["ds_shape"] == [50, 8]  # partitioned: no local copy
    assert result["first_error"] < 1e-6 and result["second_error"] < 1e-6
