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


def absolute_if_local(path_or_id: str) -> str:
    """`path_or_id` made absolute when it names something on disk, unchanged otherwise.

    For values that may be a hub id as well as a folder (`--vision_tower`, `--model_name_or_path`):
    a hub id such as `openai/clip-vit-large-patch14-336` stays as written, a local folder given as
    `checkpoints/clip` is recorded as the absolute path it named in the working directory of the run.
    """
    if os.path.exists(path_or_id):
        return os.path.abspath(path_or_id)
    return path_or_id
