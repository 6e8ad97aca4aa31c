from collections import Counter

import pytest
from omegaconf import OmegaConf

from lightning_ptq.search import PoolTooSmallError, balanced_split, random_split
from lightning_ptq.search.job import select_sets


def test_classification_sets_have_exactly_per_class_images_and_are_disjoint():
    labels = [[i % 5] for i in range(100)]  # 20 per class
    calib, val = balanced_split(labels, 5, calib_per_class=4, val_per_class=6, seed=1)
    assert Counter(labels[i][0] for i in calib) == {c: 4 for c in range(5)}
    assert Counter(labels[i][0] for i in val) == {c: 6 for c in range(5)}
    assert not set(calib) & set(val)
    assert balanced_split(labels, 5, 4, 6, seed=1) == (calib, val)  # the seed decides
    assert balanced_split(labels, 5, 4, 6, seed=2) != (calib, val)


def test_detection_sets_cover_the_rare_class_first():
    # class 2 appears only in images that also hold class 0; class 0 is everywhere
    pool = [{0}] * 50 + [{0, 2}] * 6 + [{1}] * 20
    calib, val = balanced_split(pool, 3, calib_per_class=3, val_per_class=3, seed=0)
    for chosen in (calib, val):
        counts = Counter(c for i in chosen for c in pool[i])
        assert all(counts[c] >= 3 for c in range(3))
    assert not set(calib) & set(val)


def test_a_pool_too_small_names_the_short_and_the_missing_classes():
    pool = [[0]] * 10 + [[1]] * 3
    with pytest.raises(PoolTooSmallError, match=r"missing from the pool: 'cat'; short: 'dog' \(3\)"):
        balanced_split(pool, 3, 2, 2, class_names=["bird", "dog", "cat"])


def test_bad_sizes_and_random_baseline():
    with pytest.raises(ValueError, match="calib_per_class=0 must be a positive integer"):
        balanced_split([[0]], 1, 0, 1)
    calib, val = random_split(50, 10, 20, seed=3)
    assert len(calib) == 10 and len(val) == 20 and not set(calib) & set(val)
    with pytest.raises(PoolTooSmallError, match="the pool has 5 images; 4 \\+ 4 were asked for"):
        random_split(5, 4, 4)


def test_random_selection_draws_as_many_images_as_the_balanced_one():
    pool = [{0, 1, 2}] * 30 + [{1}] * 30  # detection-like: most images hold every class
    node = OmegaConf.create({"selection": "balanced", "calib_per_class": 4, "val_per_class": 4, "seed": 0})
    calib, val = select_sets(pool, 3, ["a", "b", "c"], node)
    node.selection = "random"
    r_calib, r_val = select_sets(pool, 3, ["a", "b", "c"], node)
    assert (len(r_calib), len(r_val)) == (len(calib), len(val)) and len(calib) < 4 * 3
