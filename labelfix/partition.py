"""Class prototypes and the per-sample clean probability (CPC-style partition)."""

from __future__ import annotations

import numpy as np


def prototypes(emb: np.ndarray, y: np.ndarray, mask: np.ndarray, weights: np.ndarray, c: int) -> np.ndarray:
    """(C, D) L2-normalised weighted mean embedding of each class's selected (`mask`) members."""
    protos = np.zeros((c, emb.shape[1]), dtype=np.float64)
    sel = np.flatnonzero(mask)
    np.add.at(protos, y[sel], emb[sel] * weights[sel, None])
    norms = np.linalg.norm(protos, axis=1, keepdims=True)
    return (protos / np.maximum(norms, 1e-12)).astype(np.float32)


def _low_component_posterior(x: np.ndarray, seed: int, max_fit: int = 20_000) -> np.ndarray | None:
    """Posterior of the lower-mean component of a 2-component 1-D GMM, or None if degenerate."""
    from sklearn.mixture import GaussianMixture

    if len(x) < 20 or np.ptp(x) < 1e-6:
        return None
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= max_fit else x[rng.choice(len(x), max_fit, replace=False)]
    gmm = GaussianMixture(2, max_iter=50, tol=1e-3, reg_covar=5e-4, random_state=seed).fit(fit[:, None])
    means = gmm.means_.ravel()
    if abs(means[0] - means[1]) < 0.05 or gmm.weights_.min() < 0.01:
        return None
    post = gmm.predict_proba(x[:, None])[:, int(np.argmin(means))]
    return post


def _rank_fallback(x: np.ndarray, rate: float) -> np.ndarray:
    """Clean posterior from within-class rank: 0.5 at the (1 - rate) quantile, smooth either side."""
    n = len(x)
    if n == 1:
        return np.ones(1)
    frac = np.empty(n)
    frac[np.argsort(x, kind="stable")] = np.arange(n) / (n - 1)
    cut = 1.0 - rate
    return 1.0 / (1.0 + np.exp((frac - cut) / 0.05))


def clean_probability(
    emb: np.ndarray,
    y: np.ndarray,
    loss: np.ndarray,
    protos: np.ndarray,
    rates: np.ndarray,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """c_i = sqrt(w_loss * w_proto), each a per-class 2-GMM posterior of the low component.

    Falls back to within-class rank at the estimated noise rate when a class is small, its
    mixture degenerates, or it marks under half the class's estimated noisy share. Returns (c (N,), per-class notes of which rule was used).
    """
    c = np.zeros(len(y), dtype=np.float64)
    dist = 1.0 - np.einsum("nd,nd->n", emb, protos[y])
    notes = {}
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        lk = loss[idx]
        lk = (lk - lk.min()) / max(float(np.ptp(lk)), 1e-12)
        used = []
        ws = []
        for name, x in (("loss", lk), ("proto", dist[idx])):
            w = _low_component_posterior(x, seed + int(k))
            if w is None:
                w = _rank_fallback(x, float(rates[k]))
                used.append(f"{name}:rank")
            else:
                used.append(f"{name}:gmm")
            ws.append(w)
        ck = np.sqrt(ws[0] * ws[1])
        # A mixture that marks under half the noisy share the confident joint estimates has
        # missed the noise (e.g. 40% of a class flipped in from one confusable class, which the
        # teacher half-learns): the within-class loss rank at the estimated rate takes over.
        # Measured: Fashion-MNIST asymmetric 40% flag F1 0.65 -> 0.77, other rows unchanged.
        # Below 100 samples the per-class rate estimate is too noisy to overrule the mixture.
        if len(idx) >= 100 and rates[k] > 0 and (ck < 0.5).mean() < 0.5 * rates[k]:
            ck = np.minimum(ck, _rank_fallback(loss[idx], float(rates[k])))
            used.append("rank-at-estimated-rate")
        c[idx] = ck
        notes[int(k)] = used
    return c.astype(np.float32), notes
