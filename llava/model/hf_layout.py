"""Export to, and import from, the llava-hf layout (transformers' `LlavaForConditionalGeneration`).

Export writes what transformers, its pipelines and the serving engines load (docs/export.md):

    config.json                 model_type "llava", vision_config, text_config, image_token_index, ...
    model.safetensors           language_model.model.* / language_model.lm_head.* /
                                multi_modal_projector.* / vision_tower.vision_model.*  (the published
                                llava-hf key names; transformers 5 maps them onto its model.* names)
    tokenizer files             `<image>` added as a special token; vocabulary rows resized
    processor_config.json, preprocessor_config.json, chat_template.jinja

Import turns such a folder back into our layout: a full checkpoint (config.json `llava_llama`,
model.safetensors with upstream's key names) or `mm_projector.bin` + config.json beside a plain
LLM folder (`llm/`); both carry the tower as a CLIP folder (`vision_tower/`).

Key maps are per family and registered in `TEXT_FAMILIES` / `VISION_FAMILIES`, so another LLM or
tower family is one entry each (plus its projector/feature rules if they differ).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import PreTrainedConfig

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, SeparatorStyle, conv_templates

# transformers' conversion script pads the resized vocabulary to a multiple of 64 (32000 -> 32064)
VOCAB_MULTIPLE = 64
# Our projector type with an exact llava-hf counterpart (linear_1, GELU, linear_2).
HF_PROJECTOR_TYPE = "mlp2x_gelu"
_PROJECTOR_KEYS = {"0.": "linear_1.", "2.": "linear_2."}
# select_feature (ours) <-> vision_feature_select_strategy (llava-hf)
_SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
# Upstream LLaVA tokenises the text after each `<image>` on its own, so it starts with the
# tokenizer's dummy-prefix "▁"; a whole-prompt tokenizer (Metaspace prepend "first") gives none
# after a special token. This normalizer puts a space after the last `<image>` of a run that is
# followed by text, which the pre-tokenizer turns into that "▁": the ids equal ours.
_IMAGE_SPACE_PATTERN = r"<image>(?!<image>)(?=[\s\S])"


class HfLayoutError(ValueError):
    """A checkpoint or llava-hf folder that cannot be converted; the message names the file/setting."""


@dataclass(frozen=True)
class TextFamily:
    """How one LLM family's weights and config move between our layout and llava-hf's."""

    model_type: str
    architecture: str
    config_class: Callable[..., PreTrainedConfig]
    # prefix of the decoder's keys in our LlavaLlamaForCausalLM (the LM head is `lm_head.*` in both)
    ours_prefix: str = "model."


@dataclass(frozen=True)
class VisionFamily:
    """How one tower family's weights move: our tower module's state dict ↔ `model.vision_tower.*`."""

    model_type: str
    # extra tokens the tower emits besides the patches (CLIP's CLS): LlavaProcessor's count
    num_additional_image_tokens: int
    # the tower's inner prefix in files (transformers 4.x's CLIPVisionModel nests `vision_model`;
    # 5.x's is flat in memory and adds/strips it when reading old files)
    file_prefix: str = ""


def _llama_config(**kwargs) -> PreTrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(**kwargs)


TEXT_FAMILIES: dict[str, TextFamily] = {
    "llama": TextFamily(model_type="llama", architecture="LlamaForCausalLM", config_class=_llama_config),
}
VISION_FAMILIES: dict[str, VisionFamily] = {
    "clip_vision_model": VisionFamily(
        model_type="clip_vision_model", num_additional_image_tokens=1, file_prefix="vision_model."
    ),
}
# Our config's model_type -> the text family its LLM belongs to.
OUR_MODEL_TYPES = {"llava_llama": "llama"}

# transformers 5's LlavaForConditionalGeneration in memory ...
HF_PREFIX_TOWER = "model.vision_tower."
HF_PREFIX_PROJECTOR = "model.multi_modal_projector."
HF_PREFIX_TEXT = "model.language_model."
# ... and in files: the layout of the published llava-hf checkpoints, which transformers 5 itself writes
# (`save_original_format`), transformers 4.x and every vLLM/SGLang version read.
FILE_PREFIXES = (
    (HF_PREFIX_TEXT, "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    (HF_PREFIX_PROJECTOR, "multi_modal_projector."),
    (HF_PREFIX_TOWER, "vision_tower."),
)
_OURS_TOWER = "model.vision_tower."
_OURS_PROJECTOR = "model.mm_projector."


# ---------------------------------------------------------------------------------------------
# chat template
# ---------------------------------------------------------------------------------------------


def _jinja_str(text: str) -> str:
    return json.dumps(text)  # a double-quoted literal with escapes, which Jinja reads the same


_MESSAGE_TEXT = """\
{%- if message['content'] is string -%}{%- set text = message['content'] -%}
{%- else -%}
{%- set ns = namespace(images='', text='') -%}
{%- for item in message['content'] -%}
{%- if item['type'] == 'image' -%}{%- set ns.images = ns.images + IMAGE -%}
{%- elif item['type'] == 'text' -%}{%- set ns.text = ns.text + item['text'] -%}{%- endif -%}
{%- endfor -%}
{%- set text = ns.images + ('\\n' if ns.images else '') + ns.text -%}
{%- endif -%}
"""


def chat_template_for(conv: Conversation) -> str:
    """A Jinja chat template rendering `conv`'s prompt byte for byte (TWO and PLAIN styles).

    Messages are transformers' chat format: `{"role": "system"|"user"|"assistant", "content":
    str | [{"type": "image"} | {"type": "text", "text": ...}]}`. Images in a turn go first as
    `<image>` each, then one newline, then the text (what `run_llava` and the harnesses write); a
    leading system message replaces the template's system prompt.
    """
    header = (
        f"{{%- set IMAGE = {_jinja_str(DEFAULT_IMAGE_TOKEN)} -%}}\n"
        f"{{%- set system = namespace(text={_jinja_str(conv.system)}) -%}}\n"
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "{%- set message = messages[0] -%}\n" + _MESSAGE_TEXT +
        "{%- set system.text = text -%}\n"
        "{%- endif -%}\n"
    )
    loop_start = (
        "{%- for message in messages -%}\n"
        "{%- if message['role'] != 'system' -%}\n" + _MESSAGE_TEXT
    )
    if conv.sep_style is SeparatorStyle.TWO:
        user, assistant = conv.roles
        body = (
            "{{- system.text + " + _jinja_str(conv.sep) + " -}}\n" + loop_start +
            "{%- if message['role'] == 'user' -%}{%- set role = " + _jinja_str(user) + " -%}"
            "{%- set sep = " + _jinja_str(conv.sep) + " -%}\n"
            "{%- else -%}{%- set role = " + _jinja_str(assistant) + " -%}"
            "{%- set sep = " + _jinja_str(conv.sep2) + " -%}{%- endif -%}\n"
            "{%- if text -%}{{- role + ': ' + text + sep -}}{%- else -%}{{- role + ':' -}}{%- endif -%}\n"
            "{%- endif -%}\n{%- endfor -%}\n"
            "{%- if add_generation_prompt -%}{{- " + _jinja_str(assistant + ":") + " -}}{%- endif -%}\n"
        )
    elif conv.sep_style is SeparatorStyle.PLAIN:
        sep2 = conv.sep if conv.sep2 is None else conv.sep2
        body = (
            "{{- system.text -}}\n" + loop_start +
            "{%- if text -%}{{- text + (" + _jinja_str(conv.sep) + " if message['role'] == 'user' else "
            + _jinja_str(sep2) + ") -}}{%- endif -%}\n"
            "{%- endif -%}\n{%- endfor -%}\n"
        )
    else:
        raise HfLayoutError(
            f"no chat template written for separator style {conv.sep_style.name}: "
            "export with a TWO-style (vicuna_v1, llava_v1) or PLAIN conversation mode"
        )
    return header + body


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def conversation(conv_mode: str) -> Conversation:
    """The registered template `conv_mode` (HfLayoutError listing the names otherwise)."""
    if conv_mode not in conv_templates:
        raise HfLayoutError(
            f"--conv-mode {conv_mode!r} is not a template; choose from {sorted(conv_templates)}"
        )
    return conv_templates[conv_mode]


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: the folder, the image token id, the vocabulary before and after."""

    out: Path
    image_token_index: int
    vocab_before: int
    vocab_after: int
    image_aspect_ratio: str


def check_exportable(config) -> tuple[TextFamily, str]:
    """The text family and select strategy of our model config; HfLayoutError naming what llava-hf lacks."""
    model_type = getattr(config, "model_type", None)
    if model_type not in OUR_MODEL_TYPES:
        raise HfLayoutError(
            f"model_type {model_type!r} has no llava-hf export (known: {sorted(OUR_MODEL_TYPES)})"
        )
    projector = getattr(config, "mm_projector_type", "linear")
    if projector != HF_PROJECTOR_TYPE:
        raise HfLayoutError(
            f"mm_projector_type {projector!r} has no llava-hf counterpart: LlavaMultiModalProjector is "
            f"{HF_PROJECTOR_TYPE} (linear_1, GELU, linear_2)"
        )
    feature = getattr(config, "mm_vision_select_feature", "patch")
    if feature not in _SELECT_STRATEGY:
        raise HfLayoutError(f"mm_vision_select_feature {feature!r} has no llava-hf strategy")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if getattr(config, flag, False):
            raise HfLayoutError(f"{flag}=True: llava-hf has no image start/end or patch tokens")
    merge = getattr(config, "mm_patch_merge_type", "flat")
    if merge != "flat":
        raise HfLayoutError(f"mm_patch_merge_type {merge!r}: llava-hf (LLaVA-1.5) is 'flat'")
    return TEXT_FAMILIES[OUR_MODEL_TYPES[model_type]], _SELECT_STRATEGY[feature]


def _resized_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` (V, D) grown to (rows, D); the new rows are the mean of the old ones (see docs/export.md)."""
    if rows == weight.shape[0]:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)], dim=0)


def add_image_token(tokenizer) -> int:
    """Add `<image>` as a special token with the normalizer that keeps our ids (module docstring).

    Returns its id. The tokenizer must be backed by `tokenizers`; its existing normalizer runs after ours.
    """
    from tokenizers import AddedToken, Regex, normalizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise HfLayoutError(f"tokenizer {type(tokenizer).__name__} is not backed by `tokenizers`")
    # normalized=True: the normalizer sees `<image>` in the text and adds the space after it
    token = AddedToken(DEFAULT_IMAGE_TOKEN, normalized=True, special=True)
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [token]}, replace_extra_special_tokens=False
        )
    # an `<image>` added with normalized=False (transformers' conversion script) keeps its id, gets the flag
    backend.add_special_tokens([token])
    mine = normalizers.Replace(Regex(_IMAGE_SPACE_PATTERN), f"{DEFAULT_IMAGE_TOKEN} ")
    existing = backend.normalizer
    if existing is None or json.loads(existing.__getstate__()) == json.loads(mine.__getstate__()):
        backend.normalizer = mine
    else:
        backend.normalizer = normalizers.Sequence([mine, existing])
    return tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)


def hf_state_dict(model, vocab_after: int) -> dict[str, torch.Tensor]:
    """Our loaded LlavaLlamaForCausalLM (tower loaded) → transformers' in-memory llava-hf state dict, with
    the embedding and LM head grown to (vocab_after, D)."""
    family = TEXT_FAMILIES[OUR_MODEL_TYPES[model.config.model_type]]
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        if key.startswith(_OURS_TOWER):
            continue  # taken from the loaded tower module below
        if key.startswith(_OURS_PROJECTOR):
            rest = key.removeprefix(_OURS_PROJECTOR)
            prefix = next((p for p in _PROJECTOR_KEYS if rest.startswith(p)), None)
            if prefix is None:
                raise HfLayoutError(f"projector key {key} has no llava-hf name")
            out[HF_PREFIX_PROJECTOR + _PROJECTOR_KEYS[prefix] + rest.removeprefix(prefix)] = value
        elif key.startswith("lm_head."):
            out[key] = _resized_rows(value, vocab_after)
        elif key.startswith(family.ours_prefix):
            rest = key.removeprefix(family.ours_prefix)
            is_embedding = rest == "embed_tokens.weight"
            out[HF_PREFIX_TEXT + rest] = _resized_rows(value, vocab_after) if is_embedding else value
        else:
            raise HfLayoutError(f"weight {key} has no place in the llava-hf layout")
    tower = model.get_vision_tower().vision_tower
    for key, value in tower.state_dict().items():
        out[HF_PREFIX_TOWER + key] = value.detach()
    return out


def _text_config_dict(config, family: TextFamily, vocab_size: int) -> dict:
    """The LLM's own config fields from our config (the mm_* and 4.x RoPE mirror keys left out)."""
    import dataclasses

    probe = family.config_class()
    fields = {f.name for f in dataclasses.fields(probe)} - {"architectures", "transformers_version"}
    text = {k: v for k, v in config.to_dict().items() if k in fields}
    text.update(vocab_size=vocab_size, architectures=[family.architecture])
    return text


