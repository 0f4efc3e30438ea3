"""Specification of patch_align.analysis.decomposition (MP / OMP over word embeddings)."""

import math
from pathlib import Path

import pytest
import torch

from patch_align.analysis.decomposition import (
    matching_pursuit,
    orthogonal_matching_pursuit,
    precision_recall_of_words,
    word_token_ids,
)

FIXTURE_LLM = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437" / "llm"


def orthogonal_dictionary(dim: int = 8) -> torch.Tensor:
    """Orthonormal rows, each scaled by a different length (pursuit must normalise them)."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q.T * torch.arange(1, dim + 1, dtype=torch.float64).unsqueeze(-1)


def unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("pursuit", [matching_pursuit, orthogonal_matching_pursuit])
def test_orthogonal_dictionary_sparse_code_is_recovered_exactly(pursuit):
    dictionary = orthogonal_dictionary()
    atoms = unit(dictionary)
    token = 3.0 * atoms[2] - 1.5 * atoms[5] + 0.5 * atoms[7]
    result = pursuit(token.float().unsqueeze(0), dictionary.float(), max_atoms=5)
    assert result.atom_ids.tolist() == [[2, 5, 7, -1, -1]]
    assert result.coefficients[0].tolist() == pytest.approx([3.0, -1.5, 0.5, 0.0, 0.0], abs=1e-5)
    assert result.atoms_used.tolist() == [3]
    assert result.explained_variance.item() == pytest.approx(1.0, abs=1e-6)


def test_omp_recovers_a_non_orthogonal_combination_that_mp_does_not():
    # Atoms e0 and (e0 + e1)/√2 (stored unnormalised); x = 2·e0 + 1·(e0 + e1)/√2.
    dictionary = torch.tensor([[1.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.5, 1.0]])
    token = torch.tensor([[2.0 + 1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0]])
    omp = orthogonal_matching_pursuit(token, dictionary, max_atoms=3)
    assert omp.atom_ids.tolist() == [[0, 1, -1]]
    assert omp.coefficients[0, :2].tolist() == pytest.approx([2.0, 1.0], abs=1e-5)
    # MP: step 1 takes e0 with <x, e0> = 2.7071, leaving (0, 0.7071); step 2 takes atom 1 with
    # coefficient 0.5, leaving (-0.3536, 0.3536): ||r||² = 0.25 of ||x||² = 7.8284.
    mp = matching_pursuit(token, dictionary, max_atoms=2)
    assert mp.atom_ids.tolist() == [[0, 1]]
    assert mp.coefficients[0].tolist() == pytest.approx([2.0 + 1 / math.sqrt(2), 0.5], abs=1e-5)
    assert mp.explained_variance.item() == pytest.approx(1 - 0.25 / (5 + 2 * math.sqrt(2)), abs=1e-6)


def test_omp_recovers_a_planted_code_over_a_random_dictionary():
    generator = torch.Generator().manual_seed(1)
    dictionary = torch.randn(64, 32, generator=generator, dtype=torch.float64)
    atoms = unit(dictionary)
    token = 2.0 * atoms[10] - 1.5 * atoms[40] + 1.0 * atoms[3]
    result = orthogonal_matching_pursuit(token, dictionary, max_atoms=6, dtype=torch.float64)
    assert result.atom_ids.tolist() == [10, 40, 3, -1, -1, -1]
    assert result.coefficients[:3].tolist() == pytest.approx([2.0, -1.5, 1.0], abs=1e-10)


def test_pursuit_stops_once_relative_residual_reaches_tolerance():
    atoms = unit(orthogonal_dictionary())
    token = (3.0 * atoms[2] + 0.1 * atoms[5]).float()
    # After atom 2 the relative residual is 0.1 / √9.01 = 0.0333.
    loose = matching_pursuit(token, atoms.float(), max_atoms=4, residual_tol=0.05)
    assert loose.atoms_used.item() == 1
    assert loose.explained_variance.item() == pytest.approx(9.0 / 9.01, abs=1e-6)
    tight = matching_pursuit(token, atoms.float(), max_atoms=4, residual_tol=0.01)
    assert tight.atoms_used.item() == 2


@pytest.mark.parametrize("pursuit", [matching_pursuit, orthogonal_matching_pursuit])
def test_batched_chunked_pursuit_equals_per_token_pursuit(pursuit):
    generator = torch.Generator().manual_seed(2)
    dictionary = torch.randn(64, 32, generator=generator)
    tokens = torch.randn(2, 3, 32, generator=generator)
    batched = pursuit(tokens, dictionary, max_atoms=4, chunk_size=2)
    assert batched.atom_ids.shape == (2, 3, 4)
    assert batched.explained_variance.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            single = pursuit(tokens[i, j], dictionary, max_atoms=4)
            assert torch.equal(batched.atom_ids[i, j], single.atom_ids)
            assert torch.allclose(batched.coefficients[i, j], single.coefficients, atol=1e-5)
            assert batched.explained_variance[i, j].item() == pytest.approx(single.explained_variance.item())


def test_pursuit_rejects_zero_tokens_and_zero_atoms():
    with pytest.raises(ValueError, match="token 1 .* zero norm"):
        matching_pursuit(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.eye(2))
    with pytest.raises(ValueError, match="dictionary row 1 has zero norm"):
        orthogonal_matching_pursuit(torch.ones(1, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="max_atoms"):
        matching_pursuit(torch.ones(1, 2), torch.eye(2), max_atoms=0)


def test_omp_uses_each_atom_at_most_once():
    # Two atoms in 3-d cannot represent x; OMP stops after both instead of repeating one.
    result = orthogonal_matching_pursuit(torch.tensor([[1.0, 1.0, 1.0]]), torch.eye(3)[:2], max_atoms=4)
    assert result.atom_ids.tolist() == [[0, 1, -1, -1]]
    assert result.coefficients[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert result.explained_variance.item() == pytest.approx(2 / 3)


def test_word_token_ids_keep_alphabetic_pieces_of_the_fixture_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE_LLM)
    # Specials 0-2 and bytes 3-258 are never kept; of the merged pieces 259-280 the
    # one-letter ones (▁a ▁b ▁i ▁t), ">\n" (279) and the bare "▁" (281) are dropped.
    expected = [261, 262, 263, 265, 266, 267, 268, 269, 271, 272, 273, 274, 275, 276, 277, 278, 280]
    assert word_token_ids(tokenizer).tolist() == expected
    three_plus = word_token_ids(tokenizer, min_chars=3)
    assert tokenizer.batch_decode([[i] for i in three_plus]) == ["box", "hat", "and", "the", "What", "mage"]


class ListTokenizer:
    """Minimal tokenizer with a fixed piece list (piece text = decoded text)."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.all_special_ids = [0]

    def __len__(self):
        return len(self.pieces)

    def get_added_vocab(self):
        return {"<image>": 1}

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]

    def batch_decode(self, sequences):
        return ["".join(self.pieces[i] for i in seq) for seq in sequences]


