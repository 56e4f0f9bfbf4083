"""Is a source of probabilities better than chance? The one-sided binomial tests behind the
auto teacher's stall detector (training agreement) and scan's weak-teacher gate (out-of-sample
agreement of any probability source)."""

from __future__ import annotations

import numpy as np

# One-sided binomial significance below which an agreement count is "clearly above" the
# majority-class share. Used by the stall detector (training agreement) and by the weak-teacher
# gate (out-of-sample agreement of any probability source).
CLEARLY_ABOVE_P = 1e-3
DENSE_ORDER_CHECK = 2048  # classes up to which column_order_check solves the exact assignment (32 MB)


def majority_share(y: np.ndarray, num_classes: int) -> float:
    """Agreement of the best label-blind prediction (always the largest class)."""
    return float(np.bincount(y, minlength=num_classes).max() / max(len(y), 1))


def binomial_excess_p(hits: int, n: int, p0: float) -> float:
    """P(X >= hits) for X ~ Binomial(n, p0): how surprising `hits` agreements out of `n` are for
    a predictor that agrees with the labels no more often than `p0`."""
    from scipy.stats import binom

    if n <= 0:
        return 1.0
    return float(binom.sf(int(hits) - 1, int(n), min(max(float(p0), 0.0), 1.0)))


def clearly_above_chance(hits: int, n: int, p0: float, alpha: float = CLEARLY_ABOVE_P) -> bool:
    return binomial_excess_p(hits, n, p0) < alpha


def chance_agreement(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Agreement of predictions independent of the labels with the same class frequencies:
    sum_k P(predicted k) P(given k) (Cohen's kappa's chance term)."""
    n = max(len(y), 1)
    return float(np.dot(np.bincount(pred, minlength=num_classes) / n, np.bincount(y, minlength=num_classes) / n))


def row_argmax(probs) -> np.ndarray:
    """probs.argmax(1), in row blocks where probs is a memory map."""
    if not isinstance(probs, np.memmap):
        return np.asarray(probs).argmax(1)
    from labelfix.core.sparse import chunks, read_rows

    out = np.empty(len(probs), dtype=np.int64)
    for s in chunks(*probs.shape):
        out[s] = read_rows(probs, s, probs.dtype).argmax(1)
    return out


def column_order_check(pred: np.ndarray, y: np.ndarray, num_classes: int) -> dict | None:
    """Do the probability columns follow the class order? `pred` is the argmax column of each
    row, `y` its given class. Counts the (column, class) pairs and finds the one-to-one
    relabelling of columns that agrees most with the given labels: an exact assignment on the
    C x C counts up to DENSE_ORDER_CHECK classes, above that the greedy matching of the pairs in
    decreasing count (at least half the best; it only misses cases, never adds them): never N x C,
    nor C x C for thousands of classes. Misaligned: the relabelling agrees at least twice as often
    as the columns as they are, and clearly above chance (the weak-teacher gate's binomial test).
    A usable model in the right order puts most of each class on its own column, so reordering
    cannot double its agreement; names sorted as text while the columns follow another order
    (c10 before c2) gave 2.1% as they are vs 54.9% reordered. Returns None when aligned, else
    {"agreement", "reordered_agreement", "column_class": column j -> the class it fits}."""
    n, c = max(len(y), 1), num_classes
    code, count = np.unique(np.asarray(pred, dtype=np.int64) * c + np.asarray(y, dtype=np.int64), return_counts=True)
    col, cls = code // c, code % c
    as_is = int(count[col == cls].sum())
    chance = chance_agreement(pred, y, c)
    column_class = np.full(c, -1, dtype=np.int64)
    if c <= DENSE_ORDER_CHECK:
        from scipy.optimize import linear_sum_assignment

        m = np.zeros((c, c), dtype=np.int64)
        m[col, cls] = count
        rows, cols = linear_sum_assignment(m, maximize=True)
        column_class[rows] = cols
    else:
        taken = np.zeros(c, dtype=bool)
        for i in np.argsort(-count, kind="stable"):
            if column_class[col[i]] < 0 and not taken[cls[i]]:
                column_class[col[i]], taken[cls[i]] = cls[i], True
    best = int(count[column_class[col] == cls].sum())
    if best < 2 * as_is or not clearly_above_chance(best, n, chance):
        return None
    free = np.setdiff1d(np.arange(c), column_class[column_class >= 0])  # columns no row fits: any class left
    column_class[column_class < 0] = free
    return {"agreement": as_is / n, "reordered_agreement": best / n, "column_class": column_class}


def agreement_check(probs: np.ndarray, y: np.ndarray, num_classes: int, alpha: float = CLEARLY_ABOVE_P) -> dict:
    """The weak-teacher test of any source of out-of-sample probabilities.

    Chance is the agreement that predictions independent of the labels would reach with the
    same class frequencies (Cohen's kappa's chance term, sum_k P(predicted k) P(given k)); for a
    predictor that always says the largest class it is the majority-class share. The teacher is
    weak when its agreement with the given labels is not clearly above it: one-sided binomial
    P(X >= hits | n, chance) >= alpha. The majority-class share alone (used before) refused good
    teachers on imbalanced data (93/7 classes, 3% noise, AUROC 0.97) and on 2-3 classes with
    heavy noise. When even full agreement could not pass (chance ** n >= alpha: a handful of
    samples), the test is `testable: False` and never calls a teacher weak.
    """
    n = int(len(y))
    pred = row_argmax(probs)
    hits = int((pred == y).sum())
    chance = chance_agreement(pred, y, num_classes)
    p = binomial_excess_p(hits, n, chance)
    testable = binomial_excess_p(n, n, chance) < alpha
    return {
        "agreement": round(hits / max(n, 1), 4),
        "chance": round(chance, 4),
        "majority_share": round(majority_share(y, num_classes), 4),
        "samples": n,
        "p_value": float(f"{p:.3g}"),
        "alpha": alpha,
        "testable": bool(testable),
        "weak": bool(testable and p >= alpha),
        "test": "one-sided binomial: P(X >= agreeing samples | n, chance = sum_k P(predicted k) P(given k))",
    }


def weak_teacher_message(check: dict, source: str, allowed: bool = False) -> str:
    """One line for WeakTeacher and for the summary warning; `source` names the probabilities."""
    return (
        f"{source} agree with the given labels on {check['agreement']:.1%} of {check['samples']} held-out samples, "
        f"not clearly above chance ({check['chance']:.1%}, what predictions unrelated to the labels would agree; one-sided binomial "
        f"p = {check['p_value']:.2g} >= {check['alpha']:g}): flags and suggestions "
        + (
            "are noise (written anyway: --allow-weak-teacher)"
            if allowed
            else "would be noise; use a stronger teacher (more data or --epochs, a pretrained --teacher, --pred-probs from "
            "a model you trust) or check the labels, or pass --allow-weak-teacher to write the outputs anyway"
        )
    )
