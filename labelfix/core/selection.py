"""Per-class noise rates from the confident joint (no oracle), and small-loss selection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfix.core.sparse import chunks, is_sparse, read_rows


@dataclass(frozen=True)
class NoiseEstimate:
    """Attributes:
    joint: (C, C) calibrated confident joint, rows = given class, columns = true class; sums to N.
    rates: (C,) estimated share of wrong labels among samples given each class.
    thresholds: (C,) per-class confidence thresholds t_k.
    """

    joint: np.ndarray
    rates: np.ndarray
    thresholds: np.ndarray

    @property
    def overall(self) -> float:
        total = self.joint.sum()
        return float(1.0 - np.trace(self.joint) / total) if total > 0 else 0.0

    @property
    def matrix(self) -> np.ndarray:
        """P(true class = column | given class = row)."""
        rows = self.joint.sum(axis=1, keepdims=True)
        return np.divide(self.joint, rows, out=np.zeros_like(self.joint), where=rows > 0)


def confident_joint(probs: np.ndarray, y: np.ndarray) -> NoiseEstimate:
    """Confident Learning (Northcutt et al. 2021) counts, calibrated to the given class sizes.

    probs: (N, C) out-of-sample probabilities; y: (N,) given labels.

    Why not cleanlab.count.compute_confident_joint: it differs on purpose in three places. (1) A
    row above several thresholds goes to its highest probability among those classes (cleanlab:
    the overall argmax, which may be a class below its own threshold). (2) The calibrated joint
    stays fractional (cleanlab rounds it to integers, which puts a small class's noise rate in
    steps of 1/n_k). (3) A class with no confident member is assumed clean instead of all-noise.
    It is the starting T of labelfix.core.detect's noise posterior, refitted there anyway.
    """
    n, c = probs.shape
    counts = np.bincount(y, minlength=c).astype(np.float64)
    if is_sparse(c):
        return _confident_joint_chunked(probs, y, counts)
    thresholds = np.array([probs[y == k, k].mean() if counts[k] > 0 else 1.0 for k in range(c)], dtype=np.float64)
    above = probs >= thresholds[None, :] - 1e-6
    masked = np.where(above, probs, -np.inf)
    true_guess = masked.argmax(axis=1)
    has = above.any(axis=1)
    joint = np.zeros((c, c), dtype=np.float64)
    np.add.at(joint, (y[has], true_guess[has]), 1.0)
    joint = calibrated_joint(joint, counts)
    rates = 1.0 - np.divide(np.diag(joint), counts, out=np.ones(c), where=counts > 0)
    rates = np.clip(rates, 0.0, 1.0)
    return NoiseEstimate(joint, rates, thresholds)


def calibrated_joint(joint: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Confident counts (rows given, columns true) calibrated so each row sums to the number of
    samples given that class; a class with no confident member is assumed clean."""
    c = len(counts)
    row = joint.sum(axis=1, keepdims=True)
    joint = np.where(row > 0, joint / np.maximum(row, 1e-12) * counts[:, None], 0.0)
    for k in range(c):  # a class with no confident member: assume it clean
        if row[k, 0] == 0 and counts[k] > 0:
            joint[k, k] = counts[k]
    return joint


def _confident_joint_chunked(probs: np.ndarray, y: np.ndarray, counts: np.ndarray) -> NoiseEstimate:
    """confident_joint above SPARSE_ABOVE classes: the same counts in chunks of rows (no N x C
    temporaries); the thresholds are per-class means by bincount."""
    n, c = probs.shape
    at_y = given_probs(probs, y).astype(np.float64)
    thresholds = np.divide(np.bincount(y, weights=at_y, minlength=c), counts, out=np.ones(c), where=counts > 0)
    joint = np.zeros((c, c), dtype=np.float64)
    for s in chunks(n, c):
        block = read_rows(probs, s, probs.dtype)
        above = block >= thresholds[None, :] - 1e-6
        true_guess = np.where(above, block, -np.inf).argmax(axis=1)
        has = above.any(axis=1)
        np.add.at(joint, (y[s][has], true_guess[has]), 1.0)
    joint = calibrated_joint(joint, counts)
    rates = np.clip(1.0 - np.divide(np.diag(joint), counts, out=np.ones(c), where=counts > 0), 0.0, 1.0)
    return NoiseEstimate(joint, rates, thresholds)


def given_probs(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """probs[i, y_i] for every row, read in row blocks (probs may be a memory map)."""
    if not isinstance(probs, np.memmap):
        return probs[np.arange(len(y)), y]
    out = np.empty(len(y), dtype=probs.dtype)
    for s in chunks(*probs.shape):
        out[s] = read_rows(probs, s, probs.dtype)[np.arange(s.stop - s.start), y[s]]
    return out


def per_sample_loss(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(given_probs(probs, y), 1e-12, 1.0)).astype(np.float32)


def small_loss_mask(loss: np.ndarray, y: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Within each class k keep the ceil((1 - rho_k) n_k) smallest-loss samples (at least one)."""
    keep = np.zeros(len(y), dtype=bool)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        m = max(1, int(np.ceil((1.0 - rates[k]) * len(idx))))
        keep[idx[np.argsort(loss[idx], kind="stable")[:m]]] = True
    return keep
