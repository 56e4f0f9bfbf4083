"""Label propagation over the kNN graph (Zhou et al. 2004, as in LP-DeepSSL and AML-KD).

The graph is sparse (N x N with N k non-zeros): memory O(N k + N C).
"""

from __future__ import annotations

import numpy as np

from labelfix.core.graph import KnnGraph


def normalized_adjacency(graph: KnnGraph, gamma: float = 3.0):
    """W_n = D^-1/2 (A + A^T) D^-1/2 with a_ij = max(0, s_ij)^gamma, zero diagonal."""
    import scipy.sparse as sp

    n, k = graph.ids.shape
    rows = np.repeat(np.arange(n), k)
    cols = graph.ids.ravel()
    vals = np.maximum(graph.sims.ravel(), 0.0).astype(np.float64) ** gamma
    off = rows != cols
    a = sp.csr_matrix((vals[off], (rows[off], cols[off])), shape=(n, n))
    w = (a + a.T).tocsr()
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    d = sp.diags(inv)
    return (d @ w @ d).tocsr()


def propagate(wn, seeds: np.ndarray, alpha: float = 0.99, iters: int = 20) -> np.ndarray:
    """Solve (I - alpha W_n) Z = Y for every column of `seeds` (N, C) by conjugate gradients."""
    y = np.asarray(seeds, dtype=np.float64)
    x = np.zeros_like(y)
    r = y.copy()
    p = r.copy()
    rs = (r * r).sum(axis=0)
    for _ in range(iters):
        ap = p - alpha * (wn @ p)
        denom = (p * ap).sum(axis=0)
        a = np.divide(rs, denom, out=np.zeros_like(rs), where=denom > 1e-30)
        x += p * a
        r -= ap * a
        rs_new = (r * r).sum(axis=0)
        beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 1e-30)
        p = r + p * beta
        rs = rs_new
        if rs.max() < 1e-20:
            break
    return x


def seed_matrix(y: np.ndarray, weights: np.ndarray, mask: np.ndarray, c: int) -> np.ndarray:
    """Y[i, y_i] = w_i for seeds (mask), each class column divided by its seed count."""
    n = len(y)
    seeds = np.zeros((n, c), dtype=np.float64)
    idx = np.flatnonzero(mask)
    seeds[idx, y[idx]] = weights[idx]
    counts = np.bincount(y[idx], minlength=c).astype(np.float64)
    return seeds / np.maximum(counts, 1.0)[None, :]


def propagated_labels(
    wn, y: np.ndarray, weights: np.ndarray, mask: np.ndarray, fallback: np.ndarray, alpha: float = 0.99, iters: int = 20
) -> np.ndarray:
    """Row-stochastic (N, C) propagated label distribution; rows with no mass fall back."""
    c = fallback.shape[1]
    return normalize_rows(propagate(wn, seed_matrix(y, weights, mask, c), alpha, iters), fallback)


def normalize_rows(z: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Clip propagation scores at 0 and L1-normalise rows (never softmax); empty rows take `fallback`."""
    z = np.clip(z, 0.0, None)
    s = z.sum(axis=1, keepdims=True)
    return np.where(s > 1e-12, z / np.maximum(s, 1e-12), fallback).astype(np.float32)
