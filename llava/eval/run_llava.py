"""Answer one query about zero or more images, upstream's `python -m llava.eval.run_llava`.

    python -m llava.eval.run_llava --model-path CKPT --image-file a.png[,b.png] --query "What is this?"

The image files, the conversation mode and the query's `<image-placeholder>` count are checked
before the model loads; a problem exits with status 2 and a message naming the file or flag.

Also home of the prompt helpers the other inference entry points share: the conversation
mode inferred from the model name, the image tokens put in front of a query, the stop
string of a template, and the device choice with CPU fallback.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IMAGE_PLACEHOLDER,
)
from llava.conversation import Conversation, SeparatorStyle, conv_templates
from llava.eval.generation import generate_batch
from llava.mm_utils import get_model_name_from_path
from llava.model.builder import load_pretrained_model
from llava.model.checkpoints import TRAINED_TEMPLATE_KEY, read_config_dict
from llava.paths import resolve_model_path

logger = logging.getLogger(__name__)


def conv_mode_for_model(model_name: str) -> str:
    """The chat template upstream picks for a model name (first matching rule wins)."""
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "v1" in name:
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"


def trained_conv_mode(model_path: str | Path) -> str | None:
    """The template a checkpoint folder was trained with (config.json's `mm_conv_template`), or None
    for a folder without one (upstream's checkpoints, a hub id not fetched yet)."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    try:
        recorded = read_config_dict(model_path).get(TRAINED_TEMPLATE_KEY)
    except ValueError as error:  # json.JSONDecodeError
        raise ValueError(f"{config} is not readable JSON ({error})") from error
    if recorded is not None and recorded not in conv_templates:
        raise ValueError(f"{config} records {TRAINED_TEMPLATE_KEY}={recorded!r}, which is not a template; "
                         f"pass --conv-mode (one of {sorted(conv_templates)})")
    return recorded


def choose_conv_mode(model_name: str, requested: str | None, trained: str | None = None) -> str:
    """`requested` if given (warning when it differs from the inferred one), else the inferred mode: the
    template the checkpoint records it was trained with (`trained`), else upstream's rule on the name."""
    inferred = trained or conv_mode_for_model(model_name)
    source = "the checkpoint's config.json" if trained else model_name
    if requested is None:
        return inferred
    if requested not in conv_templates:
        raise ValueError(f"--conv-mode {requested!r} is not a template; choose from {sorted(conv_templates)}")
    if requested != inferred:
        logger.warning("conversation mode inferred from %s is %s; using --conv-mode %s", source, inferred,
                       requested)
    return requested


def checkpoint_conv_mode(model_path: str, requested: str | None) -> str:
    """`choose_conv_mode` for a checkpoint given as a folder or hub id: the template its config.json
    records, else upstream's rule on its name, unless `requested` names one. Raises as they do."""
    trained = trained_conv_mode(resolve_model_path(model_path, what="--model-path"))
    return choose_conv_mode(get_model_name_from_path(model_path), requested, trained)


def image_token_text(mm_use_im_start_end: bool) -> str:
    """What one image is written as in a prompt: `<image>`, or wrapped in start/end tokens."""
    if mm_use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    return DEFAULT_IMAGE_TOKEN


def check_image_placeholders(query: str, n_images: int) -> None:
    """A query with `<image-placeholder>`s must have one per image (none: images go in front)."""
    n_placeholders = query.count(IMAGE_PLACEHOLDER)
    if n_placeholders and n_placeholders != n_images:
        raise ValueError(
            f"the query has {n_placeholders} {IMAGE_PLACEHOLDER} but {n_images} image(s) were given"
        )


def image_query(query: str, n_images: int, mm_use_im_start_end: bool = False) -> str:
    """The user turn for `query` about `n_images` images.

    Each `<image-placeholder>` in the query becomes an image token (their number must equal
    `n_images`); without placeholders one image token per image goes in front, then a newline.
    """
    token = image_token_text(mm_use_im_start_end)
    check_image_placeholders(query, n_images)
    if IMAGE_PLACEHOLDER in query:
        return query.replace(IMAGE_PLACEHOLDER, token)
    if n_images == 0:
        return query
    return token * n_images + "\n" + query


def new_chat(conv_mode: str) -> Conversation:
    """A fresh copy of the named template (never the shared registry object)."""
    if conv_mode not in conv_templates:
        raise ValueError(f"unknown conversation mode {conv_mode!r}; choose from {sorted(conv_templates)}")
    return conv_templates[conv_mode].copy()


def single_turn_prompt(conv_mode: str, user_text: str) -> str:
    """The generation prompt for one user turn in the template `conv_mode`."""
    conv = new_chat(conv_mode)
    conv.append_message(conv.roles[0], user_text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def stop_string(conv: Conversation) -> str:
    """Text that ends an assistant turn in this template: TWO- and LLAMA_2-style templates end it on
    `sep2` (`</s>`; a LLAMA_2 `sep` opens the next turn, `<s>`, or is empty for mistral_instruct)."""
    if conv.sep_style in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2) and conv.sep2:
        return conv.sep2
    return conv.sep


def resolve_device(device: str) -> str:
    """`auto` → cuda when available else cpu; a cuda device without CUDA falls back to cpu (warned)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("--device %s requested but CUDA is not available: running on cpu", device)
        return "cpu"
    return device


def load_images(image_files: Sequence[str]) -> list[Image.Image]:
    """Open local image files as RGB; a missing or unreadable file or an URL is an error naming it."""
    images = []
    for image_file in image_files:
        if re.match(r"^[a-z]+://", image_file):
            raise ValueError(f"{image_file}: image URLs are not supported; download it and pass the path")
        path = Path(image_file)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {image_file}")
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, SyntaxError) as error:  # PIL raises these for a file it cannot decode
            raise ValueError(f"image file {image_file} is not a readable image ({error})") from error
    return images


def query_inputs(args: argparse.Namespace) -> tuple[list[Image.Image], str]:
    """The query's images and conversation mode, checked without a model (ValueError/OSError naming
    the bad file or flag): cheap checks come before the model load."""
    image_files = [f for f in args.image_file.split(args.sep) if f] if args.image_file else []
    images = load_images(image_files)
    check_image_placeholders(args.query, len(images))
    check_model_paths(args)
    return images, checkpoint_conv_mode(args.model_path, args.conv_mode)


def check_model_paths(args: argparse.Namespace) -> None:
    """`--model-path` / `--model-base` are local folders or hub ids this machine can get (fetched into the
    hub cache now, so the load finds them); `llava.paths.HubModelError` / FileNotFoundError otherwise."""
    resolve_model_path(args.model_path, None, "--model-path")
    if args.model_base:
        resolve_model_path(args.model_base, None, "--model-base")


def eval_model(args: argparse.Namespace, inputs: tuple[list[Image.Image], str] | None = None) -> str:
    """Answer `args.query` about `args.image_file`, print and return the answer.

    `inputs`: what `query_inputs(args)` returned (computed here when None), so the model loads last.
    """
    images, conv_mode = inputs if inputs is not None else query_inputs(args)
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, device=resolve_device(args.device)
    )
    model.eval()
    user_text = image_query(args.query, len(images), getattr(model.config, "mm_use_im_start_end", False))
    prompt = single_turn_prompt(conv_mode, user_text)
    [answer] = generate_batch(
        model,
        tokenizer,
        [prompt],
        [images or None],
        image_processor,
        temperature=args.temperature,
        top_p=args.top_p,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        stop_strings=[stop_string(new_chat(conv_mode))],
        batch_size=1,
    )
    print(answer)
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-file", type=str, default=None,
                        help="image path, or several joined by --sep; leave out for a text-only query")
    parser.add_argument("--query", type=str, required=True)
    parser.add_argument("--conv-mode", type=str, default=None,
                        help="chat template; inferred from the model name when left out")
    parser.add_argument("--sep", type=str, default=",")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda[:N]")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    """Parse flags, check images and conversation mode (exit 2 naming the problem), then answer."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        inputs = query_inputs(args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    return eval_model(args, inputs)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
