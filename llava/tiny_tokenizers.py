"""Tiny but real tokenizers of each LLM family, for tests and tiny models.

`build_tiny_tokenizer(kind, out_dir, corpus)` trains a small tokenizer of the family's own
kind on `corpus`, gives it the family's special tokens, and saves a folder that
`AutoTokenizer.from_pretrained` loads into the same tokenizer class a hub checkpoint of that
family uses. Kinds (`TOKENIZER_FAMILIES`):

- `llama2`, `mistral` (v0.1/v0.2 layout): SentencePiece BPE, LlamaTokenizer; bos `<s>`, eos `</s>`,
  unk `<unk>`, no pad; auto BOS.
- `llama3`: byte-level BPE, PreTrainedTokenizerFast; bos `<|begin_of_text|>`, eos `<|eot_id|>`, no pad,
  no unk; auto BOS; also `<|start_header_id|>`, `<|end_header_id|>`, `<|finetune_right_pad_id|>`, ...
- `qwen2`: byte-level BPE (NFC), Qwen2Tokenizer; no bos, eos `<|im_end|>`, pad `<|endoftext|>`, no unk;
  no BOS; also `<|im_start|>`.
- `gemma`: SentencePiece BPE without dummy prefix, GemmaTokenizer; bos `<bos>`, eos `<eos>`, pad
  `<pad>`, unk `<unk>`; auto BOS; also `<start_of_turn>`, `<end_of_turn>`.
- `phi3`: SentencePiece BPE, LlamaTokenizer; bos `<s>`, eos = pad `<|endoftext|>`, unk `<unk>`; no auto
  BOS; also `<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`.

The eos is the Instruct checkpoint's (backbones reference, table 3). Special-token *strings*
and their relative order are the family's; ids are small (Gemma keeps pad 0 / eos 1 / bos 2 /
unk 3; Llama-2 layouts unk 0 / bos 1 / eos 2; chat tokens come after the trained vocabulary, as
in the hub files). Phi-3's auto BOS is not verified against the hub (no access here): the
current Phi-3/3.5 configs are believed to set `add_bos_token: false`.

SentencePiece kinds reuse `llava.tiny.train_sentencepiece_tokenizer` (LLaMA's trainer settings);
Gemma takes that model's vocabulary and merges into a `GemmaTokenizer`, whose pre-tokenizer adds
no dummy prefix (so a text's first word has no word-start marker, as in Gemma). Byte-level kinds
are trained with the `tokenizers` library using the family's pre-tokenisation regex. Same corpus,
kind and vocabulary size give the same files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

TOKENIZER_FAMILIES: tuple[str, ...] = ("llama2", "mistral", "llama3", "qwen2", "gemma", "phi3")

_SENTENCEPIECE_KINDS = ("llama2", "mistral", "gemma", "phi3")
_DEFAULT_VOCAB_SIZE = {"sentencepiece": 320, "byte_bpe": 400}

# Pre-tokenisation regexes of the hub tokenizer.json files: Llama-3 groups up to 3 digits, Qwen2 one.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama-3.1's first special tokens in id order (128000 on; 3.0 calls 128004 reserved_special_token_2).
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>",
)
QWEN2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
GEMMA_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
GEMMA_CHAT_TOKENS = ("<start_of_turn>", "<end_of_turn>")
# Phi-3's added tokens from 32000 on, in id order (the placeholders between them left out).
PHI3_SPECIAL_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")

# A small corpus for tests and tiny models: the chat templates' words and a few captions, repeated so
# BPE learns whole words. Enough distinct characters stay below the SentencePiece default of 320.
SAMPLE_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "system user assistant model",
    "A chat between a curious human and an artificial intelligence assistant.",
    "USER: ASSISTANT: Human: Assistant:",
    "What is in the picture? Describe the image briefly.",
    "a red circle and a blue box on the left, a green square at the top right",
    "Which box is on the left? the red box. Name a colour: yellow.",
    # runs of newlines become merged tokens, as in real vocabularies (a boundary can fall inside one)
    "Line one\n\nLine two\n\n\nLine three",
) * 20

# Configuration keys `save_pretrained` records about how the tokenizer was loaded (they follow
# HF_HUB_OFFLINE and the like); dropped so a folder is the same whatever the environment.
_LOAD_TIME_KEYS = ("is_local", "local_files_only")


def build_tiny_tokenizer(
    kind: str,
    out_dir: str | Path,
    corpus: Iterable[str],
    vocab_size: int | None = None,
    *,
    model_max_length: int = 512,
) -> PreTrainedTokenizerBase:
    """Train a tiny `kind` tokenizer on `corpus`, save it into `out_dir` and return it loaded back.

    `vocab_size` counts the trained vocabulary (for SentencePiece kinds the 256 byte pieces and
    3 specials included, so it must exceed 259 plus the corpus's distinct characters); the chat
    special tokens come on top. Default: 320 (SentencePiece), 400 (byte-level, 256 of them bytes).
    Raises ValueError for an unknown kind or an empty corpus, naming them.
    """
    if kind not in TOKENIZER_FAMILIES:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(TOKENIZER_FAMILIES)}")
    out_dir = Path(out_dir)
    sentences = [s for s in corpus if s]
    if not sentences:
        raise ValueError(f"cannot train a {kind} tokenizer for {out_dir}: the corpus is empty")
    if vocab_size is None:
        vocab_size = _DEFAULT_VOCAB_SIZE["sentencepiece" if kind in _SENTENCEPIECE_KINDS else "byte_bpe"]
    if kind in _SENTENCEPIECE_KINDS:
        # imported here: llava.tiny may build its models on these tokenizers
        from llava.tiny import train_sentencepiece_tokenizer

        train_sentencepiece_tokenizer(
            sentences, out_dir, vocab_size=vocab_size, model_max_length=model_max_length
        )
        if kind == "gemma":
            _convert_to_gemma(out_dir, model_max_length)
        elif kind == "phi3":
            _convert_to_phi3(out_dir)
    else:
        _train_byte_level(kind, sentences, out_dir, vocab_size, model_max_length)
    return AutoTokenizer.from_pretrained(str(out_dir))


def _save(
    tokenizer: PreTrainedTokenizerBase, out_dir: Path, add_bos_token: bool | None = None, **config_overrides
) -> None:
    """`save_pretrained`, then fix `tokenizer_config.json`: right padding, overrides, no load-time keys.

    `add_bos_token` goes through the tokenizer's setter, which rewrites the post-processor saved in
    tokenizer.json: loading takes BOS from that post-processor, not from the configuration flag.
    """
    if add_bos_token is not None:
        tokenizer.add_bos_token = add_bos_token
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["padding_side"] = "right"  # transformers 5 tokenizers default to left otherwise
    config.update(config_overrides)
    for key in _LOAD_TIME_KEYS:
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _special(token: str):
    from tokenizers import AddedToken

    return AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)


def _convert_to_phi3(out_dir: Path) -> None:
    """The LLaMA-layout SentencePiece folder + Phi-3's added tokens, eos/pad `<|endoftext|>`, no auto BOS."""
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": [_special(t) for t in PHI3_SPECIAL_TOKENS]})
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = "<|endoftext|>"
    _save(tokenizer, out_dir, add_bos_token=False, legacy=False)


def _convert_to_gemma(out_dir: Path, model_max_length: int) -> None:
    """Move the trained SentencePiece vocabulary and merges into a GemmaTokenizer with Gemma's ids."""
    from transformers import GemmaTokenizer

    llama = AutoTokenizer.from_pretrained(str(out_dir))
    model = json.loads(llama.backend_tokenizer.to_str())["model"]
    llama_specials = {"<unk>", "<s>", "</s>"}
    pieces = [piece for piece, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    vocab = {token: index for index, token in enumerate(GEMMA_SPECIAL_TOKENS)}
    for piece in pieces:
        if piece not in llama_specials:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    gemma = GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    gemma.add_special_tokens({"additional_special_tokens": [_special(t) for t in GEMMA_CHAT_TOKENS]})
    # The LLaMA-layout SentencePiece model has other ids: nothing may read it instead of tokenizer.json.
    (out_dir / "tokenizer.model").unlink()
    (out_dir / "tokenizer_config.json").unlink()
    _save(gemma, out_dir, add_bos_token=True, add_eos_token=False)


def _train_byte_level(
    kind: str, sentences: list[str], out_dir: Path, vocab_size: int, model_max_length: int
) -> None:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if kind == "qwen2":
        backend.normalizer = normalizers.NFC()
    split = _QWEN2_SPLIT if kind == "qwen2" else _LLAMA3_SPLIT
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(sentences, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "llama3":
        from transformers import PreTrainedTokenizerFast

        backend.add_special_tokens([_special(t) for t in LLAMA3_SPECIAL_TOKENS])
        bos = LLAMA3_SPECIAL_TOKENS[0]
        bos_id = backend.token_to_id(bos)
        backend.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
            ),
        ])
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=bos, eos_token="<|eot_id|>",
            model_max_length=model_max_length,
        )
        _save(tokenizer, out_dir)
        return
    from transformers import Qwen2Tokenizer

    backend.add_special_tokens([_special(t) for t in QWEN2_SPECIAL_TOKENS])
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend, unk_token=None, bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", model_max_length=model_max_length,
    )
    _save(tokenizer, out_dir)
