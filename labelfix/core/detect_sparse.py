"""labelfix.core.detect's noise posterior above SPARSE_ABOVE classes, on candidate classes.

The same model and the same steps as `detect` (its docstring), with every (N, C) array replaced
by scores on each row's candidates plus one bucket for the classes outside them
(labelfix.core.sparse): the pool is normalised over all C classes, the likelihood of the given
label is sum_{j in S} pi_j T[j, y] + pi_out sum_{j not in S} T[j, y], and the posterior and
P(wrong) follow from it exactly. The confident joint uses the candidates (a class outside them
holds at most 1 / (C - M) of a row's mass, far below any class threshold). Rows are processed
in chunks; what stays in memory is O(N M).
"""

from __future__ import annotations

import numpy as np

from labelfix.core.detect import (
    PROB_FLOOR,
    TEMPERATURES,
    Detection,
    PoolFits,
    bisect_weight,
    f1_threshold,
    fit_key,
    transition_from_joint,
    weight_grid,
)
from labelfix.core.selection import calibrated_joint
from labelfix.core.sparse import TOP_M, Candidates, Scores, TopM, candidates, chunks, probs_on, top_m, vote_on


def _logs(scores: Scores, s=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.log(np.clip(scores.val[s].astype(np.float64), PROB_FLOOR, 1.0)),
        np.log(np.clip(scores.out[s].astype(np.float64), PROB_FLOOR, 1.0)),
    )


def _pool_rows(logs: list, weights, temperature: float, valid: np.ndarray, n_out: np.ndarray):
    """Log-linear pool over the candidates and the n_out classes outside: (pi on S, pi_out)."""
    z = sum(w * lg[0] for w, lg in zip(weights, logs)) / temperature
    z_out = sum(w * lg[1] for w, lg in zip(weights, logs)) / temperature
    z = np.where(valid, z, -np.inf)
    top = np.maximum(z.max(axis=1), np.where(n_out > 0, z_out, -np.inf))
    e = np.exp(z - top[:, None])
    e_out = np.where(n_out > 0, np.exp(np.minimum(z_out - top, 0.0)), 0.0)
    total = e.sum(axis=1) + n_out * e_out
    return e / total[:, None], e_out / total


def pool(experts: list[Scores], cands: Candidates, weights, temperature: float) -> Scores:
    n, width = cands.cls.shape
    val = np.zeros((n, width), dtype=np.float32)
    out = np.zeros(n, dtype=np.float64)
    for s in chunks(n, width * (len(experts) + 2)):
        pi, pi_out = _pool_rows([_logs(e, s) for e in experts], weights, temperature, cands.valid(s), cands.n_out[s])
        val[s], out[s] = pi, pi_out
    return Scores(val, out)


def fit_pool(experts: list[Scores], cands: Candidates, y, transition, rows) -> tuple[tuple, float]:
    """labelfix.core.detect.fit_pool on the candidates of the sample `rows`. For each weight the
    pooled log is shifted to its row maximum once; each temperature then costs one exp."""
    logs = [_logs(e, rows) for e in experts]
    valid, n_out = cands.valid(rows), cands.n_out[rows].astype(np.float64)
    t_s, t_out = cands.transition_at(transition, y, rows)
    t_s = t_s.astype(np.float32)
    best = (-np.inf, None, 1.0)
    for w in weight_grid(len(experts)):
        z = np.where(valid, sum(wi * lg[0] for wi, lg in zip(w, logs)), -np.inf)
        z_out = sum(wi * lg[1] for wi, lg in zip(w, logs))
        top = np.maximum(z.max(axis=1), np.where(n_out > 0, z_out, -np.inf))
        z = (z - top[:, None]).astype(np.float32)  # float32 exp: 4x faster, the grid's argmax is the same
        z_out = np.where(n_out > 0, z_out - top, -np.inf)
        for t in TEMPERATURES:
            e = np.exp(z * np.float32(1.0 / t))
            e_out = np.exp(z_out / t)
            total = e.sum(axis=1).astype(np.float64) + n_out * e_out
            lik = (np.einsum("ij,ij->i", e, t_s).astype(np.float64) + e_out * t_out) / total
            ll = float(np.log(np.maximum(lik, 1e-300)).mean())
            if ll > best[0]:
                best = (ll, w, float(t))
    return best[1], best[2]


def posterior_wrong(pi: Scores, cands: Candidates, y, transition, beta: float = 1.0) -> tuple[np.ndarray, Scores]:
    """(P(wrong) (N,), the posterior over the true class on the candidates); the label's
    evidence T[j, y] weighted by beta (labelfix.core.detect.label_weight)."""
    transition = transition**beta
    n, width = cands.cls.shape
    p_wrong = np.zeros(n)
    val = np.zeros((n, width), dtype=np.float32)
    out = np.zeros(n, dtype=np.float64)
    col = transition.sum(axis=0)
    for s in chunks(n, width * 3):
        t_s, t_out = cands.transition_at(transition, y, s, col)
        num = pi.val[s] * t_s
        num_out = pi.out[s] * t_out
        total = np.maximum(num.sum(axis=1) + num_out, 1e-300)
        post = num / total[:, None]
        p_wrong[s] = 1.0 - post[:, 0]
        val[s] = post
        out[s] = np.where(cands.n_out[s] > 0, num_out / total / np.maximum(cands.n_out[s], 1), 0.0)
    return p_wrong, Scores(val, out)


