"""PAD generation's `clip` tagger and OWL-ViT / OWLv2 detector path, on tiny random-weight models.

The models are built from configs, saved and loaded back through `from_pretrained`. The
CLIP tagger's scores are checked against CLIPModel's own forward; the OWL detector's box
frame is checked against where each processor actually puts the image, and its
post-processing against known model outputs.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from test_pad_generate import build_tiny_sam, write_dataset

from patch_align.cli import main
from patch_align.pad.generate.build import generate_pad
from patch_align.pad.generate.detectors import Detection, ZeroShotDetector, normalized_boxes_to_pixels
from patch_align.pad.generate.options import GenerateOptions
from patch_align.pad.generate.shards import shard_stem
from patch_align.pad.generate.taggers import ClipTagger
from patch_align.pad.reader import iter_pad_records
from patch_align.pad.validate import validate_pad

CPU = torch.device("cpu")
VOCABULARY = ["red car", "tree", "dog", "green field", "man", "horse", "blue sky", "cat", "ball"]
# Token ids of the character-level tokenizer below: 27 characters x 2 forms, then the two specials.
BOS_ID, EOS_ID = 54, 55
OWL_TEXT_POSITIONS = 16


def clip_tokenizer() -> object:
    """A character-level CLIP tokenizer: every letter and "." alone and word-final, no merges.

    CLIP and OWL text towers with these tiny configs pool at the highest token id, so the
    specials come last and `<|endoftext|>` (also the pad token) is the highest.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in string.ascii_lowercase + ".":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (BOS_ID, EOS_ID)
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_tiny_clip_tagger_model(folder: Path) -> Path:
    """A tiny CLIPModel (56 px input) with a CLIPProcessor (image processor + tokenizer) saved beside it."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    from llava.tiny import build_tiny_clip

    build_tiny_clip(folder)
    CLIPProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(folder), tokenizer=clip_tokenizer()
    ).save_pretrained(folder)
    return folder


def _tiny_owl_configs() -> tuple[dict, dict]:
    text = {
        "vocab_size": EOS_ID + 1,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": OWL_TEXT_POSITIONS,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    # 32 px input in 8 px patches: 16 queries (one box per patch).
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    return text, vision


def save_with_grid_boxes(model: torch.nn.Module, folder: Path) -> None:
    """Save an OWL model whose box head outputs zero, so each query's box is its own patch cell.

    OWL adds a per-patch box bias before the sigmoid; a random box head instead makes
    near-degenerate boxes (height ~0 at the border) that leave nothing to segment.
    """
    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)


def build_tiny_owlv2(folder: Path) -> Path:
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    text, vision = _tiny_owl_configs()
    torch.manual_seed(0)
    save_with_grid_boxes(
        Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16)),
        folder,
    )
    Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=clip_tokenizer()
    ).save_pretrained(folder)
    return folder


def build_tiny_owlvit(folder: Path) -> Path:
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTProcessor
    from transformers.models.owlvit.image_processing_pil_owlvit import OwlViTImageProcessorPil

    text, vision = _tiny_owl_configs()
    torch.manual_seed(0)
    save_with_grid_boxes(
        OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=16)),
        folder,
    )
    image_processor = OwlViTImageProcessorPil(
        size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}
    )
    OwlViTProcessor(image_processor=image_processor, tokenizer=clip_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_clip_owl")
    build_tiny_sam(root / "sam")
    return {
        "clip": build_tiny_clip_tagger_model(root / "clip"),
        "owlvit": build_tiny_owlvit(root / "owlvit"),
        "sam": root / "sam",
    }


@pytest.fixture(scope="module")
def owlv2(models, tmp_path_factory) -> Path:
    # transformers' PIL OWLv2 image processor resizes with scipy.ndimage.
    pytest.importorskip("scipy", reason="the OWLv2 image processor needs scipy")
    return build_tiny_owlv2(tmp_path_factory.mktemp("tiny_owlv2") / "owlv2")


@pytest.fixture()
def vocabulary_file(tmp_path) -> Path:
    path = tmp_path / "vocabulary.txt"
    path.write_text("\n".join(VOCABULARY) + "\n", encoding="utf-8")
    return path


def detector(path: Path, box_threshold: float = 0.0) -> ZeroShotDetector:
    return ZeroShotDetector(str(path), box_threshold, 0.0, 0.5, 0.9, 5, 1.0, CPU, None)


# ---------------------------------------------------------------- clip tagger


def direct_clip_cosines(model_dir: Path, image: Image.Image, vocabulary: list[str]) -> torch.Tensor:
    """(V,) cosine similarities from CLIPModel's forward: logits_per_image / exp(logit_scale)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    inputs = processor(text=vocabulary, images=[image], padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs)
    return (output.logits_per_image[0] / model.logit_scale.exp()).float()


