"""Hub ids as model paths (issue 14): `llava.paths.resolve_model_path` and the places that call it.

Offline (conftest sets HF_HUB_OFFLINE=1): an id found in a hub cache laid out as huggingface_hub
lays it out (models--ORG--NAME/snapshots/HASH, refs/REVISION) resolves to its snapshot; an id not
there is an error naming the id, saying it is not a local folder and giving the download command.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llava.paths import HubModelError, looks_like_hub_id, resolve_model_path

UPSTREAM_ID = "liuhaotian/llava-v1.5-7b"


def plant(cache: Path, repo_id: str, source: Path, commit: str, revision: str = "main") -> Path:
    """Copy `source` into `cache` as the snapshot `commit` of `repo_id`, with refs/`revision` -> commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def offline_message(flag: str, repo_id: str, cache: Path) -> str:
    return (
        f"{flag} {repo_id} is not a local folder, and as a hub id it is not in the cache {cache} while "
        f"the hub is offline (HF_HUB_OFFLINE=1). Download it where there is network with "
        f"`hf download {repo_id}` (into the same cache; set HF_HUB_CACHE/HF_HOME to share it), or pass "
        f"the folder of a downloaded copy (`hf download {repo_id} --local-dir DIR`)"
    )


def test_an_id_missing_from_the_offline_cache_names_itself_and_the_download_command(hub_cache):
    with pytest.raises(HubModelError) as caught:
        resolve_model_path(UPSTREAM_ID)
    assert str(caught.value) == offline_message("--model-path", UPSTREAM_ID, hub_cache)


def test_the_revision_is_part_of_the_error_and_of_the_download_command(hub_cache):
    with pytest.raises(HubModelError, match=r"at revision v2 while .* `hf download org/m --revision v2`"):
        resolve_model_path("org/m", revision="v2")


def test_an_id_in_the_cache_resolves_to_its_snapshot_for_the_requested_revision(hub_cache, golden_dir):
    source = golden_dir / "llava-tiny-pretrain"
    main = plant(hub_cache, "org/tiny", source, "a" * 40)
    tagged = plant(hub_cache, "org/tiny-tagged", source, "b" * 40, revision="v1")
    assert resolve_model_path("org/tiny") == str(main)
    assert resolve_model_path("org/tiny-tagged", revision="v1") == str(tagged)
    with pytest.raises(HubModelError, match="org/tiny-tagged is not a local folder"):
        resolve_model_path("org/tiny-tagged")  # no refs/main


def test_hf_home_locates_the_cache_when_hf_hub_cache_is_unset(tmp_path, monkeypatch, golden_dir):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = plant(tmp_path / "home" / "hub", "org/tiny", golden_dir / "llava-tiny-pretrain", "c" * 40)
    assert resolve_model_path("org/tiny") == str(snapshot)


def test_a_local_path_wins_and_a_missing_path_that_cannot_be_an_id_is_not_looked_up(tmp_path, monkeypatch):
    (tmp_path / "org" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("org/tiny") == "org/tiny"
    for missing in ("./runs/x", "/nowhere/at/all", "a/b/c", "../up"):
        assert not looks_like_hub_id(missing)
        with pytest.raises(FileNotFoundError, match=f"--vision_tower {missing}: no such file or folder"):
            resolve_model_path(missing, what="--vision_tower")


def test_no_network_is_reported_as_unreachable_not_offline(tmp_path, monkeypatch):
    """Online mode but nothing answers: the same error, saying the hub cannot be reached."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubModelError, match=r"org/m is not a local folder, .* the hub cannot be reached"):
        resolve_model_path("org/m")


def tiny_llava_logits(model_path: str) -> torch.Tensor:
    from llava.model.builder import load_pretrained_model

    tokenizer, model, _, _ = load_pretrained_model(model_path, None, None, device="cpu")
    ids = tokenizer("Name a colour.", return_tensors="pt").input_ids
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_load_pretrained_model_takes_hub_ids_for_checkpoint_and_tower(hub_cache, golden_dir, tmp_path):
    """The checkpoint and the tower its config names are both hub ids, served from the planted cache."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(golden_dir / "llava-v1.5-tiny", checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["mm_vision_tower"] = "tiny-org/clip-tiny"
    (checkpoint / "config.json").write_text(json.dumps(config))
    plant(hub_cache, "tiny-org/clip-tiny", golden_dir / "fixtures-437" / "clip", "d" * 40)
    plant(hub_cache, "tiny-org/llava-tiny", checkpoint, "e" * 40)
    expected = tiny_llava_logits(str(golden_dir / "llava-v1.5-tiny"))
    assert torch.equal(tiny_llava_logits("tiny-org/llava-tiny"), expected)


def test_load_pretrained_model_names_an_unavailable_model_base(hub_cache, golden_dir):
    from llava.model.builder import load_pretrained_model

    with pytest.raises(HubModelError, match="^model_base lmsys/vicuna-7b-v1.5 is not a local folder"):
        load_pretrained_model(str(golden_dir / "llava-tiny-pretrain"), "lmsys/vicuna-7b-v1.5", None,
                              device="cpu")


def test_a_tower_id_missing_from_the_cache_is_named_as_the_vision_tower(hub_cache, golden_dir, tmp_path):
    from types import SimpleNamespace

    from llava.model.multimodal_encoder.builder import build_vision_tower

    args = SimpleNamespace(mm_vision_tower="openai/clip-vit-large-patch14-336", mm_vision_select_layer=-2)
    expected = r"^vision tower \(mm_vision_tower\) openai/clip-vit-large-patch14-336 is not a local folder"
    with pytest.raises(HubModelError, match=expected):
        build_vision_tower(args, delay_load=True)


@pytest.mark.parametrize("argv", [
    ["export", "hf", "--model-path", UPSTREAM_ID, "--out", "{tmp}/hf"],
    ["import", "hf", "--model-path", "llava-hf/llava-1.5-7b-hf", "--out", "{tmp}/ours"],
])
def test_patch_align_export_and_import_exit_2_naming_the_hub_id(hub_cache, tmp_path, capsys, argv):
    from patch_align.cli import main

    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    repo_id = argv[3]
    assert capsys.readouterr().err.strip() == (
        f"patch-align {argv[0]} hf: error: " + offline_message("--model-path", repo_id, hub_cache))


def test_run_llava_and_model_vqa_loader_exit_2_naming_the_hub_id_before_loading(hub_cache, tmp_path, capsys):
    from llava.eval import model_vqa_loader, run_llava

    with pytest.raises(SystemExit) as caught:
        run_llava.main(["--model-path", UPSTREAM_ID, "--query", "Hi", "--device", "cpu"])
    assert caught.value.code == 2
    assert offline_message("--model-path", UPSTREAM_ID, hub_cache) in capsys.readouterr().err
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "Hi?"}) + "\n")
    with pytest.raises(SystemExit) as caught:
        model_vqa_loader.main(["--model-path", UPSTREAM_ID, "--question-file", str(questions),
                               "--answers-file", str(tmp_path / "a.jsonl"), "--image-folder", str(tmp_path)])
    assert caught.value.code == 2
    assert offline_message("--model-path", UPSTREAM_ID, hub_cache) in capsys.readouterr().err