def majority_against(scores: Scores, cands: Candidates) -> float:
    """labelfix.core.detect.majority_against on the candidates: the share of rows where a class
    other than the given one (slot 0) has a score >= 1/2 (a class outside them: `out`)."""
    n = len(cands.cls)
    if n == 0:
        return 0.0
    hits = 0
    for s in chunks(n, cands.cls.shape[1]):
        other = np.where(cands.valid(s)[:, 1:], scores.val[s][:, 1:], 0.0).max(axis=1, initial=0.0)
        other = np.maximum(other, np.where(cands.n_out[s] > 0, scores.out[s], 0.0))
        hits += int((other >= 0.5).sum())
    return hits / n


def label_weight(pi: Scores, cands: Candidates, y, transition, floor: float, tol: float = 1e-3) -> float:
    """labelfix.core.detect.label_weight on the candidates."""

    def expected(beta: float) -> float:
        return float(posterior_wrong(pi, cands, y, transition, beta)[0].sum())

    return bisect_weight(expected, floor, tol)


def confident_joint(scores: Scores, cands: Candidates, y: np.ndarray) -> np.ndarray:
    """labelfix.core.selection.confident_joint's calibrated joint on the candidates."""
    c = cands.num_classes
    counts = np.bincount(y, minlength=c).astype(np.float64)
    at_y = np.bincount(y, weights=scores.val[:, 0].astype(np.float64), minlength=c)
    thresholds = np.divide(at_y, counts, out=np.ones(c), where=counts > 0)
    joint = np.zeros((c, c), dtype=np.float64)
    for s in chunks(len(y), cands.cls.shape[1]):
        cls = cands.cls[s]
        above = (cls >= 0) & (scores.val[s] >= thresholds[np.maximum(cls, 0)] - 1e-6)
        slot = np.where(above, scores.val[s], -np.inf).argmax(axis=1)
        has = above.any(axis=1)
        np.add.at(joint, (y[s][has], cls[np.arange(len(cls)), slot][has]), 1.0)
    return calibrated_joint(joint, counts)


def argmax_class(scores: Scores, cands: Candidates) -> np.ndarray:
    """The candidate with the largest score, per row."""
    out = np.empty(len(cands.cls), dtype=np.int64)
    for s in chunks(len(out), cands.cls.shape[1]):
        slot = np.where(cands.valid(s), scores.val[s], -np.inf).argmax(axis=1)
        out[s] = cands.cls[s][np.arange(len(slot)), slot]
    return out


def posterior_at(scores: Scores, cands: Candidates, cls: np.ndarray) -> np.ndarray:
    """Each row's score of class `cls[i]` (its candidate's value, `out` when not a candidate)."""
    out = np.asarray(scores.out, dtype=np.float64).copy()
    hit = cands.cls == np.asarray(cls)[:, None]
    r, k = np.nonzero(hit)
    out[r] = scores.val[r, k]
    return out


def _as_top(p, y: np.ndarray, ids: np.ndarray) -> TopM:
    """The TopM of a probability expert ((N, C) array or TopM) with its given-label value."""
    if not isinstance(p, TopM):
        return top_m(p, TOP_M, y, ids)
    if p.given is None:
        raise ValueError("a TopM probability expert needs its value at the given label (given=)")
    return p


