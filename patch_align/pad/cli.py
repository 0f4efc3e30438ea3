"""The `patch-align pad ...` subcommands: argument parsing and printing only.

Bad input (a missing or unreadable file, a bad value) is a `CommandError`: `patch-align pad
COMMAND: error: ...`, exit 2. Exit 1 is an answer: `validate` found bad records (or the file is
not PAD), `merge` found the run incomplete or its shards broken.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from patch_align.cli import CommandError, output_folder, set_command
from patch_align.pad.schema import PadFormatError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `pad` group and its subcommands on the top-level `subparsers`."""
    pad = subparsers.add_parser("pad", help="Patch-Aligned Dataset files: make, merge, check, show")
    commands = pad.add_subparsers(dest="pad_command", required=True, metavar="COMMAND")
    validate = commands.add_parser(
        "validate", help="name every bad record of a PAD file; exit 1 if any",
        description="Check a PAD file (JSON or JSONL) against its images. Exit 0 when clean, "
                    "1 when any record is bad, 2 on a usage error.")
    validate.add_argument("file", help="PAD file (.json array or .jsonl)")
    validate.add_argument("--image-folder", required=True,
                          help="folder the records' 'image' paths are relative to")
    validate.add_argument("--tokenizer", default=None,
                          help="tokenizer folder: also check that every label tokenises to something")
    validate.add_argument("--max-print", type=int, default=None, metavar="N",
                          help="print at most N problems (default: all); counts always cover all")
    set_command(validate, run_validate)
    _add_generate(commands)
    merge = commands.add_parser(
        "merge", help="join a generation run's shards in data order",
        description="Join the shard-*.jsonl files of a generation run into one PAD file in the order of the "
                    "data JSON, and check that every image is there exactly once or listed as failed. "
                    "Exit 0 when complete, 1 otherwise.")
    merge.add_argument("out_dir", help="the --out folder of `patch-align pad generate`")
    merge.add_argument("--out", required=True,
                       help="merged PAD file (JSONL); failures go to <stem>.failed.jsonl")
    merge.add_argument("--data", default=None, help="data JSON (default: the one in the shard manifests)")
    set_command(merge, run_merge)
    stats = commands.add_parser("stats", help="images, regions, labels and mask areas of a PAD file")
    stats.add_argument("file", help="PAD file (.json array or .jsonl)")
    stats.add_argument("--top", type=int, default=20, metavar="K", help="labels shown at head and tail")
    set_command(stats, run_stats)
    show = commands.add_parser("show", help="PNG overlays of masks, boxes and labels")
    show.add_argument("file", help="PAD file (.json array or .jsonl)")
    show.add_argument("--image-folder", required=True,
                      help="folder the records' 'image' paths are relative to")
    show.add_argument("--ids", nargs="+", required=True, help="record ids to draw")
    show.add_argument("--out", required=True, help="folder for <id>.png")
    set_command(show, run_show)


