"""From evidence to a per-sample posterior that the given label is wrong, and the flags.

The model (class-conditional noise, as in Confident Learning and forward loss correction):
the given label is drawn from the true class j with P(given k | true j) = T[j, k]. With a
clean-class posterior pi_i, Bayes gives

    P(true j | x_i, given y_i) = pi_i[j] T[j, y_i] / sum_l pi_i[l] T[l, y_i]

and P(wrong_i) = 1 - P(true y_i | x_i, y_i). Everything the rule needs comes from the data:

* T from Confident Learning's calibrated confident joint on the current evidence;
* pi_i a log-linear pool of the experts (the out-of-sample probabilities p_i and the graph's
  vote q_i of the neighbours' labels, each neighbour weighted by its own clean posterior),
  with pool weights and a temperature fitted by the likelihood of the given labels under
  the noise model (sum_i log sum_j pi_i[j] T[j, y_i]). Fitting with T fixed keeps an expert
  that merely reproduces the noisy labels (a vote of the raw labels) from looking good;
* the flag threshold maximises the plug-in expected F1, 2 sum_flagged P / (n_flagged + sum P),
  whose optimum is known to sit at half the attainable F1 (Lipton et al. 2014), not at 0.5.

Measured before adopting it (docs/matrix.md): on the five CIFAR-10S probability files the
old AND rule (Confident Learning allocation, argmax != given, GMM clean < 0.5) reached 0.996 to
1.000 of cleanlab's best filter; this posterior 1.002 to 1.014; with clustered embeddings that
carry more than the probabilities it beats Datalab(features) where the old rule fell 13% short.

Memory is O(N (k + C)) up to labelfix.core.sparse.SPARSE_ABOVE classes; above, the same steps
run on each row's candidate classes (labelfix.core.detect_sparse): O(N (k + m)). The pool
weights and temperature are fitted on a seeded sample of at most max(20,000, 10^6 / C) rows, so
the fit's cost does not grow with N.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from labelfix.core.selection import confident_joint, per_sample_loss, small_loss_mask
from labelfix.core.sparse import is_sparse

PROB_FLOOR = 1e-6  # probabilities are clipped here before their log


@dataclass(frozen=True)
class Stages:
    """Which of detection's stages run; the defaults are labelfix's (the ablation in
    docs/benchmarks.md measures each):

    label_weight: weight the given label's evidence down where the posterior expects fewer wrong
        labels than the model shows by majority (label_weight).
    graph_vote: the kNN graph's vote of the neighbours' labels joins the pool of experts.
    anchors: whose labels the vote trusts: "posterior" (each neighbour weighted by its clean
        posterior, refitted each round) or "small-loss" (the small-loss selection per class: the
        ceil((1 - rho_k) n_k) rows of smallest loss, rho_k from the confident joint).
    propagation: the vote is label propagation from the anchors over the whole graph
        (labelfix.core.propagation, alpha 0.99) instead of the one-step vote of the neighbours.
    """

    label_weight: bool = True
    graph_vote: bool = True
    anchors: str = "posterior"
    propagation: bool = False


def propagated_vote(
    ids: np.ndarray, sims: np.ndarray, y: np.ndarray, c: int, trust: np.ndarray, gamma: float = 3.0
) -> np.ndarray:
    """(N, C) label propagation over the graph from the anchors (rows with trust >= 1/2,
    weighted by trust), each row's own seed left out (leave-one-out, as the vote), clipped at 0,
    L1-normalised and smoothed towards the class prior like neighbour_vote."""
    from labelfix.core.graph import KnnGraph
    from labelfix.core.propagation import normalized_adjacency, propagate, seed_matrix

    ok = ids >= 0
    wn = normalized_adjacency(
        KnnGraph(np.where(ok, ids, np.arange(len(ids))[:, None]), np.where(ok, sims, 0.0), "given"), gamma
    )
    seeds = seed_matrix(y, trust, trust >= 0.5, c)
    z = np.clip(propagate(wn, seeds) - seeds, 0.0, None)  # Z = Y + alpha W Z: drop the row's own Y
    total = z.sum(axis=1, keepdims=True)
    prior = np.bincount(y, minlength=c) / max(len(y), 1)
    s0 = max(float(total.mean()) / max(ids.shape[1], 1), 1e-12)
    return (z + s0 * prior[None, :]) / (total + s0)


@dataclass(frozen=True)
class Detection:
    """Attributes:
    p_wrong: (N,) posterior probability that the given label is wrong.
    posterior: (N, C) P(true class | evidence, given label); rows sum to 1.
    evidence: (N, C) the fitted clean-class posterior pi (pooled experts).
    vote: (N, C) the graph's vote of the neighbours' labels (weighted by their clean posterior).
    Above SPARSE_ABOVE classes these three are scores on each row's `candidates` (sparse).
    flags: (N,) p_wrong >= threshold.
    threshold: the plug-in F1-optimal threshold on p_wrong.
    transition: (C, C) T[j, k] = P(given k | true j).
    weights: pool weight of each expert, in `expert_names` order.
    temperature: the fitted temperature of the pool.
    """

    p_wrong: np.ndarray
    posterior: np.ndarray
    evidence: np.ndarray
    vote: np.ndarray
    flags: np.ndarray
    threshold: float
    transition: np.ndarray
    weights: tuple
    temperature: float
    expert_names: tuple = field(default=())
    iterations: int = 1
    # beta: the weight of the given label's own evidence in the posterior (label_weight)
    label_weight: float = 1.0
    # Above SPARSE_ABOVE classes (labelfix.core.detect_sparse): posterior, evidence and vote are
    # labelfix.core.sparse.Scores on these candidates, and `teacher` is the probabilities' TopM.
    candidates: object = None
    teacher: object = None
    # every pool fit of this detection, in order, and what they depend on (PoolFits)
    pool_fits: dict = field(default_factory=dict)

    def report(self) -> dict:
        """The fitted constants, for summary.json."""
        return {
            "experts": {n: round(float(w), 3) for n, w in zip(self.expert_names, self.weights)},
            "temperature": round(float(self.temperature), 4),
            "flag_threshold": round(float(self.threshold), 4),
            "iterations": self.iterations,
            "label_weight": round(float(self.label_weight), 4),
            "expected_wrong_labels": round(float(self.p_wrong.sum()), 1),
            "pool_fits": self.pool_fits,
        }


class PoolFits:
    """The pool fits (weights, temperature) of one detection, recorded in order with a key of
    everything they depend on besides the probabilities and the graph: rows, classes, a hash of
    the given labels, the experts, gamma, the rounds, the seed (the fit's row sample) and whether
    the graph is independent. Given `known` fits whose key is this detection's (refine after
    scan on the same run: the run's files are hash-checked), they are replayed instead of
    refitted: the same numbers, without paying for the fit twice."""

    def __init__(self, fit, key: dict, known: dict | None = None):
        self.fit, self.key, self.done = fit, key, []
        self.replay = list((known or {}).get("fits", [])) if (known or {}).get("key") == key else []

    def __call__(self, experts: list, *args) -> tuple[tuple, float]:
        i = len(self.done)
        if i < len(self.replay) and len(self.replay[i]["weights"]) == len(experts):
            w, t = tuple(float(v) for v in self.replay[i]["weights"]), float(self.replay[i]["temperature"])
        else:
            self.replay = []  # a mismatch: fit this call and every later one
            w, t = self.fit(experts, *args)
        self.done.append({"weights": [float(v) for v in w], "temperature": float(t)})
        return w, t

    def record(self) -> dict:
        return {"key": self.key, "fits": self.done}


def fit_key(
    y: np.ndarray, c: int, names, gamma: float, rounds: int, seed: int, graph_independent: bool, fit_rows: int
) -> dict:
    """PoolFits' key of a detection."""
    import hashlib

    return {
        "rows": int(len(y)),
        "classes": int(c),
        "labels_sha256": hashlib.sha256(np.ascontiguousarray(y, dtype=np.int64).tobytes()).hexdigest(),
        "experts": list(names),
        "gamma": float(gamma),
        "rounds": int(rounds),
        "seed": int(seed),
        "graph_independent": bool(graph_independent),
        "fit_rows": int(fit_rows),
    }


def transition_from_joint(joint: np.ndarray) -> np.ndarray:
    """T[j, k] = P(given k | true j) from a confident joint (rows given, columns true)."""
    col = joint.sum(axis=0, keepdims=True)
    t = np.divide(joint, col, out=np.zeros_like(joint), where=col > 0).T
    empty = t.sum(axis=1) == 0  # a class nobody is estimated to truly belong to: assume it clean
    t[empty] = np.eye(len(t))[empty]
    return t


def neighbour_vote(
    ids: np.ndarray, sims: np.ndarray, y: np.ndarray, c: int, trust: np.ndarray, gamma: float = 3.0
) -> np.ndarray:
    """(N, C) vote of each row's neighbours' given labels, weights max(0, s)^gamma * trust_j.

    Leave-one-out by construction (the graph excludes the row itself). Smoothed towards the
    class prior with the weight of one average neighbour, so a label no neighbour carries keeps
    a small, data-sized probability instead of zero.
    """
    n, k = ids.shape
    w = np.maximum(sims, 0.0).astype(np.float64) ** gamma * trust[ids]
    q = np.zeros((n, c))
    np.add.at(q, (np.repeat(np.arange(n), k), y[ids].ravel()), w.ravel())
    total = q.sum(axis=1, keepdims=True)
    prior = np.bincount(y, minlength=c) / max(len(y), 1)
    s0 = max(float(total.mean()) / max(k, 1), 1e-12)
    return (q + s0 * prior[None, :]) / (total + s0)


def _pool(logs: list[np.ndarray], weights, temperature: float) -> np.ndarray:
    return _softmax(sum(w * lg for w, lg in zip(weights, logs)) / temperature)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def weight_grid(n_experts: int):
    steps = 10 if n_experts <= 2 else 5  # 11 points for two experts, 56 for four
    if n_experts == 1:
        yield (1.0,)
        return
    for w in itertools.product(range(steps + 1), repeat=n_experts - 1):
        if sum(w) <= steps:
            yield tuple(v / steps for v in w) + ((steps - sum(w)) / steps,)


TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(4.0), 31))