def detect_sparse(
    probs,
    y,
    ids,
    sims,
    graph_independent: bool,
    extra: dict,
    gamma: float,
    seed: int,
    fit_rows,
    rounds,
    more_graphs,
    known_fits: dict | None = None,
) -> Detection:
    """labelfix.core.detect.detect for large C; `probs` and `extra` are (N, C) arrays or TopM."""
    n, c = probs.shape
    rng = np.random.default_rng([seed, 2024])
    fit_rows = fit_rows or max(20_000, 1_000_000 // max(c, 1))
    rows = np.sort(rng.choice(n, fit_rows, replace=False)) if n > fit_rows else np.arange(n)
    ids = np.asarray(ids)
    given = [probs, *(extra or {}).values()]
    tops = [_as_top(p, y, ids) for p in given]
    graphs = {"graph vote": (ids, sims), **{f"{k} graph vote": v for k, v in (more_graphs or {}).items()}}
    names = ("probabilities", *(extra or {}).keys(), *graphs.keys())
    rounds = max(1, rounds) if graph_independent else 1
    fit = PoolFits(fit_pool, fit_key(y, c, names, gamma, rounds, seed, graph_independent, fit_rows), known_fits)
    cands = candidates(y, tops, [np.asarray(g[0]) for g in graphs.values()], c)
    base = [probs_on(cands, None if isinstance(p, TopM) else p, t, y, ids) for p, t in zip(given, tops)]
    start = base + ([vote_on(cands, ids, sims, y, np.ones(n), gamma)] if graph_independent else [])
    agreement = [(argmax_class(e, cands) == y).mean() for e in start]
    first = start[int(np.argmax(agreement))]
    transition = transition_from_joint(confident_joint(first, cands, y))
    w, t = fit([first], cands, y, transition, rows)
    pi = pool([first], cands, w, t)
    beta = label_weight(pi, cands, y, transition, n * majority_against(first, cands))
    p_wrong, post = posterior_wrong(pi, cands, y, transition, beta)
    for r in range(rounds):
        votes = [vote_on(cands, gi, gs, y, 1.0 - p_wrong, gamma) for gi, gs in graphs.values()]
        experts = base + votes
        if r > 0:
            transition = transition_from_joint(confident_joint(pi, cands, y))
        w, t = fit(experts, cands, y, transition, rows)
        pi = pool(experts, cands, w, t)
        p_wrong, post = posterior_wrong(pi, cands, y, transition, beta)
    thr = max(f1_threshold(p_wrong), 0.5)
    return Detection(
        p_wrong=p_wrong.astype(np.float32),
        posterior=post,
        evidence=pi,
        vote=votes[0],
        flags=p_wrong >= thr,
        threshold=thr,
        transition=transition,
        weights=w,
        temperature=t,
        expert_names=names,
        iterations=rounds,
        label_weight=beta,
        candidates=cands,
        teacher=tops[0],
        pool_fits=fit.record(),
    )


# ------------------------------------------------------------------ what scan and refine read off it


def alternative_label(post: Scores, cands: Candidates) -> np.ndarray:
    """The most probable candidate other than the given label (slot 0), per row."""
    out = np.empty(len(cands.cls), dtype=np.int64)
    for s in chunks(len(out), cands.cls.shape[1]):
        other = np.where(cands.valid(s), post.val[s], -np.inf)
        other[:, 0] = -np.inf
        slot = other.argmax(axis=1)
        rows = np.arange(len(slot))
        out[s] = np.where(np.isfinite(other[rows, slot]), cands.cls[s][rows, slot], cands.cls[s][:, 0])
    return out


def label_quality(pi: Scores, cands: Candidates) -> np.ndarray:
    """labelfix.core.scoring.label_quality: the margin at the given label over the best other
    class, a candidate or one of the classes outside."""
    out = np.empty(len(cands.cls), dtype=np.float32)
    for s in chunks(len(out), cands.cls.shape[1]):
        other = np.where(cands.valid(s), pi.val[s], -np.inf)
        other[:, 0] = -np.inf
        best = np.maximum(other.max(axis=1), np.where(cands.n_out[s] > 0, pi.out[s], -np.inf))
        out[s] = (pi.val[s][:, 0] - best + 1.0) / 2.0
    return out


def dense_rows(scores: Scores, cands: Candidates, rows=slice(None)) -> np.ndarray:
    """(n, C) float32 of the rows: the candidates' values, `out` elsewhere."""
    cls, val = cands.cls[rows], scores.val[rows]
    dense = np.repeat(scores.out[rows].astype(np.float32)[:, None], cands.num_classes, axis=1)
    r, k = np.nonzero(cls >= 0)
    dense[r, cls[r, k]] = val[r, k]
    return dense


def noise_matrix(post: Scores, cands: Candidates, y: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """(C, C) mean posterior of the rows given each class. A row's mass outside its candidates
    goes to those classes in proportion to T[j, y] (the posterior there is pi_out T[j, y]),
    evenly where T gives them nothing."""
    c = cands.num_classes
    sums = np.zeros((c, c))
    shaped, even = np.zeros(c), np.zeros(c)
    col = transition.sum(axis=0)
    for s in chunks(len(y), cands.cls.shape[1] * 2):
        cls, yy, valid = cands.cls[s], y[s], cands.valid(s)
        t_s, t_out = cands.transition_at(transition, y, s, col)
        mass = post.out[s] * cands.n_out[s]
        scale = np.divide(mass, t_out, out=np.zeros_like(mass), where=t_out > 1e-12)
        flat = np.where(t_out > 1e-12, 0.0, post.out[s])
        rows = np.repeat(yy[:, None], cls.shape[1], axis=1)
        add = post.val[s] - scale[:, None] * t_s - flat[:, None]
        np.add.at(sums, (rows[valid], cls[valid]), add[valid])
        np.add.at(shaped, yy, scale)
        np.add.at(even, yy, flat)
    sums += shaped[:, None] * transition.T + even[:, None]
    total = np.bincount(y, minlength=c).astype(np.float64)[:, None]
    return np.divide(sums, total, out=np.zeros_like(sums), where=total > 0)
