"""Per-sample label quality and the suggested label (flags themselves come from labelfix.core.detect)."""

from __future__ import annotations

import numpy as np


def label_quality(m: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Normalised margin of the evidence at the given label, in [0, 1] (0.5 = a tie)."""
    n = len(y)
    at_y = m[np.arange(n), y]
    other = m.copy()
    other[np.arange(n), y] = -np.inf
    return ((at_y - other.max(axis=1) + 1.0) / 2.0).astype(np.float32)


def alternative_label(posterior: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The most probable class other than the given one, per row (the suggestion for a flag)."""
    other = np.array(posterior, dtype=np.float64, copy=True)
    other[np.arange(len(y)), y] = -np.inf
    return other.argmax(axis=1)
