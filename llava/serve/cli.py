"""Terminal chat with a LLaVA checkpoint, upstream's `python -m llava.serve.cli`.

    python -m llava.serve.cli --model-path CKPT [--image-file a.png] [--device cpu]

Reads one user turn per stdin line until EOF or an empty line, and streams each answer
to stdout as it is generated. The image (if any) goes into the first turn and stays in
the conversation for all later turns. The image file and the conversation mode are checked
before the model loads (exit status 2 and a message naming the problem).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from PIL import Image
from transformers import TextStreamer

from llava.eval.generation import GenerationSettings, decode_answers, encode_images, generate_token_ids
from llava.eval.run_llava import (
    checkpoint_conv_mode,
    image_query,
    load_images,
    new_chat,
    resolve_device,
    stop_string,
)
from llava.mm_utils import get_model_name_from_path, tokenizer_image_token
from llava.model.builder import load_pretrained_model


def chat(
    model,
    tokenizer,
    image_processor,
    conv_mode: str,
    images: Sequence[Image.Image],
    settings: GenerationSettings,
    *,
    input_stream: TextIO,
    debug: bool = False,
) -> list[str]:
    """Run the chat loop over the lines of `input_stream`; returns the answers in turn order.

    `images` (RGB, as `load_images` opens them; empty for a text-only chat) go into the first turn.
    """
    conv = new_chat(conv_mode)
    pixel_values = encode_images(images, image_processor, getattr(model.config, "image_aspect_ratio", None))
    image_sizes = [image.size for image in images]
    image_pending = bool(images)
    use_start_end = getattr(model.config, "mm_use_im_start_end", False)
    answers = []
    while True:
        print(f"{conv.roles[0]}: ", end="", flush=True)
        line = input_stream.readline()
        user_text = line.strip()
        if not user_text:
            print("exit...")
            break
        print(f"{conv.roles[1]}: ", end="", flush=True)
        if image_pending:
            user_text = image_query(user_text, len(images), use_start_end)
            image_pending = False
        conv.append_message(conv.roles[0], user_text)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        [new_ids] = generate_token_ids(
            model, tokenizer, [input_ids], [pixel_values], [image_sizes], settings, streamer=streamer
        )
        [answer] = decode_answers(tokenizer, [new_ids], settings.stop_strings)
        conv.messages[-1][-1] = answer
        answers.append(answer)
        if debug:
            print("\n", {"prompt": prompt, "outputs": answer}, "\n")
    return answers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-file", type=str, default=None, help="leave out for a text-only chat")
    parser.add_argument("--device", type=str, default="cuda",
                        help="cuda, cuda:N, cpu or auto; cuda falls back to cpu when CUDA is absent")
    parser.add_argument("--conv-mode", type=str, default=None,
                        help="chat template; inferred from the model name when left out")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--debug", action="store_true", help="print each prompt and answer after the turn")
    return parser


def main(argv: Sequence[str] | None = None, input_stream: TextIO | None = None) -> list[str]:
    """Parse flags, check the image and conversation mode (exit 2 naming the problem), then load the
    model and chat over `input_stream` (default: stdin)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    model_name = get_model_name_from_path(args.model_path)
    try:
        conv_mode = checkpoint_conv_mode(args.model_path, args.conv_mode)
        images = load_images([args.image_file]) if args.image_file else []
    except (OSError, ValueError) as error:
        parser.error(str(error))
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path,
        args.model_base,
        model_name,
        args.load_8bit,
        args.load_4bit,
        device=resolve_device(args.device),
    )
    model.eval()
    settings = GenerationSettings(
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        stop_strings=(stop_string(new_chat(conv_mode)),),
    )
    return chat(
        model,
        tokenizer,
        image_processor,
        conv_mode,
        images,
        settings,
        input_stream=input_stream or sys.stdin,
        debug=args.debug,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