def hf_image_processor(tower_processor, pad: bool):
    """A `LlavaImageProcessor` with the tower processor's settings and `do_pad` for `pad` checkpoints."""
    from transformers import LlavaImageProcessor

    settings = {
        k: v for k, v in tower_processor.to_dict().items()
        if k not in ("image_processor_type", "processor_class", "_processor_class")
    }
    return LlavaImageProcessor(**settings, do_pad=pad)


def export_model(model, tokenizer, out: str | os.PathLike, conv_mode: str = "vicuna_v1") -> ExportSummary:
    """Write our loaded LLaVA model (its tower loaded) to `out` in the llava-hf layout.

    `conv_mode` names the conversation template the chat template renders. The exported tokenizer is
    checked to give our ids for a two-turn image prompt before anything is written.
    """
    from transformers import LlavaConfig as HfLlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    config = model.config
    family, strategy = check_exportable(config)
    conv = conversation(conv_mode)
    chat_template = chat_template_for(conv)
    tower = model.get_vision_tower()
    vision_family = VISION_FAMILIES.get(tower.config.model_type)
    if vision_family is None:
        raise HfLayoutError(f"vision tower type {tower.config.model_type!r} has no llava-hf export")

    vocab_before = model.get_input_embeddings().weight.shape[0]
    image_token_index = add_image_token(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # what LLaVA's training sets for Llama tokenizers
    needed = len(tokenizer)
    # rows already there are kept (a re-export changes nothing); otherwise round up like the conversion script
    vocab_after = vocab_before
    if vocab_before < needed:
        vocab_after = VOCAB_MULTIPLE * math.ceil(needed / VOCAB_MULTIPLE)
    pad = getattr(config, "image_aspect_ratio", None) == "pad"
    processor = LlavaProcessor(
        image_processor=hf_image_processor(tower.image_processor, pad),
        tokenizer=tokenizer,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=vision_family.num_additional_image_tokens,
        chat_template=chat_template,
    )
    check_prompt_ids(processor, conv, tower.num_patches + (strategy == "full"))
    tokenizer.chat_template = chat_template  # engines that read the template from the tokenizer

    text_config = _text_config_dict(config, family, vocab_after)
    if tokenizer.pad_token_id is not None:
        text_config["pad_token_id"] = tokenizer.pad_token_id
    hf_config = HfLlavaConfig(
        # where the tower was read from and its architectures are provenance, not a llava-hf field
        vision_config={
            k: v for k, v in tower.config.to_dict().items() if k not in ("_name_or_path", "architectures")
        },
        text_config=text_config,
        image_token_index=image_token_index,
        image_seq_length=tower.num_patches + (strategy == "full"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=int(config.mm_vision_select_layer),
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )
    hf_config.architectures = ["LlavaForConditionalGeneration"]
    hf_config.dtype = model.dtype
    weights = hf_state_dict(model, vocab_after)
    with torch.device("meta"):
        hf_model = LlavaForConditionalGeneration(hf_config)
    # strict: the key layout is exactly the one transformers builds today (a rename would fail here)
    hf_model.load_state_dict(weights, strict=True, assign=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = file_state_dict(weights, vision_family.file_prefix)
    hf_model.save_pretrained(out, state_dict=files, save_original_format=False)
    processor.save_pretrained(out)
    # preprocessor_config.json too: transformers 4.x (and engines pinned to it) read the image processor there
    processor.image_processor.save_pretrained(out)
    _finish_tokenizer_config(out, chat_template)
    return ExportSummary(out, image_token_index, vocab_before, vocab_after, "pad" if pad else "square")


def export_checkpoint(
    model_path: str, model_base: str | None, out: str | os.PathLike, conv_mode: str = "vicuna_v1",
    dtype: torch.dtype | None = None, revision: str | None = None,
) -> ExportSummary:
    """Load any of our checkpoint kinds (full; LoRA or projector + `model_base`) and export it to `out`.

    `model_path` / `model_base` may be hub ids (`revision` applies to `model_path`). `dtype`: the
    weights' dtype in the export; default the checkpoint's recorded dtype (float32 if none). Everything
    checkable without the model (paths, kind, base, config, template) is checked before it loads.
    """
    from llava.paths import resolve_model_path

    from .builder import find_base, load_pretrained_model
    from .checkpoints import CheckpointKind, detect_checkpoint_kind, read_config_dict

    chat_template_for(conversation(conv_mode))
    model_path = resolve_model_path(str(model_path), revision, "--model-path")
    if model_base:
        model_base = resolve_model_path(str(model_base), None, "--model-base")
    kind = detect_checkpoint_kind(model_path)
    recorded = read_config_dict(model_path)
    if not recorded.get("mm_vision_tower"):
        raise HfLayoutError(
            f"{Path(model_path) / 'config.json'} has no mm_vision_tower: not a LLaVA checkpoint"
        )
    check_exportable(SimpleNamespace(**recorded))
    if kind is not CheckpointKind.FULL:
        model_base = find_base(model_base, model_path, kind)
    if dtype is None:
        dtype = getattr(torch, recorded.get("dtype") or recorded.get("torch_dtype") or "float32")
    tokenizer, model, _, _ = load_pretrained_model(model_path, model_base, None, device="cpu", dtype=dtype)
    return export_model(model, tokenizer, out, conv_mode)


def file_state_dict(weights: dict[str, torch.Tensor], tower_prefix: str) -> dict[str, torch.Tensor]:
    """In-memory llava-hf keys → the keys written to the files (`FILE_PREFIXES`, the tower's inner prefix)."""
    out = {}
    for key, value in weights.items():
        memory, file = next((m, f) for m, f in FILE_PREFIXES if key.startswith(m))
        inner = tower_prefix if memory == HF_PREFIX_TOWER else ""
        out[file + inner + key.removeprefix(memory)] = value
    return out


def _finish_tokenizer_config(out: Path, chat_template: str) -> None:
    """Make `AutoTokenizer` load tokenizer.json as written (transformers 5's LlamaTokenizer rebuilds its
    normalizer and would drop the `<image>` rule), pad on the left (batched generation; training's
    padding side is no part of an export) and carry the chat template (transformers 4.x reads it only
    here); drop load-time keys so the file is reproducible."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["padding_side"] = "left"
    config["chat_template"] = chat_template
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def check_prompt_ids(processor, conv: Conversation, n_image_tokens: int) -> None:
    """The processor's ids for a two-turn image prompt equal ours (`tokenizer_image_token`, image expanded).

    Raises HfLayoutError showing both when they differ (a tokenizer this exporter does not handle).
    """
    from llava.mm_utils import tokenizer_image_token

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A box."}]},
        {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ours = [
        tok for i in tokenizer_image_token(prompt, processor.tokenizer)
        for tok in ([processor.image_token_id] * n_image_tokens if i == IMAGE_TOKEN_INDEX else [i])
    ]
    expanded = prompt.replace(DEFAULT_IMAGE_TOKEN, DEFAULT_IMAGE_TOKEN * n_image_tokens)
    theirs = processor.tokenizer(expanded).input_ids
    if ours != theirs:
        pairs = enumerate(zip(ours, theirs, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(ours), len(theirs)))
        window = slice(max(at - 3, 0), at + 5)
        raise HfLayoutError(
            f"the exported tokenizer does not tokenise the {conv.version!r} prompt as LLaVA does: from "
            f"token {at} it gives {theirs[window]}, LLaVA {ours[window]}"
        )


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------

TOWER_FOLDER = "vision_tower"
LLM_FOLDER = "llm"


def read_hf_config(folder: str | os.PathLike):
    """The llava-hf config of `folder`, checked for what our layout can hold (HfLayoutError otherwise)."""
    from transformers import LlavaConfig as HfLlavaConfig

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise HfLayoutError(f"{path} is missing: not a llava-hf model folder")
    raw = json.loads(path.read_text())
    if raw.get("model_type") != "llava":
        raise HfLayoutError(f"{path}: model_type is {raw.get('model_type')!r}, a llava-hf folder has 'llava'")
    config = HfLlavaConfig.from_pretrained(str(folder))
    problems = []
    if config.text_config.model_type not in TEXT_FAMILIES:
        problems.append(
            f"text_config.model_type {config.text_config.model_type!r} (known: {sorted(TEXT_FAMILIES)})"
        )
    if config.vision_config.model_type not in VISION_FAMILIES:
        problems.append(f"vision_config.model_type {config.vision_config.model_type!r}")
    if config.projector_hidden_act != "gelu":
        problems.append(f"projector_hidden_act {config.projector_hidden_act!r} (ours is exact GELU)")
    if not getattr(config, "multimodal_projector_bias", True):
        problems.append("multimodal_projector_bias false (our projector has biases)")
    if not isinstance(config.vision_feature_layer, int):
        problems.append(f"vision_feature_layer {config.vision_feature_layer!r} (one layer only)")
    if config.vision_feature_select_strategy not in _SELECT_STRATEGY.values():
        problems.append(f"vision_feature_select_strategy {config.vision_feature_select_strategy!r}")
    if problems:
        raise HfLayoutError(f"{path} cannot be imported: " + "; ".join(problems))
    return config


def _our_config(hf_config, tokenizer, tower_path: Path, pad: bool):
    from .language_model.llava_llama import LlavaConfig

    strategy_to_feature = {v: k for k, v in _SELECT_STRATEGY.items()}
    text = hf_config.text_config.to_dict()
    for key in ("architectures", "model_type", "transformers_version", "_name_or_path"):
        text.pop(key, None)
    max_length = tokenizer.model_max_length
    if not isinstance(max_length, int) or max_length > 10**8:  # the "no limit" sentinel
        max_length = int(hf_config.text_config.max_position_embeddings)
    config = LlavaConfig(
        **text,
        mm_vision_tower=str(tower_path.resolve()),
        mm_hidden_size=hf_config.vision_config.hidden_size,
        mm_projector_type=HF_PROJECTOR_TYPE,
        mm_vision_select_layer=hf_config.vision_feature_layer,
        mm_vision_select_feature=strategy_to_feature[hf_config.vision_feature_select_strategy],
        mm_patch_merge_type="flat",
        image_aspect_ratio="pad" if pad else "square",
        use_mm_proj=True,
        tokenizer_padding_side="right",  # LLaVA's training padding; the export's "left" is for generation
        tokenizer_model_max_length=max_length,
        tune_mm_mlp_adapter=False,
        freeze_mm_mlp_adapter=False,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        mm_projector_lr=None,
    )
    config.architectures = ["LlavaLlamaForCausalLM"]
    return config


def _tower_processor(hf_processor):
    """Our tower's CLIPImageProcessor: the llava-hf image processor's settings without `do_pad`."""
    from transformers import CLIPImageProcessor

    settings = hf_processor.image_processor.to_dict()
    pad = bool(settings.get("do_pad", False))
    keep = {k: v for k, v in settings.items()
            if k not in ("do_pad", "pad_size", "image_processor_type", "processor_class", "_processor_class")}
    return CLIPImageProcessor(**keep), pad


def import_hf(folder: str | os.PathLike, out: str | os.PathLike, projector_only: bool = False,
              dtype: torch.dtype | None = None) -> Path:
    """Turn llava-hf `folder` into our layout under `out` (see module docstring); returns `out`.

    Full: `out/` is a full checkpoint, its tower in `out/vision_tower/`. Projector only: `out/` holds
    `mm_projector.bin` + config.json (stage-1 layout), its base LLM in `out/llm/`, the tower in
    `out/vision_tower/`. Weights keep the folder's dtype unless `dtype` is given.
    """
    from transformers import AutoProcessor, CLIPVisionModel, LlavaForConditionalGeneration

    from .checkpoints import atomic_torch_save, write_tokenizer
    from .language_model.llava_llama import LlavaLlamaForCausalLM

    folder, out = Path(folder), Path(out)
    hf_config = read_hf_config(folder)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise HfLayoutError(f"{folder} holds no model weights (*.safetensors / pytorch_model*.bin)")
    processor = AutoProcessor.from_pretrained(str(folder))
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    family = TEXT_FAMILIES[hf_config.text_config.model_type]
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=dtype or "auto")
    state = {k: v.detach() for k, v in hf_model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)

    tower_dir = out / TOWER_FOLDER
    tower = CLIPVisionModel(hf_config.vision_config).to(hf_model.dtype)
    tower.load_state_dict(_with_prefix_removed(state, HF_PREFIX_TOWER), strict=True)
    tower.save_pretrained(tower_dir)
    tower_processor, pad = _tower_processor(processor)
    tower_processor.save_pretrained(tower_dir)

    config = _our_config(hf_config, tokenizer, tower_dir, pad)
    projector = {
        _OURS_PROJECTOR + ours + key.removeprefix(HF_PREFIX_PROJECTOR + theirs): value
        for key, value in state.items()
        for ours, theirs in _PROJECTOR_KEYS.items()
        if key.startswith(HF_PREFIX_PROJECTOR + theirs)
    }
    text = {family.ours_prefix + k: v for k, v in _with_prefix_removed(state, HF_PREFIX_TEXT).items()}
    text["lm_head.weight"] = state["lm_head.weight"]
    config.dtype = hf_model.dtype
    if projector_only:
        from transformers import AutoModelForCausalLM

        llm_dir = out / LLM_FOLDER
        llm_config = family.config_class(
            **{**hf_config.text_config.to_dict(), "architectures": [family.architecture]}
        )
        with torch.device("meta"):
            llm = AutoModelForCausalLM.from_config(llm_config)
        llm.load_state_dict(text, strict=True, assign=True)
        llm.save_pretrained(llm_dir)
        write_tokenizer(tokenizer, llm_dir)
        config.save_pretrained(out)
        # the base the loader uses when no model_base is given (transformers 5 does not write this key)
        config_path = out / "config.json"
        written = json.loads(config_path.read_text())
        written["_name_or_path"] = str(llm_dir.resolve())
        config_path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
        atomic_torch_save(projector, out / "mm_projector.bin")
    else:
        with torch.device("meta"):
            model = LlavaLlamaForCausalLM(config)
        model.load_state_dict({**text, **projector}, strict=True, assign=True)
        model.save_pretrained(out)
        write_tokenizer(tokenizer, out)
    return out


def _with_prefix_removed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
