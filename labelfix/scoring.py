"""From evidence to per-sample quality, flags and suggestions (algorithm.md step 9)."""

from __future__ import annotations

import numpy as np


def label_quality(m: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Normalised margin of the evidence at the given label, in [0, 1] (0.5 = a tie)."""
    n = len(y)
    at_y = m[np.arange(n), y]
    other = m.copy()
    other[np.arange(n), y] = -np.inf
    return ((at_y - other.max(axis=1) + 1.0) / 2.0).astype(np.float32)


def flag_issues(
    m: np.ndarray, y: np.ndarray, clean_prob: np.ndarray, rates: np.ndarray, quality: np.ndarray
) -> np.ndarray:
    """Flag when the sample is likely noisy (c < 0.5), the evidence prefers another class, and
    the sample lies within the top ceil(rho_k n_k) of its class by 1 - quality."""
    cand = (clean_prob < 0.5) & (m.argmax(axis=1) != y)
    flags = np.zeros(len(y), dtype=bool)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        budget = int(np.ceil(rates[k] * len(idx)))
        if budget == 0:
            continue
        top = idx[np.argsort(quality[idx], kind="stable")[:budget]]
        flags[top] = True
    return flags & cand


def issue_score(quality: np.ndarray, clean_prob: np.ndarray) -> np.ndarray:
    """Ranking score, higher = more likely wrong: mean of (1 - quality) and (1 - clean_prob)."""
    return (0.5 * (1.0 - quality) + 0.5 * (1.0 - clean_prob)).astype(np.float32)
