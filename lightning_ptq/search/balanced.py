"""Class-balanced calibration and validation sets drawn from a pool of images.

A calibration or validation set of the first (or random) N images can miss a rare class
entirely; then its ranges are never observed and its accuracy never checked. Here each set
gets ``per_class`` images of every class: for classification one label per image, for detection
the set of classes present in the image (an image counts for each of its classes, so the
rarest classes are served first). The two sets are disjoint, and they come from the pool only:
the caller never passes the test split.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..core import UserError


class PoolTooSmallError(UserError, ValueError):
    """The pool lacks images of some classes for the requested balanced sizes."""


def _class_name(c: int, class_names: Sequence[str] | None) -> str:
    return repr(class_names[c]) if class_names is not None else str(c)


def balanced_split(
    image_classes: Sequence[Iterable[int]],
    num_classes: int,
    calib_per_class: int,
    val_per_class: int,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Disjoint calibration and validation index lists into the pool, each with at least
    ``calib_per_class`` / ``val_per_class`` images of every class in ``range(num_classes)``.

    ``image_classes[i]`` holds the classes of pool image ``i`` (one label, or the classes of its
    boxes). Raises :class:`PoolTooSmallError` naming every class that is missing or short.
    """
    for name, value in (("calib_per_class", calib_per_class), ("val_per_class", val_per_class)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer (images per class).")
    classes = [frozenset(int(c) for c in cs) for cs in image_classes]
    counts = np.zeros(num_classes, dtype=int)
    for cs in classes:
        for c in cs:
            if not 0 <= c < num_classes:
                raise ValueError(f"pool image class {c} is outside 0..{num_classes - 1}.")
            counts[c] += 1
    need = calib_per_class + val_per_class
    short = [c for c in range(num_classes) if counts[c] < need]
    if short:
        missing = [_class_name(c, class_names) for c in short if counts[c] == 0]
        low = [f"{_class_name(c, class_names)} ({counts[c]})" for c in short if counts[c] > 0]
        parts = ([f"missing from the pool: {', '.join(missing)}"] if missing else []) + (
            [f"short: {', '.join(low)}"] if low else [])
        raise PoolTooSmallError(
            f"the pool of {len(classes)} images cannot give {calib_per_class} calibration + {val_per_class} "
            f"validation images per class ({need} each); {'; '.join(parts)}. Lower the per-class sizes "
            f"or add images of those classes to the pool."
        )
    order = np.random.default_rng(seed).permutation(len(classes))
    taken: set[int] = set()
    calib = _pick(classes, order, num_classes, calib_per_class, taken, class_names)
    val = _pick(classes, order, num_classes, val_per_class, taken, class_names)
    return calib, val


def _pick(classes, order, num_classes, per_class, taken, class_names) -> list[int]:
    """Greedy, rarest class first: add images of each class until the set holds ``per_class``."""
    have = np.zeros(num_classes, dtype=int)
    chosen: list[int] = []
    available = np.array([sum(c in classes[i] for i in order if i not in taken) for c in range(num_classes)])
    for c in np.argsort(available, kind="stable"):
        for i in order:
            if have[c] >= per_class:
                break
            if i in taken or c not in classes[i]:
                continue
            taken.add(int(i))
            chosen.append(int(i))
            for other in classes[i]:
                have[other] += 1
        if have[c] < per_class:  # overlaps used up images the class needed
            raise PoolTooSmallError(
                f"class {_class_name(int(c), class_names)} got only {have[c]} of {per_class} images: the "
                f"pool's images of it were taken by other classes. Lower the per-class sizes or add images."
            )
    return sorted(chosen)


def random_split(pool_size: int, calib_size: int, val_size: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Disjoint random calibration and validation index lists of the given sizes (the baseline
    the balanced selection is compared with)."""
    if calib_size + val_size > pool_size:
        raise PoolTooSmallError(f"the pool has {pool_size} images; {calib_size} + {val_size} were asked for.")
    order = np.random.default_rng(seed).permutation(pool_size)
    return sorted(order[:calib_size].tolist()), sorted(order[calib_size:calib_size + val_size].tolist())