def _add_generate(commands: argparse._SubParsersAction) -> None:
    from patch_align.pad.generate.options import TAGGERS, GenerateOptions

    d = GenerateOptions.__dataclass_fields__
    generate = commands.add_parser(
        "generate", help="make PAD records: tag -> detect -> segment (sharded, resumable)",
        description="Tag each image, find boxes for the tags with a zero-shot detector, segment each box "
                    "with SAM, and write PAD records. Under torchrun each rank writes its own shard; "
                    "rerunning with the same arguments resumes where a run stopped.")
    generate.add_argument("--data", required=True, help="LLaVA data JSON (e.g. blip_laion_cc_sbu_558k.json)")
    generate.add_argument("--image-folder", required=True,
                          help="folder the samples' 'image' paths are relative to")
    generate.add_argument("--out", required=True, help="output folder for shards and manifests")
    generate.add_argument("--tagger", choices=TAGGERS, default=d["tagger"].default,
                          help="captions: caption noun phrases; file: --tags-file; clip: CLIP zero-shot")
    generate.add_argument("--tags-file", default=None,
                          help='JSONL of {"id": ..., "tags": [...]} (--tagger file)')
    generate.add_argument("--clip-model", default=None, help="CLIP model path or id (--tagger clip)")
    generate.add_argument("--vocabulary", default=None, help="tag vocabulary, one a line (--tagger clip)")
    generate.add_argument("--clip-threshold", type=float, default=d["clip_threshold"].default,
                          help="cosine similarity a vocabulary entry needs (--tagger clip)")
    generate.add_argument("--max-tags", type=int, default=d["max_tags"].default,
                          help="tags per image at most")
    generate.add_argument("--detector", default=d["detector"].default, help="zero-shot detector path or id")
    generate.add_argument("--segmenter", default=d["segmenter"].default, help="SAM path or id")
    for flag, text in (("box_threshold", "best token probability a box needs"),
                       ("text_threshold", "mean token probability its tag needs (phrase grounding)"),
                       ("nms_iou", "IoU above which a box of the same tag is suppressed"),
                       ("dedup_iou", "IoU above which a box of another tag is dropped as a duplicate")):
        generate.add_argument("--" + flag.replace("_", "-"), type=float, default=d[flag].default, help=text)
    generate.add_argument("--max-regions", type=int, default=d["max_regions"].default,
                          help="regions per image at most")
    generate.add_argument("--min-box-side", type=float, default=d["min_box_side"].default,
                          help="pixels a box side needs")
    generate.add_argument("--min-mask-area", type=int, default=d["min_mask_area"].default,
                          help="pixels a mask needs")
    generate.add_argument("--batch-size", type=int, default=d["batch_size"].default,
                          help="images per forward")
    generate.add_argument("--num-workers", type=int, default=d["num_workers"].default,
                          help="DataLoader workers decoding and preprocessing images")
    generate.add_argument("--device", default=None,
                          help="default: cuda:LOCAL_RANK if CUDA is there, else cpu")
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")
    set_command(generate, run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from patch_align.pad.generate.build import generate_pad
    from patch_align.pad.generate.options import GenerateOptions

    fields = {k: v for k, v in vars(args).items() if k in GenerateOptions.__dataclass_fields__}
    try:
        counts, rank, world_size = generate_pad(GenerateOptions(**fields, progress=not args.no_progress))
    except (ValueError, OSError) as err:
        raise CommandError(err) from err
    print(f"rank {rank}/{world_size}: {counts.processed} images written, {counts.failed} failed, "
          f"{counts.skipped_done} already done, {counts.regions} regions, {counts.seconds:.1f} s")
    for failure in counts.failures:
        print(f"  failed {failure['id']}: {failure['reason']}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from patch_align.pad.generate.items import load_image_items
    from patch_align.pad.generate.shards import ShardError, merge_shards
    from patch_align.pad.schema import PAD_VERSION

    if not Path(args.out_dir).is_dir():
        raise CommandError(f"{args.out_dir} is not a folder (the --out of `patch-align pad generate`)")
    manifests = [_read_shard_manifest(path)
                 for path in sorted(Path(args.out_dir).glob("shard-*-of-*.manifest.json"))]
    data = args.data or (manifests[0]["settings"]["data"] if manifests else None)
    if data is None:
        raise CommandError(f"no shard manifests in {args.out_dir}; pass --data")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise CommandError(f"--out {out}: not a file in an existing folder")
    failed_path = out.with_name(out.stem + ".failed.jsonl")
    try:
        items, _ = load_image_items(data)
        report = merge_shards(args.out_dir, [item.id for item in items], out, failed_path,
                              {"pad_version": PAD_VERSION})
    except ShardError as err:  # the shards themselves are broken: the run's answer, not a usage error
        print(f"{args.command_prog}: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        raise CommandError(err) from err
    summary = {"data": os.path.abspath(data), "records": report.written, "failed": report.failed,
               "missing": len(report.missing), "duplicated": len(report.duplicated),
               "shards": [{**m["settings"], "shard_records": m["shard_records"],
                           "shard_failed": m["shard_failed"]} for m in manifests]}
    manifest_path = out.with_name(out.stem + ".manifest.json")
    manifest_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for kind in ("missing", "duplicated", "unexpected"):
        ids = getattr(report, kind)
        if ids:
            print(f"{kind}: {' '.join(ids[:50])}" + (f" ... ({len(ids)} in all)" if len(ids) > 50 else ""))
    print(f"{out}: {report.written} records, {report.failed} failed, {len(report.missing)} missing, "
          f"{len(report.duplicated)} duplicated, {len(report.unexpected)} not in the data")
    return 0 if report.ok else 1


def _read_shard_manifest(path: Path) -> dict:
    """One `shard-*.manifest.json` of a generation run, with the keys merge reads."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommandError(f"{path}: unreadable shard manifest ({err})") from err
    complete = (isinstance(manifest, dict) and isinstance(manifest.get("settings"), dict)
                and "data" in manifest["settings"] and {"shard_records", "shard_failed"} <= manifest.keys())
    if not complete:
        raise CommandError(f"{path}: not a shard manifest (needs settings.data, shard_records, shard_failed)")
    return manifest


def run_stats(args: argparse.Namespace) -> int:
    from patch_align.pad.stats import format_stats, pad_stats

    try:
        print(format_stats(pad_stats(args.file), args.top))
    except (PadFormatError, OSError) as err:
        raise CommandError(err) from err
    return 0


def run_show(args: argparse.Namespace) -> int:
    from patch_align.pad.show import show_records

    try:
        paths = show_records(args.file, args.image_folder, args.ids, output_folder(args.out))
    except KeyError as err:  # unknown ids; str() of a KeyError would quote the message
        raise CommandError(err.args[0]) from err
    except (PadFormatError, OSError, ValueError) as err:
        raise CommandError(err) from err
    for path in paths:
        print(path)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from patch_align.pad.validate import validate_pad

    tokenizer = None
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as err:
            raise CommandError(f"--tokenizer {args.tokenizer}: cannot load a tokenizer ({err})") from err
    try:
        report = validate_pad(args.file, args.image_folder, tokenizer=tokenizer, show_progress=True)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise CommandError(err) from err
    except PadFormatError as err:
        print(f"{args.file}: not a readable PAD file: {err}")
        return 1
    shown = report.problems if args.max_print is None else report.problems[:max(args.max_print, 0)]
    for problem in shown:
        print(f"{problem.record_id}: {problem.kind}: {problem.detail}")
    if len(shown) < len(report.problems):
        hidden = len(report.problems) - len(shown)
        print(f"... {hidden} more problems not printed (--max-print {args.max_print})")
    print(f"{args.file}: {report.records} records, {report.regions} regions, "
          f"{len(report.problems)} problems in {report.bad_records} records")
    for kind, count in report.counts.items():
        print(f"  {kind}: {count}")
    return 0 if report.ok else 1
