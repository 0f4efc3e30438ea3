"""SEA offline labelling on a tiny CLIP: direct computation, sign convention, geometry, resumable shards."""

import json
import string

import pytest
import torch
from PIL import Image

from llava.mm_utils import pad_to_square_geometry
from llava.tiny import build_tiny_clip
from llava.train.llava_json import LlavaDataError
from patch_align.sea.labeling import label_dataset, load_clip, patch_features, top_words, word_features
from patch_align.sea.store import INDEX_FILE, SeaLabels, shard_name

WORDS = ["red", "cat", "dog", "sky", "tree", "box", "car", "grass"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIPModel folder (56 px, 4x4 patches) with a character-level CLIP tokenizer saved beside it."""
    from transformers import CLIPTokenizer

    clip_dir = build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
    vocab: dict[str, int] = {}
    for char in string.ascii_lowercase + ".":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    merges = [("r", "e"), ("re", "d</w>")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    # The tiny text config has eos_token_id 2, so CLIP pools at the highest id: specials go last.
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(str(clip_dir))
    return clip_dir


def _image(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def llava_record(record_id: str, image: str | None) -> dict:
    """A LLaVA data record with a one-question conversation; text-only when `image` is None."""
    question = "What is a picture?" if image is None else "<image>\nWhat is it?"
    record = {"id": record_id, "conversations": [{"from": "human", "value": question},
                                                 {"from": "gpt", "value": "a picture"}]}
    return record if image is None else {**record, "image": image}


@pytest.fixture()
def dataset(tmp_path):
    """Three images (one wide, one tall, one square) and a LLaVA data file with a text-only record."""
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"wide": (112, 56), "tall": (42, 70), "square": (56, 56)}
    for seed, (name, size) in enumerate(sizes.items()):
        _image(*size, seed).save(images / f"{name}.png")
    records = [llava_record(name, f"{name}.png") for name in sizes]
    records.insert(1, llava_record("text-only", None))
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    return data, images, vocab


def _label(tiny_clip, dataset, out, **flags):
    data, images, vocab = dataset
    return label_dataset(tiny_clip, vocab, data, images, out, show_progress=False, device="cpu", **flags)


def test_top_words_of_a_patch_equal_a_direct_clip_computation(tiny_clip, dataset, tmp_path):
    _label(tiny_clip, dataset, tmp_path / "labels", top_n=5, image_aspect_ratio="square")
    labels = SeaLabels(tmp_path / "labels")
    word_ids, scores = labels.labels("square")
    assert labels.words == WORDS and labels.grid == (4, 4) and word_ids.shape == (16, 5)

    model, tokenizer, processor = load_clip(tiny_clip, "cpu")
    patch = 6  # row 1, column 2
    with torch.no_grad():
        pixels = processor(Image.open(dataset[1] / "square.png").convert("RGB"),
                           return_tensors="pt")["pixel_values"]
        vision = model.vision_model(pixel_values=pixels).last_hidden_state[0, 1 + patch]
        v = model.visual_projection(model.vision_model.post_layernorm(vision))
        cosines = []
        for word in WORDS:  # one prompt at a time: no padding involved
            encoded = tokenizer(TEMPLATE.format(word), return_tensors="pt")
            t = model.get_text_features(**encoded).pooler_output[0]
            cosines.append(torch.nn.functional.cosine_similarity(v, t, dim=0).item())
    ranked = sorted(range(len(WORDS)), key=lambda w: cosines[w])  # negated: lowest cosine first
    expected = [(w, -cosines[w]) for w in ranked if -cosines[w] >= 0][:5]
    kept = int((word_ids[patch] >= 0).sum())
    assert 0 < kept < len(WORDS)  # random CLIP: some words score below 0 and are dropped
    assert word_ids[patch, :kept].tolist() == [w for w, _ in expected]
    assert scores[patch, :kept].tolist() == pytest.approx([s for _, s in expected], abs=1e-3)
    assert word_ids[patch, kept:].tolist() == [-1] * (5 - kept)
    assert scores[patch, kept:].tolist() == [0.0] * (5 - kept)


def test_sign_flag_reverses_the_ranking(tiny_clip):
    model, tokenizer, processor = load_clip(tiny_clip, "cpu")
    with torch.no_grad():
        pixels = processor(_image(56, 56, 7), return_tensors="pt")["pixel_values"]
        patches = patch_features(model, pixels)
        words = word_features(model, tokenizer, WORDS, TEMPLATE, batch_size=3)
    n = len(WORDS)
    negated_ids, negated = top_words(patches, words, top_n=n, sign="negated")
    plain_ids, plain = top_words(patches, words, top_n=n, sign="plain")
    for p in range(patches.shape[1]):
        kept_neg, kept_plain = int((negated_ids[0, p] >= 0).sum()), int((plain_ids[0, p] >= 0).sum())
        assert kept_neg + kept_plain == n  # every word scores >= 0 under exactly one sign
        # Plain keeps cos >= 0 best first, negated keeps cos < 0 lowest first: plain's list followed by
        # negated's list reversed is the whole vocabulary in descending cosine.
        together = plain_ids[0, p, :kept_plain].tolist() + negated_ids[0, p, :kept_neg].flip(0).tolist()
        assert sorted(together) == list(range(n))
        cosine = torch.nn.functional.cosine_similarity(patches[0, p : p + 1], words, dim=-1)
        assert together == cosine.argsort(descending=True).tolist()
        assert torch.allclose(negated[0, p, :kept_neg], -cosine[negated_ids[0, p, :kept_neg].long()])


def test_pad_labels_equal_square_labels_of_the_hand_padded_image(tiny_clip, dataset, tmp_path):
    data, images, vocab = dataset
    _, _, processor = load_clip(tiny_clip, "cpu")
    mean = tuple(int(c * 255) for c in processor.image_mean)
    for name in ("wide", "tall"):
        image = Image.open(images / f"{name}.png").convert("RGB")
        side, left, top = pad_to_square_geometry(*image.size)
        canvas = Image.new("RGB", (side, side), mean)
        canvas.paste(image, (left, top))
        canvas.save(images / f"{name}_padded.png")
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps([llava_record(n, f"{n}_padded.png") for n in ("wide", "tall")]))
    label_dataset(tiny_clip, vocab, data, images, tmp_path / "pad", image_aspect_ratio="pad",
                  show_progress=False, device="cpu")
    label_dataset(tiny_clip, vocab, hand, images, tmp_path / "hand", image_aspect_ratio="square",
                  show_progress=False, device="cpu")
    pad, by_hand = SeaLabels(tmp_path / "pad"), SeaLabels(tmp_path / "hand")
    for name in ("wide", "tall"):
        assert torch.equal(pad.labels(name)[0], by_hand.labels(name)[0])
        assert torch.equal(pad.labels(name)[1], by_hand.labels(name)[1])


def test_square_labels_see_only_the_centre_crop(tiny_clip, dataset, tmp_path):
    data, images, vocab = dataset
    Image.open(images / "wide.png").crop((28, 0, 84, 56)).save(images / "wide_centre.png")
    crop = tmp_path / "crop.json"
    crop.write_text(json.dumps([llava_record("wide", "wide_centre.png")]))
    label_dataset(tiny_clip, vocab, data, images, tmp_path / "square", image_aspect_ratio="square",
                  show_progress=False, device="cpu")
    label_dataset(tiny_clip, vocab, crop, images, tmp_path / "crop", image_aspect_ratio="square",
                  show_progress=False, device="cpu")
    square, cropped = SeaLabels(tmp_path / "square"), SeaLabels(tmp_path / "crop")
    assert torch.equal(square.labels("wide")[0], cropped.labels("wide")[0])
    label_dataset(tiny_clip, vocab, data, images, tmp_path / "pad", image_aspect_ratio="pad",
                  show_progress=False, device="cpu")
    assert not torch.equal(SeaLabels(tmp_path / "pad").labels("wide")[1], square.labels("wide")[1])


def test_shards_split_across_processes_resume_and_index_at_the_end(tiny_clip, dataset, tmp_path):
    out = tmp_path / "labels"
    first = _label(tiny_clip, dataset, out, shard_size=1, num_shards=2, shard_index=0)
    assert (first.shards_written, first.index_written) == (2, False)
    assert sorted(p.name for p in out.glob("shard-*")) == [shard_name(0), shard_name(2)]
    with pytest.raises(FileNotFoundError, match="not finished"):
        SeaLabels(out)
    second = _label(tiny_clip, dataset, out, shard_size=1, num_shards=2, shard_index=1)
    assert (second.shards_written, second.index_written) == (1, True)
    again = _label(tiny_clip, dataset, out, shard_size=1)
    assert (again.shards_written, again.shards_already_done, again.images_labelled) == (0, 3, 0)
    labels = SeaLabels(out)
    assert len(labels) == 3 and "text-only" not in labels
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["samples"] == {"wide": [shard_name(0), 0], "tall": [shard_name(1), 0],
                                "square": [shard_name(2), 0]}


def test_other_settings_in_the_same_folder_are_refused(tiny_clip, dataset, tmp_path):
    _label(tiny_clip, dataset, tmp_path / "labels", top_n=3)
    with pytest.raises(ValueError, match="sign, top_n differ"):
        _label(tiny_clip, dataset, tmp_path / "labels", top_n=4, sign="plain")


def test_unreadable_image_is_a_counted_named_skip(tiny_clip, dataset, tmp_path):
    data, images, _ = dataset
    (images / "tall.png").write_bytes(b"not a png")
    summary = _label(tiny_clip, dataset, tmp_path / "labels")
    assert (summary.images_labelled, summary.images_skipped) == (2, 1)
    labels = SeaLabels(tmp_path / "labels")
    assert "tall.png" in labels.skipped["tall"]
    with pytest.raises(KeyError, match="cannot read image"):
        labels.labels("tall")


def test_label_cli_writes_a_complete_folder(tiny_clip, dataset, tmp_path, capsys):
    from patch_align.cli import main

    data, images, vocab = dataset
    out = tmp_path / "labels"
    code = main(["sea", "label", "--clip", str(tiny_clip), "--vocab", str(vocab), "--data", str(data),
                 "--image-folder", str(images), "--out", str(out), "--top-n", "2", "--device", "cpu"])
    assert code == 0 and "index.json written" in capsys.readouterr().out
    assert SeaLabels(out).labels("tall")[0].shape == (16, 2)
    assert main(["sea", "label", "--clip", str(tmp_path), "--vocab", str(vocab), "--data", str(data),
                 "--image-folder", str(images), "--out", str(tmp_path / "x")]) == 2


def test_a_list_of_images_is_refused_before_clip_loads(dataset, tmp_path):
    data, images, vocab = dataset
    records = json.loads(data.read_text())
    records[0]["image"] = ["wide.png", "tall.png"]
    data.write_text(json.dumps(records))
    with pytest.raises(LlavaDataError, match=r"record 0 \(id 'wide'\): 'image' is a list of 2 images"):
        label_dataset(tmp_path / "no-clip", vocab, data, images, tmp_path / "out", device="cpu",
                      show_progress=False)