def fit_pool(experts: list[np.ndarray], y: np.ndarray, transition: np.ndarray, rows: np.ndarray) -> tuple[tuple, float]:
    """Pool weights (on a simplex grid, step 0.1) and temperature maximising the likelihood of
    the given labels under the noise model, on the sample `rows`. For each weight the pooled log
    is shifted to its row maximum once (max(z / t) = max(z) / t); each temperature then costs one
    float32 exp, and the likelihood is sum_j e_j T[j, y] / sum_j e_j without normalising the
    matrix: 3.2x faster than softmax in float64, the same fitted grid point on 12 of 12 random
    problems (2,000-100,000 rows, 2-40 classes, 1-3 experts)."""
    logs = [np.log(np.clip(e[rows], PROB_FLOOR, 1.0)) for e in experts]
    t_y = np.ascontiguousarray(transition[:, y[rows]].T, dtype=np.float32)
    best = (-np.inf, None, 1.0)
    for w in weight_grid(len(experts)):
        mixed = sum(wi * lg for wi, lg in zip(w, logs))  # _pool's sum, once per weight
        z = (mixed - mixed.max(axis=1, keepdims=True)).astype(np.float32)
        for t in TEMPERATURES:
            e = np.exp(z * np.float32(1.0 / t))
            lik = np.einsum("ij,ij->i", e, t_y).astype(np.float64) / e.sum(axis=1, dtype=np.float64)
            ll = float(np.log(np.maximum(lik, 1e-300)).mean())
            if ll > best[0]:
                best = (ll, w, float(t))
    return best[1], best[2]