def test_clip_tagger_scores_equal_clip_forward_cosines_and_tags_are_those_at_or_above_threshold(
    models, vocabulary_file
):
    image = Image.new("RGB", (40, 24), (200, 30, 20))
    image.paste((20, 160, 40), (0, 12, 40, 24))
    tagger = ClipTagger(str(models["clip"]), vocabulary_file, threshold=0.0, max_tags=30, device=CPU)
    prepared = dict(tagger.image_processor(images=[image], return_tensors="pt"))

    cosines = tagger.similarities(prepared)
    assert cosines.shape == (1, len(VOCABULARY))
    expected = direct_clip_cosines(models["clip"], image, VOCABULARY)
    assert torch.allclose(cosines[0], expected, atol=1e-5)

    ranked = sorted(range(len(VOCABULARY)), key=lambda v: -float(cosines[0, v]))
    # The threshold is inclusive: set it to the third-best score and exactly three tags pass, best first.
    tagger.threshold = float(cosines[0, ranked[2]])
    assert tagger.tag([], prepared) == [[VOCABULARY[v] for v in ranked[:3]]]
    tagger.max_tags = 2
    assert tagger.tag([], prepared) == [[VOCABULARY[v] for v in ranked[:2]]]
    tagger.threshold = float(cosines[0, ranked[0]]) + 1e-4
    assert tagger.tag([], prepared) == [[]]


def test_clip_tagger_tags_a_batch_like_each_image_alone(models, vocabulary_file):
    images = [Image.new("RGB", (40, 24), (200, 30, 20)), Image.new("RGB", (24, 40), (10, 40, 220))]
    tagger = ClipTagger(str(models["clip"]), vocabulary_file, threshold=-1.0, max_tags=4, device=CPU)
    batch = tagger.similarities(dict(tagger.image_processor(images=images, return_tensors="pt")))
    for i, image in enumerate(images):
        alone = tagger.similarities(dict(tagger.image_processor(images=[image], return_tensors="pt")))
        assert torch.allclose(batch[i], alone[0], atol=1e-5)


