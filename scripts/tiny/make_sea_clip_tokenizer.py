"""Give a tiny CLIP folder (`llava.tiny.build_tiny_clip`, which writes no text tokenizer) a character-level
CLIP tokenizer, so that `patch-align sea label --clip DIR` can embed vocabulary words with its text tower.

Every lower-case letter, digit and '.' is a token (alone and word-final, "x</w>"); no merges. The
start/end-of-text tokens take the two highest ids: the tiny text config has the legacy
`eos_token_id` 2, for which CLIP pools the text at the highest input id, i.e. at the end token.
Usage: python scripts/tiny/make_sea_clip_tokenizer.py CLIP_DIR   (does nothing if DIR has a tokenizer)
"""

from __future__ import annotations

import json
import pathlib
import string
import sys


def write_character_tokenizer(clip_dir: str | pathlib.Path) -> bool:
    """Save the tokenizer into `clip_dir`; False (and nothing written) when one is already there."""
    from transformers import CLIPTokenizer

    clip_dir = pathlib.Path(clip_dir)
    config = json.loads((clip_dir / "config.json").read_text())
    if any((clip_dir / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        return False
    vocab: dict[str, int] = {}
    for char in string.ascii_lowercase + string.digits + ".":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    text_vocab = config["text_config"]["vocab_size"]
    if len(vocab) > text_vocab:
        raise ValueError(f"{clip_dir}: the text tower has {text_vocab} ids, the tokenizer needs {len(vocab)}")
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(clip_dir))
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    written = write_character_tokenizer(sys.argv[1])
    outcome = "character-level CLIP tokenizer written" if written else "tokenizer already there"
    print(f"{sys.argv[1]}: {outcome}")
