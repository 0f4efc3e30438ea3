"""Specification of the patch-aligned loss L_patch = mean over regions of (1 − cos)."""

import math

import pytest
import torch

from patch_align.objectives.patch_cosine import patch_cosine_loss

# Two images of three 2-d tokens each (B=2, N=3, D=2).
FEATURES = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[-1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])
MASKS = torch.tensor([[True, True, False], [False, False, True]])
SAMPLE_INDEX = torch.tensor([0, 1])
LABELS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_mean_pooling_equals_hand_computation():
    # region 0: mean of (1,0),(0,1) = (.5,.5), cos with (1,0) = 1/sqrt(2); region 1: cos((3,4),(0,1)) = .8
    result = patch_cosine_loss(FEATURES, MASKS, SAMPLE_INDEX, LABELS, pooling="mean")
    expected = [1 / math.sqrt(2), 0.8]
    assert result.cosines.tolist() == pytest.approx(expected, abs=1e-6)
    assert result.mean_loss().item() == pytest.approx(((1 - expected[0]) + (1 - expected[1])) / 2, abs=1e-6)


def test_per_patch_pooling_averages_token_cosines():
    # region 0: cos((1,0),(1,0)) = 1 and cos((0,1),(1,0)) = 0 → 0.5; region 1: 0.8
    result = patch_cosine_loss(FEATURES, MASKS, SAMPLE_INDEX, LABELS, pooling="per_patch")
    assert result.cosines.tolist() == pytest.approx([0.5, 0.8], abs=1e-6)
    assert result.loss_sum.item() == pytest.approx(0.5 + 0.2, abs=1e-6)


def test_region_uses_only_its_own_image():
    # the same mask on image 1: mean of (-1,0),(0,2) = (-.5, 1), cos with (1,0) = -.5/sqrt(1.25)
    result = patch_cosine_loss(FEATURES, MASKS[:1], torch.tensor([1]), LABELS[:1])
    assert result.cosines.item() == pytest.approx(-0.5 / math.sqrt(1.25), abs=1e-6)


def test_zero_regions_give_exact_zero_with_valid_backward():
    features = FEATURES.clone().requires_grad_(True)
    result = patch_cosine_loss(
        features, torch.zeros((0, 3), dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros((0, 2))
    )
    loss = result.mean_loss()
    assert loss.item() == 0.0 and result.num_regions == 0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(FEATURES))


def test_bf16_features_with_zero_token_stay_finite():
    features = torch.zeros((1, 3, 2), dtype=torch.bfloat16, requires_grad=True)
    result = patch_cosine_loss(features, MASKS[:1], torch.tensor([0]), LABELS[:1])
    assert result.loss_sum.dtype == torch.float32
    assert result.loss_sum.item() == pytest.approx(1.0)  # cos with a zero vector is 0, not NaN
    result.loss_sum.backward()
    assert torch.isfinite(features.grad.float()).all()


def test_gradient_pulls_tokens_towards_label():
    features = FEATURES.clone().requires_grad_(True)
    before = patch_cosine_loss(features, MASKS, SAMPLE_INDEX, LABELS).mean_loss()
    before.backward()
    with torch.no_grad():
        after = patch_cosine_loss(features - 0.1 * features.grad, MASKS, SAMPLE_INDEX, LABELS).mean_loss()
    assert after < before
    assert torch.equal(features.grad[0, 2], torch.zeros(2))  # a token outside every region gets no gradient


@pytest.mark.parametrize(
    ("masks", "index", "labels", "message"),
    [
        (torch.tensor([[False, False, False]]), torch.tensor([0]), LABELS[:1], "at least one patch"),
        (MASKS[:1], torch.tensor([2]), LABELS[:1], "region_sample_index"),
        (torch.ones((1, 4), dtype=torch.bool), torch.tensor([0]), LABELS[:1], "region_masks"),
        (MASKS[:1], torch.tensor([0]), torch.zeros((1, 3)), "label_embeddings"),
    ],
)
def test_inconsistent_inputs_are_rejected(masks, index, labels, message):
    with pytest.raises(ValueError, match=message):
        patch_cosine_loss(FEATURES, masks, index, labels)


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match="--patch_pooling"):
        patch_cosine_loss(FEATURES, MASKS, SAMPLE_INDEX, LABELS, pooling="max")
