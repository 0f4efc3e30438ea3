"""Specification of `llava.model.llava_arch.splice_image_features`: where image features land.

A 1-wide embedding table maps token id t to the value t, and image k's features are the values
100*(k+1) + patch, so every output position says exactly which token or patch it came from.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.llava_arch import splice_image_features

IMG = IMAGE_TOKEN_INDEX
PAD = 0


def identity_embedding(vocab: int = 32) -> nn.Embedding:
    """Token id t embeds to the 1-vector (t,)."""
    table = nn.Embedding(vocab, 1)
    with torch.no_grad():
        table.weight.copy_(torch.arange(vocab, dtype=torch.float32)[:, None])
    return table


def image(k: int, n_patches: int = 3) -> torch.Tensor:
    """Features (N, 1) of image k: 100*(k+1) + patch index."""
    return (100.0 * (k + 1) + torch.arange(n_patches, dtype=torch.float32))[:, None]


def values(result_embeds: torch.Tensor) -> list[list[float]]:
    return result_embeds[..., 0].tolist()


def test_one_image_is_replaced_by_its_features_with_ignored_labels():
    ids = torch.tensor([[1, IMG, 5, 6]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6]])
    out = splice_image_features(ids, None, labels, [image(0)], identity_embedding())
    assert values(out.inputs_embeds) == [[1, 100, 101, 102, 5, 6]]
    assert out.labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 5, 6]]
    assert out.attention_mask.tolist() == [[True] * 6]
    assert out.position_ids.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert out.truncated == 0


def test_several_images_in_one_sample_are_spliced_in_order():
    ids = torch.tensor([[1, IMG, 4, IMG, 7]])
    out = splice_image_features(ids, None, ids.clone(), [image(0, 2), image(1, 2)], identity_embedding())
    assert values(out.inputs_embeds) == [[1, 100, 101, 4, 200, 201, 7]]
    assert out.labels.tolist() == [[1, IGNORE_INDEX, IGNORE_INDEX, 4, IGNORE_INDEX, IGNORE_INDEX, 7]]


def test_without_labels_every_label_is_ignored():
    ids = torch.tensor([[1, IMG, 4]])
    out = splice_image_features(ids, None, None, [image(0, 2)], identity_embedding())
    assert out.labels.tolist() == [[IGNORE_INDEX] * 4]


def test_text_only_sample_with_one_image_per_token_takes_no_image():
    # sample 0 text-only, sample 1 one image: one feature set for one <image> token
    ids = torch.tensor([[1, 2, 3, 4], [1, IMG, 9, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    out = splice_image_features(ids, mask, ids.clone(), [image(0, 2)], identity_embedding())
    assert values(out.inputs_embeds) == [[1, 2, 3, 4], [1, 100, 101, 9]]
    assert out.attention_mask.tolist() == [[True] * 4] * 2


def test_text_only_sample_with_upstream_dummy_image_consumes_it_without_splicing():
    # upstream's collator: one image per sample, the text-only sample's zero image is skipped
    ids = torch.tensor([[1, 2, 3, PAD], [1, IMG, 9, PAD]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    dummy = torch.zeros(2, 1)
    out = splice_image_features(ids, mask, ids.clone(), [dummy, image(1, 2)], identity_embedding())
    assert values(out.inputs_embeds) == [[1, 2, 3, 0], [1, 200, 201, 9]]
    assert out.attention_mask.tolist() == [[True, True, True, False], [True] * 4]
    assert out.labels.tolist() == [[1, 2, 3, IGNORE_INDEX], [1, IGNORE_INDEX, IGNORE_INDEX, 9]]


def test_dummy_image_stays_in_the_autograd_graph():
    ids = torch.tensor([[1, 2, 3]])
    dummy = torch.ones(2, 1, requires_grad=True)
    out = splice_image_features(ids, None, None, [dummy], identity_embedding())
    out.inputs_embeds.sum().backward()
    assert dummy.grad is not None
    assert dummy.grad.tolist() == [[0.0], [0.0]]


def test_right_padding_puts_padding_after_each_sample_with_positions_from_zero():
    ids = torch.tensor([[1, IMG, 5, 6], [1, IMG, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    out = splice_image_features(
        ids, mask, ids.clone(), [image(0, 2), image(1, 2)], identity_embedding(), padding_side="right"
    )
    assert values(out.inputs_embeds) == [[1, 100, 101, 5, 6], [1, 200, 201, 0, 0]]
    assert out.attention_mask.tolist() == [[True] * 5, [True, True, True, False, False]]
    assert out.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 0]]
    assert out.labels.tolist()[1] == [1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]


def test_left_padding_puts_padding_before_each_sample_with_positions_from_zero():
    # the input is right-padded; the output is re-padded on the left (generation layout)
    ids = torch.tensor([[1, IMG, 5, 6], [1, IMG, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    out = splice_image_features(
        ids, mask, None, [image(0, 2), image(1, 2)], identity_embedding(), padding_side="left"
    )
    assert values(out.inputs_embeds) == [[1, 100, 101, 5, 6], [0, 0, 1, 200, 201]]
    assert out.attention_mask.tolist() == [[True] * 5, [False, False, True, True, True]]
    assert out.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]


def test_left_padded_input_drops_its_padding_by_the_mask():
    ids = torch.tensor([[PAD, PAD, 1, IMG], [1, 2, IMG, 3]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    out = splice_image_features(
        ids, mask, None, [image(0, 1), image(1, 1)], identity_embedding(), padding_side="left"
    )
    assert values(out.inputs_embeds) == [[0, 0, 1, 100], [1, 2, 200, 3]]
    assert out.attention_mask.tolist() == [[False, False, True, True], [True] * 4]


def test_samples_longer_than_max_length_are_cut_and_counted():
    ids = torch.tensor([[1, IMG, 5, 6], [1, 2, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = splice_image_features(ids, mask, ids.clone(), [image(0, 3)], identity_embedding(), max_length=4)
    assert values(out.inputs_embeds) == [[1, 100, 101, 102], [1, 2, 0, 0]]
    ign = IGNORE_INDEX
    assert out.labels.tolist() == [[1, ign, ign, ign], [1, 2, ign, ign]]
    assert out.truncated == 1


def test_wrong_number_of_images_is_an_error_that_states_the_counts():
    ids = torch.tensor([[1, IMG, 5], [1, IMG, IMG]])
    with pytest.raises(ValueError, match=r"got 2 images for 3 <image> tokens in a batch of 2"):
        splice_image_features(ids, None, None, [image(0), image(1)], identity_embedding())


def test_missing_images_for_image_tokens_is_an_error():
    ids = torch.tensor([[1, IMG, 5]])
    with pytest.raises(ValueError, match=r"got 0 images for 1 <image> tokens"):
        splice_image_features(ids, None, None, None, identity_embedding())


def test_placeholder_of_a_text_only_sample_is_never_spliced_into_a_sample_with_two_image_tokens():
    # one image per sample (the collator's layout): sample 0 has two <image> but one image,
    # sample 1 is text-only with its zero placeholder; both counts are 2, the samples disagree
    ids = torch.tensor([[1, IMG, IMG, 5], [1, 2, 3, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with pytest.raises(ValueError, match=r"sample 0 has 2 <image> tokens for its one image"):
        splice_image_features(ids, mask, None, [image(0), torch.zeros(3, 1)], identity_embedding())


def test_per_token_layout_lets_a_two_image_prompt_share_a_batch_with_a_text_only_prompt():
    # what generation passes: the same counts as above, but both images are sample 0's
    ids = torch.tensor([[1, IMG, IMG, 5], [1, 2, 3, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    out = splice_image_features(
        ids, mask, None, [image(0, 2), image(1, 2)], identity_embedding(), image_layout="per_token"
    )
    assert values(out.inputs_embeds) == [[1, 100, 101, 200, 201, 5], [1, 2, 3, 0, 0, 0]]


def test_per_sample_layout_needs_exactly_one_image_per_sample():
    ids = torch.tensor([[1, IMG, 5], [1, 2, 3], [1, IMG, 4]])
    with pytest.raises(ValueError, match=r"got 2 images .* batch of 3 .*one image per sample needs 3 images"):
        splice_image_features(ids, None, None, [image(0), image(1)], identity_embedding(),
                              image_layout="per_sample")


def test_unknown_image_layout_is_an_error_naming_the_choices():
    ids = torch.tensor([[1, IMG, 5]])
    choices = r"\('auto', 'per_sample', 'per_token'\)"
    with pytest.raises(ValueError, match=rf"image_layout must be one of {choices}"):
        splice_image_features(ids, None, None, [image(0)], identity_embedding(), image_layout="sample")