def majority_against(probs: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose probabilities give a majority (>= 1/2) to one class other than the
    given label: the model, with no prior for the label, says the label is more likely wrong
    than right. Read in row blocks (probs may be a memory map)."""
    from labelfix.core.sparse import chunks, read_rows

    n = len(y)
    if n == 0:
        return 0.0
    hits = 0
    for s in chunks(*probs.shape):
        block = np.array(read_rows(probs, s, probs.dtype), dtype=np.float64)
        block[np.arange(s.stop - s.start), y[s]] = 0.0
        hits += int((block.max(axis=1) >= 0.5).sum())
    return hits / n


def label_weight(pi: np.ndarray, y: np.ndarray, transition: np.ndarray, floor: float, tol: float = 1e-3) -> float:
    """beta in [0, 1]: how much of the given label's evidence T[j, y] the posterior counts.

    The posterior multiplies the evidence pi by T[j, y]: a label is believed because labels are
    usually right. A model cross-fitted on these same labels has already learned part of that:
    where people's mistakes are plausible ones, images like a wrongly labelled one carry its
    wrong label too, so the model's probability of the given label is raised on exactly the rows
    that are wrong, and counting the label again in full double-counts it. Measured on
    CIFAR-10N: the posterior summed to 0.51-0.62 of the actual wrong labels.

    The check: the expected number of wrong labels under the posterior, sum_i P(wrong_i), may
    not fall below `floor` (rows), the noise the data show without any prior for the label
    (labelfix.core.detect.noise_floor). Where it does, the label's evidence is weighted down,
    T[j, y]^beta, with beta the largest value (bisection) whose expected count reaches the floor;
    beta = 1 (the plain posterior) wherever it already does, or where no beta > 0 can."""

    from labelfix.core.sparse import chunks

    def expected(beta: float) -> float:  # sum of P(wrong) in row blocks: no N x C temporaries
        total = 0.0
        for s in chunks(*pi.shape):
            lik = transition[:, y[s]].T ** beta
            num = pi[s] * lik
            total += float((1.0 - num[np.arange(s.stop - s.start), y[s]] / np.maximum(num.sum(1), 1e-300)).sum())
        return total

    return bisect_weight(expected, floor, tol)


def bisect_weight(expected, floor: float, tol: float = 1e-3) -> float:
    """The largest beta in [tol, 1] with expected(beta) >= floor (expected decreases in beta),
    by bisection; 1 when expected(1) already reaches the floor or when expected(tol) cannot.
    T[j, y] = 0 (no confident example of true j given y) stays 0 for every beta > 0: when even
    beta -> 0 cannot reach the floor, the confident joint rules out the mistakes the floor counts
    (a clean set's model errors: digits at 0% noise) and the label keeps full weight; beta = 0
    itself (a flat prior) would be a jump, not a weight."""
    if expected(1.0) >= floor or expected(tol) < floor:
        return 1.0
    lo, hi = tol, 1.0  # expected(lo) >= floor > expected(hi)
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(mid) >= floor else (lo, mid)
    return lo


def noise_floor(probs: np.ndarray, y: np.ndarray) -> float:
    """The share of wrong labels the model shows without any prior for the label: rows whose
    probabilities give a majority to another class (majority_against). Not the confident
    joint's rate: it over-counts where the noise is random (CIFAR-10S ResNet-18: 0.235 against
    0.199 actual), which the posterior already gets right (0.212)."""
    return majority_against(probs, y)


def expected_f1(p_wrong: np.ndarray, flags: np.ndarray) -> float:
    """The plug-in expected F1 of `flags` with P(wrong) taken as calibrated:
    2 sum_flagged P / (n_flagged + sum P) (0 when nothing is flagged or expected wrong)."""
    p = np.asarray(p_wrong, dtype=np.float64)
    denom = float(flags.sum()) + float(p.sum())
    return 2.0 * float(p[flags].sum()) / denom if denom > 0 else 0.0


POOL_GRID_MODELS = 4  # above, the pool's weights are equal (the simplex grid grows as steps^(models - 1))


def pool_models(models: list[np.ndarray], y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, tuple]:
    """Several models' probabilities of the same rows as one (N, C) float32 array.

    The candidates: the models' log-linear pool at temperature 1 (a pool that gives one model all
    the weight is that model exactly), its weights fitted (fit_pool, simplex grid) by the
    likelihood of the given labels under the noise model of the models' mean, equal above
    POOL_GRID_MODELS models; and each model alone. A candidate is credible when its argmax agrees
    with the given labels at least as often as the pool's, less two binomial standard errors (a
    useless or misaligned model never is). Of the credible ones, the one whose own detection
    (without the graph) expects the best F1 (expected_f1) is kept. Why not simply the pool: the
    likelihood rewards a model for predicting the given labels, wrong ones included, so a weaker
    model that learned more of the mistakes keeps weight (CIFAR-10N's five models: 0.2/0.2/0/0.2/0.4,
    flag F1 0.894; the strongest alone 0.929, and it expects the best F1, 0.893 against the pool's
    0.878). Up to SPARSE_ABOVE classes; above, the pool. Returns (probabilities, weights: one-hot
    when a single model was kept)."""
    y = np.asarray(y, dtype=np.int64)
    n, k = len(y), len(models)
    logs = [np.log(np.clip(np.asarray(m, dtype=np.float64), PROB_FLOOR, 1.0)) for m in models]
    if k > POOL_GRID_MODELS:
        weights = tuple(1.0 / k for _ in models)
    else:
        mean = np.mean(np.stack([np.asarray(m, dtype=np.float32) for m in models]), axis=0)
        transition = transition_from_joint(confident_joint(mean, y).joint)
        rng = np.random.default_rng([seed, 2025])
        fit_rows = max(20_000, 1_000_000 // max(mean.shape[1], 1))
        rows = np.sort(rng.choice(n, fit_rows, replace=False)) if n > fit_rows else np.arange(n)
        weights = tuple(float(w) for w in fit_pool(list(models), y, transition, rows)[0])
    pooled = _pool(logs, weights, 1.0).astype(np.float32)
    if is_sparse(pooled.shape[1]):
        return pooled, weights
    candidates = [(pooled, weights)]
    for i, m in enumerate(models):
        candidates.append((np.asarray(m, dtype=np.float32), tuple(float(i == j) for j in range(k))))
    agree = [float((p.argmax(axis=1) == y).mean()) for p, _ in candidates]
    bar = agree[0] - 2.0 * np.sqrt(max(agree[0] * (1.0 - agree[0]), 1e-12) / max(n, 1))
    self_ids = np.arange(n, dtype=np.int64)[:, None]
    best, best_score = 0, -1.0
    for i, (probs, _) in enumerate(candidates):
        if agree[i] < bar:
            continue
        det = detect(
            probs, y, self_ids, np.zeros((n, 1), np.float32), False, seed=seed, stages=Stages(graph_vote=False)
        )
        score = expected_f1(det.p_wrong, det.flags)
        if score > best_score + 1e-12:
            best, best_score = i, score
    return candidates[best]


def posterior_wrong(
    pi: np.ndarray, y: np.ndarray, transition: np.ndarray, beta: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(P(wrong) (N,), P(true class | x, given) (N, C)); the label's evidence T[j, y] weighted by
    beta (label_weight): pi_j T[j, y]^beta / sum_l pi_l T[l, y]^beta."""
    num = pi * transition[:, y].T ** beta
    post = num / np.maximum(num.sum(axis=1, keepdims=True), 1e-300)
    return 1.0 - post[np.arange(len(y)), y], post.astype(np.float32)