def direct_text_embedding(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """(D,) unit CLIP text embedding of the token ids `ids`, specials included, from CLIPModel alone."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        features = model.get_text_features(input_ids=torch.tensor([ids]))
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(features[0].float(), dim=-1)


def test_clip_tagger_keeps_the_first_75_tokens_of_an_entry_longer_than_the_text_positions(models, tmp_path):
    # 100 characters = 100 tokens + 2 specials, over CLIP's 77 positions: BOS, the first 75, EOS survive
    long_entry, same_head, other_head = "a" * 100, "a" * 80 + "b" * 20, "b" + "a" * 99
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("\n".join(["dog", long_entry, same_head, other_head]) + "\n", encoding="utf-8")
    tagger = ClipTagger(str(models["clip"]), vocabulary, threshold=0.0, max_tags=5, device=CPU)
    embeddings = tagger.text_embeddings
    assert embeddings.shape == (4, 32)

    tokenize = clip_tokenizer()
    head = tokenize(long_entry, add_special_tokens=False).input_ids[:75]
    assert len(head) == 75 and tagger.model.config.text_config.max_position_embeddings == 77
    kept = direct_text_embedding(models["clip"], [BOS_ID, *head, EOS_ID])
    assert torch.allclose(embeddings[1], kept, atol=1e-5)
    # what follows token 75 is dropped; what precedes it is kept
    assert torch.allclose(embeddings[2], embeddings[1], atol=1e-6)
    assert not torch.allclose(embeddings[3], embeddings[1], atol=1e-3)
    dog = [BOS_ID, *tokenize("dog", add_special_tokens=False).input_ids, EOS_ID]
    assert torch.allclose(embeddings[0], direct_text_embedding(models["clip"], dog), atol=1e-5)


def test_generate_with_the_clip_tagger_writes_a_valid_pad_labelled_from_the_vocabulary(
    models, vocabulary_file, tmp_path, capsys
):
    data = write_dataset(tmp_path, 3, [(40, 24), (20, 36)])
    out = tmp_path / "out"
    code = main(
        [
            "pad", "generate", "--data", str(data), "--image-folder", str(tmp_path / "images"),
            "--out", str(out), "--tagger", "clip", "--clip-model", str(models["clip"]),
            "--vocabulary", str(vocabulary_file), "--clip-threshold", "0", "--max-tags", "3",
            "--detector", str(models["owlvit"]), "--segmenter", str(models["sam"]),
            "--box-threshold", "0", "--max-regions", "2", "--min-box-side", "1", "--min-mask-area", "1",
            "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    shard = shard_stem(out, 0, 1).with_suffix(".jsonl")
    report = validate_pad(shard, tmp_path / "images")
    assert report.ok, report.problems
    records = list(iter_pad_records(shard))
    assert [r.id for r in records] == ["00000", "00001", "00002"]
    assert sum(len(r.regions) for r in records) > 0
    for record in records:
        image = Image.open(tmp_path / "images" / record.image).convert("RGB")
        cosines = direct_clip_cosines(models["clip"], image, VOCABULARY)
        top3 = {VOCABULARY[v] for v in torch.argsort(cosines, descending=True)[:3].tolist()}
        allowed = {tag for tag in top3 if cosines[VOCABULARY.index(tag)] >= 0}
        assert {region.label for region in record.regions} <= allowed
        assert all(region.source == "clip+owlvit+sam" for region in record.regions)
    manifest = json.loads(shard_stem(out, 0, 1).with_suffix(".manifest.json").read_text())
    assert manifest["settings"]["tagger"]["clip_threshold"] == 0.0
    assert manifest["settings"]["detector"]["detector_type"] == "owlvit"


# ---------------------------------------------------------------- OWL detector


def block_image(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    """A black image with a white rectangle `box` = (x0, y0, x1, y1) in pixels."""
    image = Image.new("RGB", (width, height), (0, 0, 0))
    image.paste((255, 255, 255), box)
    return image


def normalised_block(pixel_values: torch.Tensor) -> torch.Tensor:
    """(1, 4) normalised (cx, cy, w, h) of the bright block in (3, S, S) processed pixels."""
    channel = pixel_values[0]
    bright = channel > (channel.max() + channel.min()) / 2
    rows = bright.any(1).nonzero().flatten()
    cols = bright.any(0).nonzero().flatten()
    side = channel.shape[-1]
    x0, x1 = float(cols[0]), float(cols[-1]) + 1
    y0, y1 = float(rows[0]), float(rows[-1]) + 1
    return torch.tensor([[(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]]) / side


@pytest.mark.parametrize(
    ("width", "height", "box"),
    [(64, 32, (16, 8, 48, 24)), (32, 64, (8, 16, 24, 48))],
    ids=["wide", "tall"],
)
@pytest.mark.parametrize("model_type", ["owlvit", "owlv2"])
def test_detector_frame_maps_where_the_processor_put_the_image_back_to_the_original_pixels(
    models, model_type, width, height, box, request
):
    # A box a perfect model would predict for the block, read off the processed pixels, must map back to
    # the block: OWL-ViT stretches the image to the square, OWLv2 pads it bottom/right to a square first.
    path = request.getfixturevalue("owlv2") if model_type == "owlv2" else models["owlvit"]
    owl = detector(path)
    assert owl.frame == {"owlvit": "image", "owlv2": "padded_square"}[model_type]
    prepared = owl.image_processor(images=[block_image(width, height, box)], return_tensors="pt")
    predicted = normalised_block(prepared["pixel_values"][0])
    mapped = normalized_boxes_to_pixels(predicted, width, height, owl.frame)
    assert mapped.tolist() == [[float(v) for v in box]]


class KnownOutputs:
    """Stands in for an OWL forward: records the text inputs and returns fixed logits and boxes."""

    def __init__(self, logits: torch.Tensor, pred_boxes: torch.Tensor):
        self.logits = logits
        self.pred_boxes = pred_boxes
        self.inputs: dict[str, torch.Tensor] = {}

    def __call__(self, **inputs: torch.Tensor) -> SimpleNamespace:
        self.inputs = inputs
        return SimpleNamespace(logits=self.logits, pred_boxes=self.pred_boxes)


@pytest.mark.parametrize(
    ("model_type", "wide_box", "tall_box"),
    [
        # image 0 is 640x480, image 1 is 300x600; OWL-ViT boxes are relative to each image itself.
        ("owlvit", (160.0, 0.0, 480.0, 240.0), (0.0, 150.0, 150.0, 450.0)),
        # OWLv2: relative to the padded square of side 640 and 600.
        ("owlv2", (160.0, 0.0, 480.0, 320.0), (0.0, 150.0, 300.0, 450.0)),
    ],
)
def test_detect_turns_known_owl_outputs_into_labelled_pixel_boxes_for_wide_and_tall_images(
    models, model_type, wide_box, tall_box, request, monkeypatch
):
    path = request.getfixturevalue("owlv2") if model_type == "owlv2" else models["owlvit"]
    owl = detector(path, box_threshold=0.5)
    # (B=2 images, Q=3 boxes, K=2 queries); image 1 has one tag, its second query is padding.
    logits = torch.full((2, 3, 2), -4.0)
    logits[0, 0, 1] = 2.0  # box 0 of image 0 is a "cat"
    logits[0, 1, 0] = 0.0  # probability 0.5: at the box threshold, kept as "dog"
    logits[0, 2, 0] = -0.1  # just under it
    logits[1, 0, 0] = 1.0  # box 0 of image 1 is a "tree"
    logits[1, 1, 1] = 5.0  # the padding query's column is never read
    boxes = torch.tensor(
        [
            [[0.5, 0.25, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]],
            [[0.25, 0.5, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.2, 0.2]],
        ]
    )
    known = KnownOutputs(logits, boxes)
    monkeypatch.setattr(owl.model, "forward", known)
    prepared = {"pixel_values": torch.zeros(2, 3, 32, 32)}
    found = owl.detect(prepared, [["dog", "cat"], ["tree"]], [(640, 480), (300, 600)])

    # One query per tag, blank-padded to the widest image, each padded to the text tower's 16 positions.
    assert known.inputs["input_ids"].shape == (4, OWL_TEXT_POSITIONS)
    assert known.inputs["pixel_values"].shape == (2, 3, 32, 32)
    small = normalized_boxes_to_pixels(boxes[0, 1:2], 640, 480, owl.frame)[0].tolist()
    assert found[0] == [
        Detection("cat", wide_box, pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())),
        Detection("dog", tuple(small), 0.5),
    ]
    assert found[1] == [Detection("tree", tall_box, pytest.approx(torch.sigmoid(torch.tensor(1.0)).item()))]


def test_detect_with_no_tags_in_the_batch_runs_no_model(models, monkeypatch):
    owl = detector(models["owlvit"])
    monkeypatch.setattr(owl.model, "forward", None)  # calling it would fail
    assert owl.detect({"pixel_values": torch.zeros(2, 3, 32, 32)}, [[], []], [(8, 8), (8, 8)]) == [[], []]


def test_generate_with_an_owlv2_detector_writes_a_valid_pad_for_wide_and_tall_images(models, owlv2, tmp_path):
    data = write_dataset(tmp_path, 4, [(40, 24), (20, 36)])
    options = GenerateOptions(
        data=str(data),
        image_folder=str(tmp_path / "images"),
        out=str(tmp_path / "out"),
        detector=str(owlv2),
        segmenter=str(models["sam"]),
        box_threshold=0.0,
        max_regions=3,
        min_box_side=1.0,
        min_mask_area=1,
        batch_size=2,
        num_workers=1,
        device="cpu",
        progress=False,
    )
    counts, _, _ = generate_pad(options)
    assert (counts.processed, counts.failed) == (4, 0)
    shard = shard_stem(tmp_path / "out", 0, 1).with_suffix(".jsonl")
    report = validate_pad(shard, tmp_path / "images")
    assert report.ok, report.problems
    records = list(iter_pad_records(shard))
    assert [(r.width, r.height) for r in records] == [(40, 24), (20, 36), (40, 24), (20, 36)]
    caption_tags = [{"red car", "tree"}, {"dog", "green field"}, {"man", "horse"}, {"blue sky"}]
    for record, tags in zip(records, caption_tags, strict=True):
        assert 1 <= len(record.regions) <= 3
        assert {region.label for region in record.regions} <= tags
        assert all(region.source == "captions+owlv2+sam" for region in record.regions)
    manifest = json.loads(shard_stem(tmp_path / "out", 0, 1).with_suffix(".manifest.json").read_text())
    assert manifest["settings"]["detector"]["detector_type"] == "owlv2"
