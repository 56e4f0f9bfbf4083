"""Refine's maths on arrays: soft labels, ambiguity and actions (algorithm.md 5-9).

The soft label is the noise posterior over the true class (labelfix.core.detect), sharpened where
it is confident; the ambiguity mixes its entropy with how much the graph's vote disagrees with
the evidence trusted. `refine_arrays` is the pure core of `labelfix refine` and
`labelfix.api.refine_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfix.core.detect import Detection, detect, posterior_wrong
from labelfix.core.scoring import label_quality
from labelfix.errors import InputError


@dataclass(frozen=True)
class RefineConfig:
    """Attributes:
    rounds: refit rounds of the noise posterior on an embedding graph (scan uses 3; the same
        number here gives scan's flags exactly when there is no student view).
    sharpen_at: rows of the soft label whose maximum reaches this are sharpened.
    temperature: sharpening temperature (p^(1/T), renormalised).
    relabel_max_ambiguity: a flagged sample is relabelled only below this ambiguity...
    relabel_min_confidence: ...when the posterior probability of its refined label (before
        sharpening) reaches this, and the evidence's own argmax is that label; else review.
        `relabel` is what labels.refined.csv applies without a person, so the default asks the
        posterior for 95%: a relabel is meant to be right at least 19 times in 20.
    allow_relabel: False after a scan whose evidence failed the weak-teacher check (kept with
        --allow-weak-teacher): nothing is relabelled, every changed row is review.
    drop_review: leave `review` rows out of labels.refined.csv (default: keep them unchanged).
    k: neighbours of the student's own graph in a mutual round (None: the scan graph's k).
    """

    rounds: int = 3
    sharpen_at: float = 0.9
    temperature: float = 0.5
    relabel_max_ambiguity: float = 0.5
    relabel_min_confidence: float = 0.95
    drop_review: bool = False
    k: int | None = None
    gamma: float = 3.0
    allow_relabel: bool = True

    def validate(self) -> None:
        if self.rounds < 1:
            raise InputError(f"--rounds must be >= 1 (got {self.rounds})")
        if not 0.0 < self.temperature <= 1.0:
            raise InputError(f"--temperature must be in (0, 1] (got {self.temperature})")
        if not 0.0 <= self.relabel_min_confidence <= 1.0:
            raise InputError(f"--min-confidence must be in [0, 1] (got {self.relabel_min_confidence})")
        if not 0.0 <= self.relabel_max_ambiguity <= 1.0:
            raise InputError(f"--max-ambiguity must be in [0, 1] (got {self.relabel_max_ambiguity})")
        if self.k is not None and self.k < 1:
            raise InputError(f"--k must be >= 1 (got {self.k})")


WEAK_NO_RELABEL = (
    "nothing relabelled: the evidence failed the weak-teacher check (kept with --allow-weak-teacher), "
    "so every changed label is left to review"
)


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    mid = 0.5 * (p + q)
    return np.clip(_entropy(mid) - 0.5 * _entropy(p) - 0.5 * _entropy(q), 0.0, None)


def sharpen(posterior: np.ndarray, sharpen_at: float, temperature: float) -> np.ndarray:
    """The posterior over the true class, rows with max >= sharpen_at sharpened (p^(1/T)); rows sum to 1."""
    r = np.array(posterior, dtype=np.float64, copy=True)
    sharp = r.max(axis=1) >= sharpen_at
    if sharp.any():
        s = r[sharp] ** (1.0 / temperature)
        r[sharp] = s / s.sum(axis=1, keepdims=True)
    return (r / r.sum(axis=1, keepdims=True)).astype(np.float32)


def ambiguity(soft: np.ndarray, p_lp: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """0.5 H(r)/log C + 0.5 JS(graph || p)/log 2, in [0, 1]: how unsure the refined soft label r
    is, plus how much the graph's view (`p_lp`: its neighbour vote) and the evidence `probs`
    disagree."""
    c = soft.shape[1]
    a = 0.5 * _entropy(soft) / np.log(c) + 0.5 * js_divergence(p_lp, probs) / np.log(2)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Refined:
    """Per row: the soft label, its argmax, the action (keep/relabel/review) and the label to use."""

    soft: np.ndarray
    refined: np.ndarray  # argmax of the soft label
    ambiguity: np.ndarray
    quality: np.ndarray
    action: np.ndarray  # "keep", "relabel" or "review"
    label: np.ndarray  # the refined label where action is relabel, else the given one
    weight: np.ndarray  # training weight for a student: 0 for review rows, else 1 - ambiguity
    detection: Detection

    @property
    def flags(self) -> np.ndarray:
        return self.detection.flags

    @property
    def clean_prob(self) -> np.ndarray:
        return (1.0 - self.detection.p_wrong).astype(np.float32)


def refine_arrays(
    y: np.ndarray,
    probs: np.ndarray,
    graph_ids: np.ndarray,
    graph_sims: np.ndarray,
    *,
    independent_graph: bool,
    cfg: RefineConfig | None = None,
    seed: int = 0,
    extra: dict | None = None,
    more_graphs: dict | None = None,
    known_fits: dict | None = None,
) -> Refined:
    """Soft labels and actions from the evidence. Teacher-only, the posterior is exactly scan's
    (same inputs, seed and rounds); `extra` probabilities and `more_graphs` (a student's) join
    the pool of experts, and the likelihood fit gives them the weight the data supports.
    `known_fits`: scan's pool fits (summary.json detection.pool_fits), replayed where they were
    made on the same inputs (labelfix.core.detect.PoolFits)."""
    cfg = cfg or RefineConfig()
    cfg.validate()
    y = np.asarray(y, dtype=np.int64)
    det = detect(
        probs,
        y,
        graph_ids,
        graph_sims,
        independent_graph,
        extra=extra or {},
        gamma=cfg.gamma,
        seed=seed,
        rounds=cfg.rounds,
        more_graphs=more_graphs or {},
        known_fits=known_fits,
    )
    if det.candidates is not None:  # above SPARSE_ABOVE classes (labelfix.core.detect_sparse)
        return _refine_sparse(det, y, cfg)
    soft = sharpen(det.posterior, cfg.sharpen_at, cfg.temperature)
    # disagreement of the graph with the evidence actually trusted (the fitted pool), so a
    # weak model that the pool outweighs does not make every row ambiguous
    amb = ambiguity(soft, det.vote, det.evidence)
    refined = soft.argmax(axis=1)
    changed = refined != y
    # "almost surely" under both accounts of the label: the posterior with the label's evidence
    # weighted by beta (the refined label) and with it counted in full (beta = 1)
    full = det.posterior if det.label_weight >= 1.0 else posterior_wrong(det.evidence, y, det.transition)[1]
    rows = np.arange(len(y))
    sure = np.minimum(det.posterior[rows, refined], full[rows, refined]) >= cfg.relabel_min_confidence
    is_relabel = changed & sure & (det.evidence.argmax(axis=1) == refined) & (amb < cfg.relabel_max_ambiguity)
    is_relabel &= cfg.allow_relabel
    action = np.full(len(y), "keep", dtype=object)
    action[is_relabel] = "relabel"
    action[(changed | det.flags) & ~is_relabel] = "review"
    weight = np.where(action == "review", 0.0, 1.0 - amb).astype(np.float32)
    label = np.where(action == "relabel", refined, y).astype(np.int64)
    quality = label_quality(det.evidence, y)
    return Refined(soft, refined.astype(np.int64), amb, quality, action.astype(str), label, weight, det)


# ---------------------------------------------------------------------------------------------
# Above SPARSE_ABOVE classes: the same rules on each row's candidates (labelfix.core.sparse), the
# classes outside them one bucket of equal values; the soft label leaves as its top-m (TopM).


def _entropy_on(val: np.ndarray, out: np.ndarray, valid: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    q, o = np.clip(val, 1e-12, 1.0), np.clip(out, 1e-12, 1.0)
    return -np.where(valid, q * np.log(q), 0.0).sum(axis=1) - n_out * o * np.log(o)


def _sparse_rows(det: Detection, cfg: RefineConfig, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(soft label on the candidates, its per-class value outside, ambiguity) of the rows `s`."""
    cands, post, vote, pi = det.candidates, det.posterior, det.vote, det.evidence
    valid, n_out, c = cands.valid(s), cands.n_out[s], cands.num_classes
    r, r_out = np.where(valid, post.val[s], 0.0).astype(np.float64), post.out[s].astype(np.float64)
    sharp = np.maximum(r.max(axis=1), np.where(n_out > 0, r_out, 0.0)) >= cfg.sharpen_at
    r[sharp], r_out[sharp] = r[sharp] ** (1.0 / cfg.temperature), r_out[sharp] ** (1.0 / cfg.temperature)
    total = r.sum(axis=1) + n_out * r_out
    r, r_out = r / total[:, None], r_out / total
    p, p_out, q, q_out = vote.val[s].astype(np.float64), vote.out[s], pi.val[s].astype(np.float64), pi.out[s]
    js = (
        _entropy_on(0.5 * (p + q), 0.5 * (p_out + q_out), valid, n_out)
        - 0.5 * _entropy_on(p, p_out, valid, n_out)
        - 0.5 * _entropy_on(q, q_out, valid, n_out)
    )
    amb = 0.5 * _entropy_on(r, r_out, valid, n_out) / np.log(c) + 0.5 * np.clip(js, 0.0, None) / np.log(2)
    return r, r_out, np.clip(amb, 0.0, 1.0)


def _refine_sparse(det: Detection, y: np.ndarray, cfg: RefineConfig) -> Refined:
    from labelfix.core.detect_sparse import argmax_class, posterior_at
    from labelfix.core.detect_sparse import label_quality as quality_on
    from labelfix.core.detect_sparse import posterior_wrong as sparse_posterior
    from labelfix.core.sparse import TOP_M, TopM, chunks

    cands = det.candidates
    n, width = cands.cls.shape
    m = min(TOP_M, width)
    amb = np.zeros(n, dtype=np.float32)
    top_cls, top_val = np.zeros((n, m), dtype=np.int32), np.zeros((n, m), dtype=np.float32)
    for s in chunks(n, width * 8):
        r, _, amb[s] = _sparse_rows(det, cfg, s)
        slots = np.argsort(-np.where(cands.valid(s), r, -1.0), axis=1, kind="stable")[:, :m]
        top_cls[s] = np.take_along_axis(cands.cls[s], slots, axis=1)
        top_val[s] = np.take_along_axis(r, slots, axis=1)
    refined = top_cls[:, 0].astype(np.int64)
    changed = refined != y
    sure = posterior_at(det.posterior, cands, refined) >= cfg.relabel_min_confidence
    if det.label_weight < 1.0:  # and with the label's evidence counted in full (the dense rule)
        full = sparse_posterior(det.evidence, cands, y, det.transition)[1]
        sure &= posterior_at(full, cands, refined) >= cfg.relabel_min_confidence
    agrees = argmax_class(det.evidence, cands) == refined
    is_relabel = changed & sure & agrees & (amb < cfg.relabel_max_ambiguity) & cfg.allow_relabel
    action = np.full(len(y), "keep", dtype=object)
    action[is_relabel] = "relabel"
    action[(changed | det.flags) & ~is_relabel] = "review"
    weight = np.where(action == "review", 0.0, 1.0 - amb).astype(np.float32)
    label = np.where(action == "relabel", refined, y).astype(np.int64)
    soft = TopM(top_cls, top_val, cands.num_classes)
    return Refined(soft, refined, amb, quality_on(det.evidence, cands), action.astype(str), label, weight, det)
