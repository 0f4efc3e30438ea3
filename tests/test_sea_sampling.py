"""SEA pair sampling: score-proportional labels, one patch per k×k window, unique words per batch."""

import pytest
import torch

from patch_align.sea.sampling import deduplicate, draw_patch_labels, localise, sample_sea_pairs

CHI2_CRITICAL_DF2_P001 = 13.816  # chi-square quantile 0.999, 2 degrees of freedom


def _chi_square(observed: torch.Tensor, probabilities: torch.Tensor) -> float:
    expected = probabilities * observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def _one_patch_repeated(scores: list[float], ids: list[int], patches: int):
    word_ids = torch.tensor(ids, dtype=torch.int32).expand(1, patches, len(ids)).clone()
    return word_ids, torch.tensor(scores).expand(1, patches, len(scores)).clone()


def test_drawn_labels_follow_the_normalised_scores_chi_square():
    word_ids, scores = _one_patch_repeated([0.5, 0.3, 0.2, 0.0], [7, 3, 9, -1], patches=6000)
    drawn = draw_patch_labels(word_ids, scores, generator=torch.Generator().manual_seed(0)).flatten()
    counts = torch.stack([(drawn == w).sum() for w in (7, 3, 9)]).float()
    assert int(counts.sum()) == 6000  # the padded slot (-1) is never drawn
    assert _chi_square(counts, torch.tensor([0.5, 0.3, 0.2])) < CHI2_CRITICAL_DF2_P001
    # The same test rejects a distribution the sampler does not follow: it can fail.
    assert _chi_square(counts, torch.tensor([1 / 3, 1 / 3, 1 / 3])) > CHI2_CRITICAL_DF2_P001


def test_only_relative_scores_matter():
    word_ids, scores = _one_patch_repeated([0.5, 0.3, 0.2], [0, 1, 2], patches=50)
    first = draw_patch_labels(word_ids, scores, generator=torch.Generator().manual_seed(3))
    scaled = draw_patch_labels(word_ids, scores * 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, scaled)


def test_patch_without_positive_score_gets_no_label():
    word_ids = torch.tensor([[[4, -1], [-1, -1], [5, 6]]], dtype=torch.int32)
    scores = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.9]]])
    drawn = draw_patch_labels(word_ids, scores, generator=torch.Generator().manual_seed(0))
    assert drawn.tolist() == [[-1, -1, 6]]


def test_negative_score_is_rejected():
    word_ids = torch.tensor([[[1, 2]]], dtype=torch.int32)
    with pytest.raises(ValueError, match="finite and >= 0"):
        draw_patch_labels(word_ids, torch.tensor([[[0.5, -0.1]]]), generator=torch.Generator())


def test_localise_keeps_exactly_one_labelled_patch_per_window_on_an_uneven_grid():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(-1, 4, (3, 25), generator=generator)  # 5x5 grid, about 1/5 unlabelled
    labels[0, [0, 1, 5, 6]] = -1  # sample 0: top-left window fully unlabelled
    keep = localise(labels, (5, 5), window=2, generator=generator)
    assert not (keep & (labels < 0)).any()
    kept = keep.view(3, 5, 5)
    labelled = (labels >= 0).view(3, 5, 5)
    for b in range(3):
        for r in range(0, 5, 2):
            for c in range(0, 5, 2):
                window_kept = int(kept[b, r : r + 2, c : c + 2].sum())
                assert window_kept == int(labelled[b, r : r + 2, c : c + 2].any())
    assert int(kept[0, :2, :2].sum()) == 0


def test_localise_with_window_one_keeps_every_labelled_patch():
    labels = torch.tensor([[3, -1, 0, 2, -1, 1]])
    keep = localise(labels, (2, 3), window=1, generator=torch.Generator())
    assert keep.tolist() == [[True, False, True, True, False, True]]


def test_localise_picks_each_patch_of_a_window_equally_often():
    labels = torch.zeros((4000, 4), dtype=torch.long)  # 2x2 grid, one window, all labelled
    keep = localise(labels, (2, 2), window=2, generator=torch.Generator().manual_seed(0))
    counts = keep.sum(dim=0).float()
    assert int(counts.sum()) == 4000
    expected = counts.sum() / 4
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.266  # chi-square quantile 0.999, 3 degrees of freedom


def test_deduplicate_keeps_one_position_per_word_in_ascending_order():
    words = torch.tensor([3, 3, 5, 3, 7])
    kept = deduplicate(words, generator=torch.Generator().manual_seed(0))
    assert kept.tolist() == sorted(kept.tolist())
    assert sorted(words[kept].tolist()) == [3, 5, 7]
    assert len(set(kept.tolist()) & {0, 1, 3}) == 1


def test_sampled_batch_has_unique_words_and_at_most_one_patch_per_window():
    generator = torch.Generator().manual_seed(5)
    word_ids = torch.randint(0, 30, (4, 36, 5), generator=generator, dtype=torch.int32)
    scores = torch.rand((4, 36, 5), generator=generator)
    pairs = sample_sea_pairs(word_ids, scores, (6, 6), window=2, generator=generator)
    assert len(pairs) > 0
    assert len(set(pairs.word_ids.tolist())) == len(pairs)
    windows = {(b, (p // 6) // 2, (p % 6) // 2)
               for b, p in zip(pairs.batch_index.tolist(), pairs.patch_index.tolist(), strict=True)}
    assert len(windows) == len(pairs)
    # Every pair's word is one of its patch's candidate words.
    candidates = word_ids[pairs.batch_index, pairs.patch_index]
    assert (candidates == pairs.word_ids.unsqueeze(1).int()).any(dim=1).all()


def test_same_generator_seed_gives_the_same_pairs():
    generator = torch.Generator().manual_seed(2)
    word_ids = torch.randint(0, 50, (2, 16, 3), generator=generator, dtype=torch.int32)
    scores = torch.rand((2, 16, 3), generator=generator)
    first = sample_sea_pairs(word_ids, scores, (4, 4), generator=torch.Generator().manual_seed(9))
    again = sample_sea_pairs(word_ids, scores, (4, 4), generator=torch.Generator().manual_seed(9))
    assert torch.equal(first.word_ids, again.word_ids) and torch.equal(first.patch_index, again.patch_index)
