"""Patch-Aligned Dataset (PAD): format, reader, validator.

The validator lives in `patch_align.pad.validate` (it pulls in PIL and tqdm); the names
below are what a training dataset needs.
"""
from patch_align.pad.masks import MaskDecodeError, MaskSizeError, decode_region_mask, encode_mask
from patch_align.pad.reader import find_pad_record, iter_pad_records, load_pad_index
from patch_align.pad.schema import PAD_VERSION, PadFormatError, PadRecord, PadRegion

__all__ = [
    "PAD_VERSION",
    "MaskDecodeError",
    "MaskSizeError",
    "PadFormatError",
    "PadRecord",
    "PadRegion",
    "decode_region_mask",
    "encode_mask",
    "find_pad_record",
    "iter_pad_records",
    "load_pad_index",
]
