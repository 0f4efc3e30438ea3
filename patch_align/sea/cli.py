"""The `patch-align sea ...` subcommands: argument parsing and printing only.

Bad input (a missing or unreadable file, a bad value, a vocabulary left empty by --min-count) is
a `CommandError`: `patch-align sea COMMAND: error: ...`, exit 2.
"""
from __future__ import annotations

import argparse
import logging

from patch_align.cli import CommandError, output_folder, set_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `sea` group and its subcommands on the top-level `subparsers`."""
    sea = subparsers.add_parser("sea", help="SEA token labels: vocabulary and offline CLIP labelling")
    commands = sea.add_subparsers(dest="sea_command", required=True, metavar="COMMAND")

    vocab = commands.add_parser(
        "vocab", help="nouns and attribute words of LLaVA captions, one per line",
        description="Count the nouns and attribute words of the assistant turns of a LLaVA data file "
                    "(rule-based tagger, docs/sea.md) and write the frequent ones, most frequent first.")
    vocab.add_argument("--data", required=True, help="LLaVA data file (JSON list with 'conversations')")
    vocab.add_argument("--min-count", type=int, default=5, help="keep words seen at least this often")
    vocab.add_argument("--max-words", type=int, default=None, help="keep at most this many caption words")
    vocab.add_argument("--extra-words", default=None,
                       help="text file, one word per line, always added after the caption words")
    vocab.add_argument("--out", required=True, help="vocabulary file to write")
    set_command(vocab, run_vocab)

    label = commands.add_parser(
        "label", help="top-n CLIP words per image patch, stored as sharded safetensors",
        description="Label every patch of every image of a LLaVA data file with its best vocabulary "
                    "words by CLIP similarity. Resumable (finished shards are skipped) and shardable "
                    "(--num-shards K --shard-index i per process).")
    label.add_argument("--clip", required=True,
                       help="CLIPModel folder with its tokenizer and image processor")
    label.add_argument("--vocab", required=True, help="vocabulary file from `patch-align sea vocab`")
    label.add_argument("--data", required=True, help="LLaVA data file (records with 'id' and 'image')")
    label.add_argument("--image-folder", required=True, help="folder the 'image' paths are relative to")
    label.add_argument("--out", required=True, help="label folder (created; reused when resuming)")
    label.add_argument("--top-n", type=int, default=10, help="words kept per patch (default 10)")
    label.add_argument("--sign", choices=("negated", "plain"), default="negated",
                       help="score = -cosine (the paper's convention, default) or +cosine")
    label.add_argument("--image-aspect-ratio", choices=("pad", "square"), default="square",
                       help="the training geometry: training's --image_aspect_ratio (default square, "
                            "as LLaVA-1.5 stage 1)")
    label.add_argument("--prompt-template", default="a photo of a {}.",
                       help="text prompt per word; '{}' is replaced by the word")
    label.add_argument("--batch-size", type=int, default=32, help="images per CLIP forward")
    label.add_argument("--shard-size", type=int, default=1000, help="images per output shard")
    label.add_argument("--num-shards", type=int, default=1, help="number of parallel processes")
    label.add_argument("--shard-index", type=int, default=0, help="this process's index in [0, K)")
    label.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    set_command(label, run_label)


def run_vocab(args: argparse.Namespace) -> int:
    from patch_align.sea.vocab import (
        build_vocabulary,
        captions_from_llava_json,
        count_candidate_words,
        read_word_list,
        write_word_list,
    )

    try:
        counts = count_candidate_words(captions_from_llava_json(args.data))
        extra = read_word_list(args.extra_words) if args.extra_words else []
        words = build_vocabulary(counts, min_count=args.min_count, max_words=args.max_words,
                                 extra_words=extra)
        if not words:
            raise CommandError(f"no word of {args.data} reaches --min-count {args.min_count}")
        write_word_list(words, args.out)
    except (OSError, ValueError) as err:
        raise CommandError(err) from err
    print(f"{args.out}: {len(words)} words ({len(counts)} distinct candidates, {len(extra)} extra)")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from patch_align.sea.labeling import label_dataset

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = label_dataset(
            args.clip, args.vocab, args.data, args.image_folder, output_folder(args.out), top_n=args.top_n,
            sign=args.sign, image_aspect_ratio=args.image_aspect_ratio, prompt_template=args.prompt_template,
            batch_size=args.batch_size, shard_size=args.shard_size, num_shards=args.num_shards,
            shard_index=args.shard_index, device=args.device)
    except (OSError, ValueError) as err:
        raise CommandError(err) from err
    print(f"{args.out}: {summary.shards_written} shards written, {summary.shards_already_done} already done, "
          f"{summary.images_labelled} images labelled, {summary.images_skipped} skipped")
    print("index.json written: labels complete" if summary.index_written
          else "other shards still missing: index.json not written yet")
    return 0
