"""Specification of the `patch-align` command's answer to bad input, for every group but `eval`.

Bad input (a value out of range, a missing or unreadable file, an output path that is a file) is
`patch-align GROUP COMMAND: error: MESSAGE` on stderr and exit status 2: no traceback, and nothing
expensive (a model load) before the cheap checks.
"""

import json
from pathlib import Path

import pytest

from patch_align.cli import main

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


def bad_input(argv, capsys) -> str:
    """Run the command; check exit 2 and the error on stderr; return the message after `error: `."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    prog = " ".join(["patch-align", *[a for a in argv[:2] if not str(a).startswith("-")]])
    assert err.startswith(f"{prog}: error: ") and err.endswith("\n"), err
    return err.removeprefix(f"{prog}: error: ").removesuffix("\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from patch_align.world.generator import WorldSpec, make_world

    out = tmp_path_factory.mktemp("world")
    make_world(out, WorldSpec(n_train=2, n_eval=1))
    return out


def copy_world(world: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(world, to)
    return to


# --- world -----------------------------------------------------------------------------------------


def test_world_make_with_an_unknown_shape(tmp_path, capsys):
    message = bad_input(["world", "make", "--out", tmp_path / "w", "--shapes", "star"], capsys)
    assert message.startswith("shapes must be distinct names from ['circle', 'cross', ")
    assert message.endswith("got ['star']")
    assert not (tmp_path / "w").exists()


def test_world_make_with_no_training_images(tmp_path, capsys):
    message = bad_input(["world", "make", "--out", tmp_path / "w", "--n-train", "0"], capsys)
    assert message == "n_train and n_eval must be >= 1, got 0, 200"


def test_world_make_into_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    message = bad_input(["world", "make", "--out", tmp_path / "f", "--n-train", "1", "--n-eval", "1"], capsys)
    assert message == f"--out {tmp_path / 'f'} exists and is not a folder"


def test_world_bootstrap_of_an_empty_folder(tmp_path, capsys):
    message = bad_input(["world", "bootstrap", "--world", tmp_path, "--out", tmp_path / "b"], capsys)
    assert message == (f"{tmp_path} is not a world folder: world.json is missing "
                       "(make one with `patch-align world make --out DIR`)")


def test_world_bootstrap_of_a_world_missing_a_file_names_it_before_training(world, tmp_path, capsys):
    broken = copy_world(world, tmp_path / "w")
    (broken / "pretrain_eval.json").unlink()
    message = bad_input(["world", "bootstrap", "--world", broken, "--out", tmp_path / "b"], capsys)
    assert message.startswith(f"{broken} is an incomplete world: missing pretrain_eval.json; regenerate")
    assert not (tmp_path / "b").exists()


def test_world_bootstrap_of_a_world_with_a_torn_manifest(world, tmp_path, capsys):
    broken = copy_world(world, tmp_path / "w")
    (broken / "world.json").write_text('{"spec": ')
    message = bad_input(["world", "bootstrap", "--world", broken, "--out", tmp_path / "b"], capsys)
    assert message.startswith(f"{broken / 'world.json'}: unreadable world manifest (Expecting value")


def test_demo_with_zero_seeds(tmp_path, capsys):
    message = bad_input(["demo", "--seeds", "0", "--out", tmp_path / "d"], capsys)
    assert message == "--seeds must be >= 1, got 0"


# --- pad -------------------------------------------------------------------------------------------


def test_pad_stats_of_a_missing_file(tmp_path, capsys):
    assert "No such file or directory" in bad_input(["pad", "stats", tmp_path / "no.jsonl"], capsys)


def test_pad_show_of_unknown_ids(tmp_path, capsys):
    argv = ["pad", "show", FIXTURES / "pad.json", "--image-folder", FIXTURES / "images", "--ids", "s000",
            "nope", "--out", tmp_path / "png"]
    assert bad_input(argv, capsys) == f"ids not in {FIXTURES / 'pad.json'}: nope"


def test_pad_validate_with_a_folder_that_holds_no_tokenizer(tmp_path, capsys):
    argv = ["pad", "validate", FIXTURES / "pad.json", "--image-folder", FIXTURES / "images",
            "--tokenizer", tmp_path]
    assert bad_input(argv, capsys).startswith(f"--tokenizer {tmp_path}: cannot load a tokenizer (")


def test_pad_merge_of_a_missing_folder(tmp_path, capsys):
    message = bad_input(["pad", "merge", tmp_path / "gen", "--out", tmp_path / "pad.jsonl"], capsys)
    assert message == f"{tmp_path / 'gen'} is not a folder (the --out of `patch-align pad generate`)"


def test_pad_merge_with_a_torn_shard_manifest(tmp_path, capsys):
    (tmp_path / "shard-00000-of-00001.manifest.json").write_text('{"settings": {"data": ')
    message = bad_input(["pad", "merge", tmp_path, "--out", tmp_path / "pad.jsonl"], capsys)
    assert message.startswith(f"{tmp_path / 'shard-00000-of-00001.manifest.json'}: unreadable shard manifest")


def test_pad_merge_into_a_missing_folder(tmp_path, capsys):
    out = tmp_path / "no" / "pad.jsonl"
    argv = ["pad", "merge", tmp_path, "--out", out, "--data", FIXTURES / "pretrain.json"]
    assert bad_input(argv, capsys) == f"--out {out}: not a file in an existing folder"


# --- sea -------------------------------------------------------------------------------------------


def test_sea_vocab_left_empty_by_min_count(tmp_path, capsys):
    argv = ["sea", "vocab", "--data", FIXTURES / "pretrain.json", "--min-count", "1000",
            "--out", tmp_path / "v"]
    assert bad_input(argv, capsys) == f"no word of {FIXTURES / 'pretrain.json'} reaches --min-count 1000"
    assert not (tmp_path / "v").exists()


def test_sea_vocab_into_a_missing_folder(tmp_path, capsys):
    argv = ["sea", "vocab", "--data", FIXTURES / "pretrain.json", "--min-count", "1",
            "--out", tmp_path / "no" / "v.txt"]
    assert "No such file or directory" in bad_input(argv, capsys)


def test_sea_label_into_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    argv = ["sea", "label", "--clip", FIXTURES / "clip", "--vocab", tmp_path / "v.txt", "--data",
            FIXTURES / "pretrain.json", "--image-folder", FIXTURES / "images", "--out", tmp_path / "f"]
    assert bad_input(argv, capsys) == f"--out {tmp_path / 'f'} exists and is not a folder"


# --- analyze ---------------------------------------------------------------------------------------


def test_analyze_checks_the_pad_file_before_loading_the_model(tmp_path, capsys):
    argv = ["analyze", "--model-path", tmp_path / "no-model", "--pad", tmp_path / "no.jsonl",
            "--image-folder", FIXTURES / "images", "--out", tmp_path / "a"]
    assert bad_input(argv, capsys) == f"PAD file {tmp_path / 'no.jsonl'} does not exist"


def test_analyze_compare_of_a_metrics_file_that_is_no_object(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps([1, 2]))
    message = bad_input(["analyze", "compare", tmp_path / "run", "--out", tmp_path / "cmp"], capsys)
    metrics = tmp_path / "run" / "metrics.json"
    assert message == f"{metrics}: no 'compression' section (not an analyze metrics.json)"
