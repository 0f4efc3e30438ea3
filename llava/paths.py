"""The project's one rule for relative paths (docs/architecture.md, "Paths").

- A path given on a command line or to a Python function is relative to the current working
  directory, as everywhere.
- A path that a command writes into a file it generates (a checkpoint's config, a suite, a
  manifest, a report) is written so that the file means the same from any working directory:
  absolute, or relative to the generated file's own folder when the target lives beside it.
- A relative path read from such a file is resolved against that file's folder (eval suites,
  the bootstrap report). The exceptions are the formats whose paths are relative to a folder
  given by a flag: the LLaVA JSON's and the PAD file's `image` (relative to `--image_folder`).
"""
from __future__ import annotations

import os
import re


def absolute_if_local(path_or_id: str) -> str:
    """`path_or_id` made absolute when it names something on disk, unchanged otherwise.

    For values that may be a hub id as well as a folder (`--vision_tower`, `--model_name_or_path`):
    a hub id such as `openai/clip-vit-large-patch14-336` stays as written, a local folder given as
    `checkpoints/clip` is recorded as the absolute path it named in the working directory of the run.
    """
    if os.path.exists(path_or_id):
        return os.path.abspath(path_or_id)
    return path_or_id


# ORG/NAME or NAME, as the hub spells repository ids; anything else (./x, a/b/c, /abs) is only a path.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# Weights of other frameworks that model repositories often carry beside the PyTorch ones.
_NOT_TORCH = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.tflite", "flax_model*", "tf_model*"]


class HubModelError(FileNotFoundError):
    """A model path that is neither a local folder nor a hub model this machine can get."""


def looks_like_hub_id(value: str) -> bool:
    """Whether `value` is spelled like a hub repository id (`ORG/NAME` or `NAME`)."""
    return bool(_HUB_ID.match(value)) and ".." not in value


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cache() -> str:
    """The hub cache folder, read from the environment at call time (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def resolve_model_path(path_or_id: str, revision: str | None = None, what: str = "--model-path") -> str:
    """A local folder for `path_or_id`: the path itself when it exists, else the hub snapshot of that id.

    A hub id is fetched with `huggingface_hub.snapshot_download` into the hub cache (`HF_HUB_CACHE`, or
    `HF_HOME/hub`) at `revision` (default `main`); with `HF_HUB_OFFLINE=1` only the cache is read.
    `what` names the flag in errors. Raises `HubModelError` naming the id, saying it is not a local
    folder and giving the download command, when the id cannot be had (offline and not cached, no
    network, unknown repository or revision), and `FileNotFoundError` for a missing path that cannot
    be a hub id.
    """
    if os.path.exists(path_or_id):
        return path_or_id
    if not looks_like_hub_id(path_or_id):
        raise FileNotFoundError(f"{what} {path_or_id}: no such file or folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision}" if revision else ""
    command = f"hf download {path_or_id}" + (f" --revision {revision}" if revision else "")
    head = f"{what} {path_or_id} is not a local folder"
    cache = _hub_cache()
    try:
        return snapshot_download(
            path_or_id, revision=revision, cache_dir=cache, local_files_only=_hub_offline(),
            ignore_patterns=_NOT_TORCH,
        )
    except (RevisionNotFoundError, GatedRepoError, RepositoryNotFoundError) as err:
        # (RevisionNotFound and Gated subclass RepositoryNotFound: most specific first)
        reason = {
            RevisionNotFoundError: f"the hub model {path_or_id} has no revision {revision}",
            GatedRepoError: f"the hub model {path_or_id} is gated: accept its terms and `hf auth login`",
        }.get(type(err), f"no hub model {path_or_id} exists (or it is private: `hf auth login`)")
        raise HubModelError(f"{head}, and {reason}") from err
    except LocalEntryNotFoundError as err:
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if _hub_offline() else "the hub cannot be reached"
        raise HubModelError(
            f"{head}, and as a hub id it is not in the cache {cache}{at} while {why}. Download it "
            f"where there is network with `{command}` (into the same cache; set HF_HUB_CACHE/HF_HOME "
            f"to share it), or pass the folder of a downloaded copy (`{command} --local-dir DIR`)"
        ) from err
    except HFValidationError as err:
        raise FileNotFoundError(f"{what} {path_or_id}: no such file or folder") from err
