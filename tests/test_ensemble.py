"""Who trains and early-stops on which sentences, and which members form an ensemble of k, over many seeds:
a property that holds for one seed by luck (a second permutation that happens to nest, a tenth that happens
not to overlap) fails for some of 200."""

import numpy as np
import pytest

from ensemble_distill.ensemble import (
    MAX_MEMBERS,
    N_TENTHS,
    distillation_sentences,
    member_sentences,
    nested_subsets,
    tenths,
)
from ensemble_distill.errors import UserError

SEEDS = range(200)


def corpus_size(seed: int) -> int:
    """Sizes from 10 (one sentence a tenth) to a few hundred, most not divisible by 10."""
    return 10 + (seed * 37) % 311


@pytest.mark.parametrize("members, sizes", [(9, [3, 6, 9]), (9, [9, 6, 3, 3]), (7, [3, 5, 7]), (5, [1, 2, 5])])
def test_ensembles_are_nested_prefixes_of_one_seeded_order_over_many_seeds(members, sizes):
    in_smallest = np.zeros(members)
    for seed in SEEDS:
        subsets = nested_subsets(members, sizes, split_seed=seed)
        assert sorted(subsets) == sorted(set(sizes))
        for k, ids in subsets.items():
            assert len(ids) == k and len(set(ids)) == k and set(ids) <= set(range(members)), (seed, k, ids)
        chain = [set(subsets[k]) for k in sorted(subsets)]
        assert all(small < large for small, large in zip(chain, chain[1:])), (seed, subsets)
        assert subsets == nested_subsets(members, sizes, split_seed=seed)  # seeded: the same run, the same members
        in_smallest[subsets[min(sizes)]] += 1
    # The order is a seeded permutation, not the member ids in order: over 200 seeds every member is in the
    # smallest ensemble about k/members of the time (binomial, 200 draws: within 6 s.d. of the mean).
    expected = len(SEEDS) * min(sizes) / members
    sd = np.sqrt(len(SEEDS) * min(sizes) / members * (1 - min(sizes) / members))
    assert np.all(np.abs(in_smallest - expected) < 6 * sd), in_smallest


@pytest.mark.parametrize("members, sizes, bad", [(3, [4], 4), (9, [3, 0], 0), (2, [-1, 2], -1)])
def test_subset_sizes_outside_the_members_are_refused(members, sizes, bad):
    with pytest.raises(UserError, match=f"subset_sizes: {bad} is not between 1 and ensemble.members = {members}"):
        nested_subsets(members, sizes, split_seed=0)


def test_tenths_partition_the_sentences_into_near_equal_parts_over_many_seeds():
    for seed in SEEDS:
        n = corpus_size(seed)
        parts = tenths(n, seed)
        assert len(parts) == N_TENTHS
        assert sorted(np.concatenate(parts).tolist()) == list(range(n)), seed  # disjoint and covering
        assert {len(p) for p in parts} <= {n // N_TENTHS, -(-n // N_TENTHS)}, (seed, [len(p) for p in parts])


@pytest.mark.parametrize("member_data", ["eight_tenths", "nine_tenths"])
def test_each_member_holds_out_its_own_tenth_and_none_early_stops_on_the_distillation_tenth(member_data):
    """Member i early-stops on tenth i and trains on the other nine (nine_tenths, the paper's reference) or the
    other eight (eight_tenths: the last tenth, the student's validation data, is no member's training data either);
    the student trains on the other 9/10."""
    for seed in SEEDS:
        n = corpus_size(seed)
        everything = set(range(n))
        distillation = set(distillation_sentences(n, seed).tolist())
        assert len(distillation) >= n // N_TENTHS
        held_out_tenths = []
        for member in range(MAX_MEMBERS):
            train, held = (set(a.tolist()) for a in member_sentences(n, member, seed, member_data))
            assert train and held, (seed, member)
            assert not train & held and not held & distillation, (seed, member)
            assert train | held | distillation == everything, (seed, member)
            if member_data == "eight_tenths":
                assert not train & distillation, (seed, member)
                assert len(train) >= n - 2 * -(-n // N_TENTHS), (seed, member)
            else:
                assert distillation <= train and train == everything - held, (seed, member)
            assert len(held) <= -(-n // N_TENTHS), (seed, member)
            held_out_tenths.append(held)
        # Nine distinct early-stopping tenths: together with the distillation tenth, they partition the data.
        assert sorted([*(s for held in held_out_tenths for s in held), *distillation]) == list(range(n)), seed


def test_tenths_are_a_seeded_shuffle_not_file_order():
    """CoNLL files are ordered by document: contiguous tenths would validate on other documents than the
    members train on. The distillation tenth differs between seeds and is spread over the file."""
    n = 100
    distillation = [tuple(distillation_sentences(n, seed).tolist()) for seed in SEEDS]
    assert len(set(distillation)) == len(SEEDS)
    assert distillation[0] == tuple(distillation_sentences(n, 0).tolist())  # and the same for the same seed
    spread = np.array([np.ptp(d) for d in distillation])
    assert np.median(spread) > 0.5 * n, np.median(spread)


@pytest.mark.parametrize("member", [-1, MAX_MEMBERS, 12])
def test_a_member_beyond_the_nine_tenths_is_refused(member):
    with pytest.raises(UserError, match="at most 9 members"):
        member_sentences(50, member, split_seed=0)
    with pytest.raises(ValueError, match="member_data"):
        member_sentences(50, 0, split_seed=0, member_data="all")