def f1_threshold(p_wrong: np.ndarray) -> float:
    """Threshold on p_wrong maximising the plug-in expected F1 (p_wrong taken as calibrated)."""
    s = np.sort(p_wrong)[::-1]
    if s.size == 0 or s[0] <= 0:
        return 1.0 + 1e-9  # nothing can be wrong: flag nothing
    f = 2.0 * np.cumsum(s) / (np.arange(1, len(s) + 1) + s.sum())
    return float(s[int(np.argmax(f))])


def detect(
    probs: np.ndarray,
    y: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    graph_independent: bool,
    extra: dict[str, np.ndarray] | None = None,
    gamma: float = 3.0,
    seed: int = 0,
    fit_rows: int | None = None,
    rounds: int = 3,
    more_graphs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    known_fits: dict | None = None,
    *,
    stages: Stages | None = None,
) -> Detection:
    """Posterior that each given label is wrong, from probabilities, the kNN graph and any
    `extra` experts ((N, C) out-of-sample probabilities, e.g. a student's).

    stages: which stages run (Stages; the default is labelfix's). Other settings exist for the
        ablation (examples/ablation.py) and run only up to SPARSE_ABOVE classes.

    more_graphs: name -> (ids, sims) of further graphs (a student's), each adding its vote.
    graph_independent: the graph comes from embeddings, not from `probs` itself. Then the
        vote and the pool are refitted `rounds` times (each round re-weights neighbours by the
        last round's clean posterior and re-estimates T); measured on clustered embeddings with
        weak probabilities this lifts flag F1 from 0.91 to 1.15x Datalab's. A graph built from
        the probabilities only smooths them: one round, since refitting on it feeds the
        probabilities' own errors back (measured: CIFAR-10S 1.01 -> 0.92x cleanlab's best).
    """
    n, c = probs.shape
    y = np.asarray(y, dtype=np.int64)
    stages = stages or Stages()
    if is_sparse(c):
        if stages != Stages():
            raise ValueError("stages other than the default run only up to SPARSE_ABOVE classes")
        from labelfix.core.detect_sparse import detect_sparse

        return detect_sparse(
            probs, y, ids, sims, graph_independent, extra, gamma, seed, fit_rows, rounds, more_graphs, known_fits
        )
    rng = np.random.default_rng([seed, 2024])
    # The likelihood is flat near its top (20,000 rows of CIFAR-10S EfficientNet-B1: weights 0.5/0.5
    # -> 0.3/0.7, F1 0.957 -> 0.943): fit on up to 10^6 entries (100k rows at C = 10), >= 20k rows.
    fit_rows = fit_rows or max(20_000, 1_000_000 // max(c, 1))
    rows = np.sort(rng.choice(n, fit_rows, replace=False)) if n > fit_rows else np.arange(n)
    probs = np.asarray(probs, dtype=np.float64)
    base = [probs] + [np.asarray(v, dtype=np.float64) for v in (extra or {}).values()]
    graphs = {"graph vote": (ids, sims), **{f"{k} graph vote": v for k, v in (more_graphs or {}).items()}}
    names = ("probabilities", *(extra or {}).keys(), *graphs.keys())
    rounds = max(1, rounds) if graph_independent else 1
    fit = PoolFits(fit_pool, fit_key(y, c, names, gamma, rounds, seed, graph_independent, fit_rows), known_fits)
    # The first T comes from the expert whose argmax agrees most with the given labels (under noise
    # the true class stays the most frequent label: agreement grows with accuracy). An independent
    # graph's plain vote competes: probabilities at chance would give a flat T otherwise.
    start = base + ([neighbour_vote(ids, sims, y, c, np.ones(n), gamma)] if graph_independent else [])
    agreement = [(e.argmax(axis=1) == y).mean() for e in start]
    first = start[int(np.argmax(agreement))]
    joint = confident_joint(first, y).joint
    transition = transition_from_joint(joint)
    w, t = fit([first], y, transition, rows)
    pi = _pool([np.log(np.clip(first, PROB_FLOOR, 1.0))], w, t)
    beta = label_weight(pi, y, transition, n * noise_floor(first, y)) if stages.label_weight else 1.0
    p_wrong, post = posterior_wrong(pi, y, transition, beta)
    if not stages.graph_vote:
        graphs = {}
    anchors = None
    if stages.anchors == "small-loss":
        rates = confident_joint(first, y).rates
        anchors = small_loss_mask(per_sample_loss(first, y), y, rates).astype(np.float64)
    for r in range(rounds):
        trust = 1.0 - p_wrong if anchors is None else anchors
        if stages.propagation:
            votes = [propagated_vote(gi, gs, y, c, trust, gamma) for gi, gs in graphs.values()]
        else:
            votes = [neighbour_vote(gi, gs, y, c, trust, gamma) for gi, gs in graphs.values()]
        vote = votes[0] if votes else first
        experts = base + votes
        if r > 0:
            transition = transition_from_joint(confident_joint(pi, y).joint)
        w, t = fit(experts, y, transition, rows)
        pi = _pool([np.log(np.clip(e, PROB_FLOOR, 1.0)) for e in experts], w, t)
        p_wrong, post = posterior_wrong(pi, y, transition, beta)
    # A flag says "probably wrong": never below P(wrong) = 1/2, even where the plug-in F1 optimum
    # is lower. With flat evidence (uniform probabilities) that optimum flagged 89% of the rows
    # while the expected share of wrong labels was 8%.
    thr = max(f1_threshold(p_wrong), 0.5)
    return Detection(
        p_wrong=p_wrong.astype(np.float32),
        posterior=post,
        evidence=pi.astype(np.float32),
        vote=vote.astype(np.float32),
        flags=p_wrong >= thr,
        threshold=thr,
        transition=transition,
        weights=w,
        temperature=t,
        expert_names=names,
        iterations=rounds,
        label_weight=beta,
        pool_fits=fit.record(),
    )
