"""Bootstrap of the world's models: loadable transformers folders, measured quality, content-hash cache."""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from patch_align.cli import main as cli_main
from patch_align.world.bootstrap import (
    QUICK_SETTINGS,
    bootstrap_world,
    cache_key,
    clip_retrieval_accuracy,
    render_conversation,
)
from patch_align.world.generator import WorldError, WorldSpec, load_manifest, make_world

# Far smaller than the quick preset, so the default suite stays fast; quality is checked loosely here
# and against chance with the real quick preset in the slow test.
TINY_SETTINGS = replace(QUICK_SETTINGS, clip_hidden=32, clip_layers=2, clip_projection=32, clip_steps=30,
                        clip_batch=32, llm_hidden=32, llm_intermediate=64, llm_steps=40, llm_batch=8,
                        llm_seq_len=64)


def chance_of(world: Path) -> float:
    """Retrieval chance from the world's held-out captions: mean over images of (#equal captions) / N."""
    records = json.loads((world / "pretrain_eval.json").read_text())
    captions = [r["conversations"][1]["value"] for r in records]
    counts = Counter(captions)
    return sum(counts[c] for c in captions) / len(captions) ** 2


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(out, WorldSpec(seed=1, n_train=40, n_eval=12))
    return out


@pytest.fixture(scope="module")
def booted(world, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("boot")
    return out, bootstrap_world(world, out, TINY_SETTINGS)


def test_clip_folder_loads_as_llava_vision_tower_and_full_clip(booted):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer, CLIPVisionModel

    clip = str(booted[0] / "clip")
    processor = CLIPImageProcessor.from_pretrained(clip)
    assert processor.crop_size == {"height": 56, "width": 56}
    tower = CLIPVisionModel.from_pretrained(clip)
    pixels = torch.zeros(1, 3, 56, 56)
    hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert hidden.shape == (1, 1 + 4 * 4, 32)
    model, tokenizer = CLIPModel.from_pretrained(clip), CLIPTokenizer.from_pretrained(clip)
    text = tokenizer(["a small red circle above a large blue square"], return_tensors="pt")
    assert tokenizer.unk_token_id not in text["input_ids"][0, 1:-1].tolist()
    assert model.get_text_features(**text) is not None


def test_llm_folder_loads_with_its_tokenizer_and_knows_the_chat_format(booted):
    from transformers import AutoTokenizer, LlamaForCausalLM

    llm = str(booted[0] / "llm")
    model, tokenizer = LlamaForCausalLM.from_pretrained(llm), AutoTokenizer.from_pretrained(llm)
    assert model.config.vocab_size == len(tokenizer) and model.config.hidden_size == 32
    ids = tokenizer("USER: What colour is the circle? ASSISTANT: red</s>")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids


def test_report_shows_both_models_learned(world, booted):
    out, report = booted
    assert report["cached"] is False
    assert json.loads((out / "bootstrap.json").read_text())["cache_key"] == report["cache_key"]
    clip, llm = report["clip"], report["llm"]
    assert clip["eval_pairs"] == 12 and clip["train_pairs"] == 40
    assert clip["final_loss"] < clip["first_loss"]
    # 12 held-out captions, all different here: chance is exactly 1/12; top-1 counts whole hits. The tiny
    # CLIP of this fast test does not beat chance (the slow test checks the quick preset does, 2x)
    assert clip["retrieval_chance"] == chance_of(world) == 1 / 12
    assert clip["retrieval_top1"] * 12 == round(clip["retrieval_top1"] * 12)
    assert llm["perplexity"] < llm["unigram_perplexity"] < llm["uniform_perplexity"] == llm["vocab_size"]
    assert llm["perplexity"] < llm["perplexity_untrained"]
    assert report["seconds"]["total"] >= report["seconds"]["clip"] > 0


def test_a_second_run_is_a_cache_hit_and_touches_nothing(world, booted):
    out, report = booted
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    start = time.perf_counter()
    again = bootstrap_world(world, out, TINY_SETTINGS)
    assert time.perf_counter() - start < 1.0
    assert again["cached"] is True and again["clip"] == report["clip"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_the_cache_key_changes_with_settings_and_world(world):
    manifest = load_manifest(world)
    key = cache_key(manifest, TINY_SETTINGS)
    assert key == cache_key(json.loads(json.dumps(manifest)), TINY_SETTINGS)
    assert key != cache_key(manifest, TINY_SETTINGS.with_seed(1))
    assert key != cache_key({**manifest, "spec": {**manifest["spec"], "seed": 2}}, TINY_SETTINGS)


def test_bootstrap_is_deterministic(world, booted, tmp_path):
    again = bootstrap_world(world, tmp_path, TINY_SETTINGS)
    assert again["clip"] == booted[1]["clip"] and again["llm"] == booted[1]["llm"]
    for name in ("clip/model.safetensors", "llm/model.safetensors", "llm/tokenizer.model"):
        assert (tmp_path / name).read_bytes() == (booted[0] / name).read_bytes()


def test_llm_text_is_the_vicuna_rendering_without_the_image_placeholder():
    text = render_conversation([{"from": "human", "value": "<image>\nWhat size is the red circle?"},
                                {"from": "gpt", "value": "small"}])
    assert text.endswith(" USER: What size is the red circle? ASSISTANT: small</s>")
    assert text.startswith("A chat between a curious user") and "<image>" not in text


def test_bootstrap_of_a_folder_that_is_no_world_names_it(tmp_path):
    with pytest.raises(WorldError, match="world.json is missing"):
        bootstrap_world(tmp_path, tmp_path / "out", TINY_SETTINGS)


class PlantedClip:
    """Image and text features given outright: image i's best caption is `best[i]`."""

    def __init__(self, best: list[int], n: int):
        self.image = torch.nn.functional.one_hot(torch.tensor(best), n).float()
        self.text = torch.eye(n)

    def eval(self):
        return self

    def get_image_features(self, pixel_values):
        return self.image

    def get_text_features(self, **text):
        return self.text


@pytest.mark.parametrize(
    ("best", "top1"),
    [
        ([0, 1, 2, 3], 1.0),  # each image finds its own caption
        ([1, 0, 2, 3], 1.0),  # images 0 and 1 swap captions, but both read "a red circle": still hits
        ([3, 3, 3, 3], 0.25),  # everything retrieves "a blue square", the caption of image 3 only
        ([2, 2, 0, 0], 0.0),
    ],
)
def test_retrieval_counts_equal_captions_as_hits_and_chance_counts_them_too(best, top1):
    captions = ["a red circle", "a red circle", "a green cross", "a blue square"]
    result = clip_retrieval_accuracy(PlantedClip(best, 4), torch.zeros(4, 3, 2, 2), {}, captions)
    assert result == {"top1": top1, "chance": (2 + 2 + 1 + 1) / 16, "pairs": 4}


@pytest.mark.slow
def test_quick_preset_learns_well_beyond_chance_within_its_budget(tmp_path, capsys):
    world = tmp_path / "world"
    make_world(world, WorldSpec(seed=0, n_train=400, n_eval=60))
    start = time.perf_counter()
    command = ["world", "bootstrap", "--world", str(world), "--out", str(tmp_path / "boot"), "--quick"]
    assert cli_main(command) == 0
    elapsed = time.perf_counter() - start
    report = json.loads((tmp_path / "boot" / "bootstrap.json").read_text())
    assert report["clip"]["retrieval_chance"] == pytest.approx(chance_of(world))
    assert report["clip"]["retrieval_top1"] >= 2 * chance_of(world)
    assert report["llm"]["perplexity"] < 0.5 * report["llm"]["unigram_perplexity"]
    assert elapsed < 90
    assert '"cached": false' in capsys.readouterr().out


# ---------------------------------------------------------------- CLIP position codes


def test_the_sincos_table_codes_row_then_column_at_unit_rms():
    from patch_align.world.bootstrap import sincos_position_table

    # grid 2, width 4: one frequency (1 rad per patch); patches in raster order (0,0) (0,1) (1,0) (1,1),
    # each row [sin r, cos r, sin c, cos c]; every patch has squared norm 2, so RMS √(1/2) is divided out
    s, c = torch.sin(torch.tensor(1.0)).item(), torch.cos(torch.tensor(1.0)).item()
    expected = torch.tensor([[0, 1, 0, 1], [0, 1, s, c], [s, c, 0, 1], [s, c, s, c]]) * 2 ** 0.5
    assert torch.allclose(sincos_position_table(2, 4), expected, atol=1e-6)
    table = sincos_position_table(6, 64)
    assert table.shape == (36, 64) and table.pow(2).mean().item() == pytest.approx(1.0)
    assert len({tuple(row.tolist()) for row in table}) == 36  # every patch its own code
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_table(6, 30)


def test_a_position_scale_starts_the_clip_position_embeddings_from_the_scaled_table(world, tmp_path):
    from transformers import CLIPModel

    from patch_align.world.bootstrap import sincos_position_table, train_clip

    settings = replace(TINY_SETTINGS, clip_steps=1, clip_lr=1e-12, clip_position_scale=2.0)
    train_clip(world, tmp_path / "clip", settings)
    embeddings = CLIPModel.from_pretrained(str(tmp_path / "clip")).vision_model.embeddings
    weights, grid = embeddings.position_embedding.weight.detach(), settings.clip_image_size // 14
    assert torch.allclose(weights[0], torch.zeros(weights.shape[1]), atol=1e-6)  # the class token: no code
    # the table itself, times one positive scale for every patch (one step at lr 1e-12 moves nothing)
    table = sincos_position_table(grid, weights.shape[1])
    scale = (weights[1:] * table).sum() / table.pow(2).sum()
    assert scale.item() > 0 and torch.allclose(weights[1:], scale * table, atol=1e-5)


def test_the_position_probe_reads_a_place_code_exactly_and_noise_at_chance():
    from patch_align.world.bootstrap import position_probe_accuracy

    generator = torch.Generator().manual_seed(0)
    place = torch.eye(16).expand(20, 16, 16)  # 4×4 patches whose features are their one-hot place
    coded = position_probe_accuracy(place + 0.01 * torch.randn(20, 16, 16, generator=generator),
                                    place[:10] + 0.01 * torch.randn(10, 16, 16, generator=generator))
    assert coded == {"chance": 0.25, "row": 1.0, "col": 1.0}
    noise = position_probe_accuracy(torch.randn(20, 16, 16, generator=generator),
                                    torch.randn(200, 16, 16, generator=generator))
    assert noise["row"] < 0.35 and noise["col"] < 0.35  # chance 0.25; 3,200 held-out patches
    with pytest.raises(ValueError, match="G²"):
        position_probe_accuracy(torch.zeros(2, 15, 4), torch.zeros(2, 15, 4))
