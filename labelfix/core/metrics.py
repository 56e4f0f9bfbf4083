"""Detection metrics against a known truth (demo, tests, benchmarks), from sklearn.metrics."""

from __future__ import annotations

import numpy as np


def precision_recall_f1(flags: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall and F1 of `flags` for detecting `truth` (0 where undefined), and counts."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    flags, truth = np.asarray(flags, bool), np.asarray(truth, bool)
    p, r, f1, _ = precision_recall_fscore_support(truth, flags, average="binary", zero_division=0)
    (_tn, fp), (fn, tp) = confusion_matrix(truth, flags, labels=[False, True])
    return {"precision": float(p), "recall": float(r), "f1": float(f1), "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def auroc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of `score` for detecting `truth` (NaN when one class is absent)."""
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(truth, bool)
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, np.asarray(score, dtype=np.float64)))
