"""Specification of the modality-grouped sampler behind `--group_by_modality_length`."""

from __future__ import annotations

import pytest
import torch

from llava.train.sampler import ModalityLengthGroupedSampler, modality_length_grouped_indices

# 11 image samples (positive lengths) and 7 text-only ones (negative): neither fills a whole
# number of batches of 4, so there is exactly one mixed tail batch.
LENGTHS = [13, 19, -6, 40, 7, -3, 22, 9, -12, 30, 5, -8, 17, 11, -4, 26, -9, -15]


def grouped(lengths: list[int], batch_size: int, seed: int) -> list[int]:
    return modality_length_grouped_indices(
        lengths, batch_size, world_size=1, generator=torch.Generator().manual_seed(seed)
    )


def batches(order: list[int], size: int) -> list[list[int]]:
    return [order[k : k + size] for k in range(0, len(order), size)]


def is_image(i: int) -> bool:
    return LENGTHS[i] > 0


def test_order_is_a_permutation_of_all_samples():
    order = grouped(LENGTHS, batch_size=4, seed=0)
    assert sorted(order) == list(range(len(LENGTHS)))


@pytest.mark.parametrize("seed", range(5))
def test_only_the_final_tail_mixes_modalities(seed):
    order = grouped(LENGTHS, batch_size=4, seed=seed)
    # 11 image samples = 2 full batches + 3 left over; 7 text-only = 1 full batch + 3 left over:
    # three single-modality batches, then the 6 left-over samples joined at the end
    for chunk in batches(order[:12], 4):
        assert len({is_image(i) for i in chunk}) == 1, chunk
    tail = order[12:]
    assert sum(is_image(i) for i in tail) == 3
    assert sum(not is_image(i) for i in tail) == 3


def test_batches_within_a_megabatch_run_longest_first():
    order = grouped(LENGTHS, batch_size=4, seed=3)
    for chunk in batches(order, 4)[:3]:  # the three full, single-modality megabatches
        sizes = [abs(LENGTHS[i]) for i in chunk]
        assert sizes == sorted(sizes, reverse=True)


def test_same_seed_gives_the_same_order_and_other_seeds_differ():
    assert grouped(LENGTHS, 4, seed=7) == grouped(LENGTHS, 4, seed=7)
    assert len({tuple(grouped(LENGTHS, 4, seed=s)) for s in range(6)}) > 1


def test_sampler_is_deterministic_per_epoch_and_changes_with_the_epoch():
    sampler = ModalityLengthGroupedSampler(LENGTHS, batch_size=4, world_size=1, seed=42)
    first = list(sampler)
    assert list(sampler) == first
    assert len(sampler) == len(LENGTHS)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    again = ModalityLengthGroupedSampler(LENGTHS, batch_size=4, world_size=1, seed=42)
    again.set_epoch(1)
    assert list(again) == second


def test_single_modality_data_is_still_a_permutation():
    lengths = [5, 9, 3, 7, 2]
    order = grouped(lengths, batch_size=2, seed=1)
    assert sorted(order) == [0, 1, 2, 3, 4]


def test_world_size_scales_the_megabatch():
    # 8 image samples, batch 2 x world 2 = megabatches of 4: each holds one modality
    lengths = [3, 4, 5, 6, 7, 8, 9, 10, -1, -2, -3, -4]
    order = modality_length_grouped_indices(lengths, 2, 2, torch.Generator().manual_seed(0))
    for chunk in batches(order, 4):
        assert len({lengths[i] > 0 for i in chunk}) == 1


def test_zero_length_sample_is_rejected():
    with pytest.raises(ValueError, match="length 0"):
        grouped([3, 0, -2], batch_size=2, seed=0)


# Across processes: the Trainer hands the sampler to accelerate, which gives process r the
# sampler's batches r, r + W, r + 2W, ... (`prepare_data_loader`, as `accelerator.prepare` does).


def shards(
    lengths: list[int], batch_size: int, world_size: int, accumulation: int = 1, epoch: int = 0
) -> list[list[list[int]]]:
    """The batches each of `world_size` processes draws in `epoch`, as LLaVATrainer builds the sampler."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    per_process = []
    for rank in range(world_size):
        sampler = ModalityLengthGroupedSampler(
            lengths, batch_size=batch_size, world_size=world_size * accumulation, seed=3
        )
        indices = list(range(len(lengths)))
        loader = DataLoader(indices, batch_size=batch_size, sampler=sampler, collate_fn=list)
        loader = prepare_data_loader(loader, num_processes=world_size, process_index=rank)
        loader.set_epoch(epoch)
        per_process.append(list(loader))
    return per_process


def optimizer_steps(per_process: list[list[list[int]]], accumulation: int) -> list[list[int]]:
    """The samples of each optimizer step: `accumulation` micro-batches of every process."""
    steps = range(len(per_process[0]) // accumulation)
    window = [slice(k * accumulation, (k + 1) * accumulation) for k in steps]
    return [[i for batches in per_process for batch in batches[w] for i in batch] for w in window]


@pytest.mark.parametrize("world_size, accumulation", [(2, 1), (2, 2), (4, 1)])
def test_processes_get_disjoint_samples_and_every_sample_once_per_epoch(world_size, accumulation):
    lengths = LENGTHS[:16]  # a multiple of batch 2 x every world size here
    orders = []
    for epoch in (0, 1):
        per_process = shards(lengths, 2, world_size, accumulation, epoch)
        seen = [i for batches in per_process for batch in batches for i in batch]
        assert sorted(seen) == list(range(16)), epoch
        orders.append(per_process)
    assert orders[0] != orders[1]  # set_epoch reaches the sampler through accelerate's wrapper


@pytest.mark.parametrize("world_size, accumulation", [(2, 1), (2, 2)])
def test_each_step_over_processes_holds_the_samples_of_one_process_with_the_whole_batch(
    world_size, accumulation
):
    # so 2 ranks x batch b see the global batches of 1 rank x batch 2b (what makes them equal)
    lengths = LENGTHS[:16]
    steps = optimizer_steps(shards(lengths, 2, world_size, accumulation), accumulation)
    whole = 2 * world_size * accumulation
    single = optimizer_steps(shards(lengths, whole, 1), 1)
    assert [sorted(step) for step in steps] == [sorted(step) for step in single]
    for step in steps[:-1]:  # only the final tail mixes modalities
        assert len({lengths[i] > 0 for i in step}) == 1, step


def test_an_uneven_last_step_is_filled_from_the_start_of_the_epoch():
    # 18 samples over 2 processes x batch 2: accelerate's even_batches repeats 2 samples
    per_process = shards(LENGTHS, 2, 2)
    seen = [i for batches in per_process for batch in batches for i in batch]
    assert len(seen) == 20 and set(seen) == set(range(18))
    first_step = per_process[0][0] + per_process[1][0]
    repeated = [i for i in set(seen) if seen.count(i) > 1]
    assert sorted(repeated) == sorted(per_process[1][-1]) and set(repeated) <= set(first_step)
