"""Seeded label-noise injection, for the demo and benchmarks."""

from __future__ import annotations

import numpy as np


def symmetric_noise(y: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Each label is replaced, with probability `rate`, by a different class chosen uniformly.

    Exactly the flipped rows are wrong, so `rate` is the expected share of wrong labels.
    """
    rng = np.random.default_rng([seed, 31337])
    flip = rng.random(len(y)) < rate
    noisy = y.copy()
    noisy[flip] = (y[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
    return noisy