def test_word_token_ids_without_alpha_only_keeps_pieces_with_a_letter():
    tokenizer = ListTokenizer(["</s>", "<image>", "<0x41>", " dog", "don't", "3d", "42", "!!", "x"])
    assert word_token_ids(tokenizer).tolist() == [3]
    assert word_token_ids(tokenizer, alpha_only=False).tolist() == [3, 4, 5]
    assert word_token_ids(tokenizer, alpha_only=False, min_chars=1).tolist() == [3, 4, 5, 8]


def test_precision_recall_of_words_is_micro_averaged_over_labelled_patches():
    # Patch 0: {1, 2} vs {2, 7} → 1 hit; patch 1: {3, 4} vs {3} → 1 hit; patch 2 unlabelled.
    recovered = torch.tensor([[1, 2, 2, -1], [3, 4, -1, -1], [5, -1, -1, -1]])
    truth = [[2, 7], [3], []]
    result = precision_recall_of_words(recovered, truth)
    assert result == pytest.approx(
        {
            "precision": 2 / 4,
            "recall": 2 / 3,
            "f1": 4 / 7,
            "true_positives": 2,
            "recovered_total": 4,
            "truth_total": 3,
            "patches_scored": 2,
            "patches_skipped_unlabelled": 1,
        }
    )


def test_precision_recall_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="recovered has 1 patches but truth has 2"):
        precision_recall_of_words([[1]], [[1], [2]])
    with pytest.raises(ValueError, match="true label word"):
        precision_recall_of_words([[1]], [[]])
    with pytest.raises(ValueError, match="no word was recovered"):
        precision_recall_of_words([[-1]], [[3]])


# Negative-coefficient atoms (issue 20): not counted as recovered words, reported apart.


def test_a_planted_negative_coefficient_atom_is_not_a_recovered_word():
    from patch_align.analysis.decomposition import atoms_by_sign, matching_pursuit, word_match_counts

    dictionary = torch.eye(4)
    token = torch.tensor([[3.0, -2.0, 0.0, 0.0]])  # word 0 with +3, word 1 with −2
    code = matching_pursuit(token, dictionary, max_atoms=4)
    assert code.atom_ids[0, :2].tolist() == [0, 1]
    signed = atoms_by_sign(code)
    assert signed.positive_ids[0].tolist() == [0, -1, -1, -1]
    assert signed.negative_ids[0].tolist() == [-1, 1, -1, -1]
    assert signed.net_coefficients[0, :2].tolist() == [3.0, -2.0]
    truth = [{0, 1}]  # both words are labels of the patch
    assert word_match_counts(signed.positive_ids, truth)["true_positives"] == 1
    assert word_match_counts(signed.negative_ids, truth)["true_positives"] == 1
    assert word_match_counts(code.atom_ids, truth)["true_positives"] == 2  # the old, sign-blind count


def test_an_atom_picked_twice_counts_once_with_its_net_coefficient():
    from patch_align.analysis.decomposition import PursuitResult, atoms_by_sign

    code = PursuitResult(
        atom_ids=torch.tensor([[2, 5, 2, -1], [7, 7, -1, -1]]),
        coefficients=torch.tensor([[1.0, -0.5, -1.5, 0.0], [0.25, -0.25, 0.0, 0.0]]),
        explained_variance=torch.zeros(2, dtype=torch.float64),
        atoms_used=torch.tensor([3, 2]),
    )
    signed = atoms_by_sign(code)
    # token 0: atom 2 nets 1 − 1.5 = −0.5 (negative), atom 5 −0.5; token 1: atom 7 nets 0 (neither)
    assert signed.positive_ids.tolist() == [[-1, -1, -1, -1], [-1, -1, -1, -1]]
    assert signed.negative_ids.tolist() == [[2, 5, -1, -1], [-1, -1, -1, -1]]
    assert signed.net_coefficients.tolist() == [[-0.5, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
