from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.data.subsets import class_complete_order, membership

FRACTIONS = (1.0, 0.5, 0.25)


def sparse_histograms(n_tiles: int, n_classes: int, seed: int) -> np.ndarray:
    """Tiles where rare classes appear in only a handful of tiles, as buildings and water do."""
    rng = np.random.default_rng(seed)
    presence = rng.random((n_tiles, n_classes)) < np.linspace(0.9, 0.02, n_classes)
    return (presence * rng.integers(1, 5000, (n_tiles, n_classes))).astype(np.int64)


histograms = st.integers(1, 60).flatmap(
    lambda n: arrays(np.int64, (n, 6), elements=st.sampled_from([0, 0, 0, 1, 17, 4000]))
)


@settings(max_examples=200, deadline=None)
@given(hist=histograms, seed=st.integers(0, 2**31 - 1))
def test_subsets_are_nested_and_class_complete(hist: np.ndarray, seed: int) -> None:
    masks = membership(hist, FRACTIONS, seed)
    assert masks[1.0].all()
    assert not (masks[0.25] & ~masks[0.5]).any()  # 25% within 50%
    assert not (masks[0.5] & ~masks[1.0]).any()  # 50% within 100%
    classes_in_split = hist.sum(axis=0) > 0
    for mask in masks.values():
        assert ((hist[mask].sum(axis=0) > 0) == classes_in_split).all()
        assert mask.sum() >= min(len(hist), int(np.ceil(0.25 * len(hist))))


@settings(max_examples=50, deadline=None)
@given(hist=histograms, seed=st.integers(0, 2**31 - 1))
def test_order_is_a_permutation(hist: np.ndarray, seed: int) -> None:
    order = class_complete_order(hist, seed)
    assert sorted(order.tolist()) == list(range(len(hist)))


def test_same_seed_same_subsets_different_seed_different() -> None:
    hist = sparse_histograms(400, 5, seed=0)
    first = membership(hist, FRACTIONS, seed=11)
    second = membership(hist, FRACTIONS, seed=11)
    other = membership(hist, FRACTIONS, seed=12)
    for fraction in FRACTIONS:
        assert (first[fraction] == second[fraction]).all()
    assert not (first[0.25] == other[0.25]).all()


def test_sizes_follow_the_fractions_when_classes_allow() -> None:
    hist = sparse_histograms(400, 5, seed=1)
    masks = membership(hist, FRACTIONS, seed=0)
    assert [int(masks[f].sum()) for f in FRACTIONS] == [400, 200, 100]


def test_a_class_in_one_tile_only_is_kept_in_every_subset() -> None:
    hist = np.zeros((100, 3), dtype=np.int64)
    hist[:, 0] = 10
    hist[73, 2] = 1  # the only tile holding class 2
    for seed in range(20):
        assert membership(hist, (0.05,), seed)[0.05][73]
