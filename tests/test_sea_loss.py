"""SEA loss: symmetric InfoNCE by hand, temperature module, word targets, gradients only in the projector."""

import math

import pytest
import torch
from torch import nn

from patch_align.sea.loss import INITIAL_TEMPERATURE, SeaTemperature, sea_info_nce
from patch_align.sea.sampling import sample_sea_pairs
from patch_align.sea.targets import VocabularyTargets


def _log_softmax_at(logits: list[float], index: int) -> float:
    return logits[index] - math.log(sum(math.exp(z) for z in logits))


def test_info_nce_equals_hand_computation():
    tokens = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # unit directions (1, 0) and (0, 1)
    targets = torch.tensor([[1.0, 1.0], [0.0, 0.5]])  # unit directions (1, 1)/√2 and (0, 1)
    out = sea_info_nce(tokens, targets, torch.tensor(0.5))
    r = math.sqrt(2)  # logits = cos / 0.5: [[√2, 0], [√2, 2]]
    rows = -(_log_softmax_at([r, 0.0], 0) + _log_softmax_at([r, 2.0], 1)) / 2
    columns = -(_log_softmax_at([r, r], 0) + _log_softmax_at([0.0, 2.0], 1)) / 2
    assert out.loss.item() == pytest.approx((rows + columns) / 2, rel=1e-6)
    assert out.accuracy == 1.0 and out.pairs == 2


def test_accuracy_counts_patches_whose_nearest_word_is_their_own():
    tokens = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    out = sea_info_nce(tokens, targets, torch.tensor(1.0))
    assert out.accuracy == pytest.approx(2 / 3)  # patch 1's nearest word is word 0, not its own


def test_info_nce_rejects_empty_or_mismatched_pairs():
    with pytest.raises(ValueError, match="no SEA pairs"):
        sea_info_nce(torch.zeros((0, 4)), torch.zeros((0, 4)), torch.tensor(0.07))
    with pytest.raises(ValueError, match=r"\(P, D\)"):
        sea_info_nce(torch.zeros((3, 4)), torch.zeros((2, 4)), torch.tensor(0.07))


def test_temperature_starts_at_clip_value_and_is_learnable_or_fixed():
    learnable, fixed = SeaTemperature(), SeaTemperature(0.2, learnable=False)
    assert learnable().item() == pytest.approx(INITIAL_TEMPERATURE) and INITIAL_TEMPERATURE == 0.07
    assert [p.requires_grad for p in learnable.parameters()] == [True]
    assert list(fixed.parameters()) == [] and fixed().item() == pytest.approx(0.2)
    with torch.no_grad():
        learnable.log_temperature.fill_(math.log(1e-4))
    assert learnable().item() == pytest.approx(0.01)  # clamped: logits stay bounded by 100·cos


class _WordTable:
    """Stand-in LLM tokenizer: fixed token ids per word, the call shape `tokenize_label` uses."""

    ids = {"red": [4], "cat": [5, 6], "dog": [7], "sky": [8, 9]}

    def __call__(self, text, add_special_tokens=True):
        return type("Encoding", (), {"input_ids": self.ids[text.strip()]})()  # labels come after a space


def test_vocabulary_targets_are_mean_token_embeddings():
    embedding = nn.Embedding(10, 3)
    targets = VocabularyTargets(_WordTable(), ["red", "cat", "dog", "sky"])
    got = targets(embedding, torch.tensor([1, 0, 3]))
    weight = embedding.weight.detach()
    expected = torch.stack([(weight[5] + weight[6]) / 2, weight[4], (weight[8] + weight[9]) / 2])
    assert torch.allclose(got, expected)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        targets(embedding, torch.tensor([4]))


def test_gradients_reach_only_the_projector_and_temperature():
    torch.manual_seed(0)
    projector = nn.Linear(6, 3)
    embedding = nn.Embedding(10, 3).requires_grad_(False)
    temperature = SeaTemperature()
    vision = torch.randn(2, 16, 6)  # frozen vision features (B, N, D_vision)
    generator = torch.Generator().manual_seed(0)
    word_ids = torch.randint(0, 4, (2, 16, 2), generator=generator, dtype=torch.int32)
    scores = torch.rand((2, 16, 2), generator=generator)
    pairs = sample_sea_pairs(word_ids, scores, (4, 4), window=2, generator=generator)
    assert len(pairs) >= 2
    projected = projector(vision)[pairs.batch_index, pairs.patch_index]  # (P, 3)
    targets = VocabularyTargets(_WordTable(), ["red", "cat", "dog", "sky"])(embedding, pairs.word_ids)
    sea_info_nce(projected, targets, temperature()).loss.backward()
    assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0
    assert temperature.log_temperature.grad is not None
    assert embedding.weight.grad is None and vision.grad is None
