"""The pad token a training run uses, per chat template and tokenizer family.

Padding never carries meaning here: the collator marks padding by sequence lengths in the
attention mask and by IGNORE_INDEX in the labels, never by comparing ids with the pad id. The
pad id still must not be the template's turn-end token, which the family templates supervise:
code that does compare ids (harnesses masking `ids != pad_id`, stripping trailing pads after
generation) would then drop real answer tokens.

- Upstream's templates (v0, v1, plain, llama_2, mpt, ...) keep upstream's rule: v0 without a pad
  adds `[PAD]`; every other version pads with `<unk>`. A tokenizer without `<unk>` (Llama-3,
  Qwen2), where upstream would leave pad unset and fail, gets the family choice below.
- Family templates (llama_3, qwen_2, qwen_2_5, gemma, phi3): the tokenizer's own pad (Qwen2
  `<|endoftext|>`, Gemma `<pad>`, Phi-3 `<|endoftext|>`), else `<unk>`, else a reserved token
  (Llama-3.1 `<|finetune_right_pad_id|>`, Llama-3.0 `<|reserved_special_token_0|>`), else eos;
  never the turn-end token. The turn-end token must be one token of the tokenizer: a template
  that does not match the model's tokenizer is an error before the model loads.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from llava.conversation import SeparatorStyle
from llava.train.data import conversation_template

# Tokens hub tokenizers reserve and never produce from text, in order of preference.
RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>")


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, version: str) -> None:
    """Set `tokenizer.pad_token` (in place) for training with the template `--version` names.

    Raises ValueError for an unknown version (listing the templates), for a family template whose
    turn-end token is not a single token of this tokenizer, and when no pad token can be chosen.
    """
    template = conversation_template(version)
    if template.sep_style is not SeparatorStyle.ROLE_HEADER:
        if version == "v0" and tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        elif tokenizer.unk_token is not None and (tokenizer.pad_token is None or version != "v0"):
            # LLaMA has no pad token; upstream pads with <unk> (the attention mask, not the id, marks padding)
            tokenizer.pad_token = tokenizer.unk_token
        elif tokenizer.pad_token is None:
            tokenizer.pad_token = _family_pad_token(tokenizer, version, avoid=None)
        return
    turn_end = template.sep
    ids = tokenizer(turn_end, add_special_tokens=False).input_ids
    if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != turn_end:
        raise ValueError(
            f"--version {version} ends each turn with {turn_end!r}, which tokenizer "
            f"{tokenizer.name_or_path} does not hold as one token (it encodes as {len(ids)} tokens): "
            "the template does not belong to this model's family"
        )
    if tokenizer.pad_token is None or tokenizer.pad_token == turn_end:
        tokenizer.pad_token = _family_pad_token(tokenizer, version, avoid=turn_end)


def _family_pad_token(tokenizer: PreTrainedTokenizerBase, version: str, avoid: str | None) -> str:
    """`<unk>`, else a reserved token in the vocabulary, else eos; never `avoid`."""
    vocab = tokenizer.get_vocab()
    candidates = [tokenizer.unk_token, *(t for t in RESERVED_PAD_TOKENS if t in vocab), tokenizer.eos_token]
    for candidate in candidates:
        if candidate is not None and candidate != avoid:
            return candidate
    raise ValueError(
        f"tokenizer {tokenizer.name_or_path} has no pad, unk, reserved ({', '.join(RESERVED_PAD_TOKENS)}) "
        f"or eos token other than the turn end {avoid!r} of --version {version}: give it a pad token"
    )
