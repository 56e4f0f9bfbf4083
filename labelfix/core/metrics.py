"""Detection metrics against a known truth (demo, tests, benchmarks)."""

from __future__ import annotations

import numpy as np


def precision_recall_f1(flags: np.ndarray, truth: np.ndarray) -> dict:
    flags, truth = np.asarray(flags, bool), np.asarray(truth, bool)
    tp = int((flags & truth).sum())
    fp = int((flags & ~truth).sum())
    fn = int((~flags & truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def auroc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of `score` for detecting `truth` (ties get average ranks)."""
    from scipy.stats import rankdata

    truth = np.asarray(truth, bool)
    npos, nneg = truth.sum(), (~truth).sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - npos * (npos + 1) / 2) / (npos * nneg))
