"""Rows of the no-images generalisation matrix: synthetic probability + embedding
sets, class subsets, and CIFAR-10 rows from the published out-of-sample probabilities. Scoring
and the cleanlab side are in labelfix.benchmarks.matrix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Row:
    """One matrix row. `probs` (N, C) out-of-sample probabilities; `emb` (N, D) or None;
    `noisy` the labels a user would have; `true` the truth for scoring; `info` describes the row
    (noise kind and rate, model, classes, imbalance...) for the tables."""

    name: str
    probs: np.ndarray
    noisy: np.ndarray
    true: np.ndarray
    emb: np.ndarray | None = None
    class_names: list[str] | None = None
    info: dict = field(default_factory=dict)
    # several models' probabilities of the same rows (scan gets one --pred-probs per model;
    # `probs` is then their mean, what cleanlab is given)
    model_probs: list[np.ndarray] | None = None


# ---------------------------------------------------------------------------------------------
# Building rows


def renormalise(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum(1, keepdims=True)
    c = p.shape[1]
    return np.where(s > 0, p / np.maximum(s, 1e-300), 1.0 / c)


def restrict_classes(
    probs: np.ndarray, y_true: np.ndarray, classes: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples whose true class is in `classes`, their probabilities restricted to those columns
    and renormalised, and the true labels re-indexed 0..len(classes)-1. Returns (rows, probs, y)."""
    classes = list(classes)
    rows = np.flatnonzero(np.isin(y_true, classes))
    remap = np.full(probs.shape[1], -1)
    remap[classes] = np.arange(len(classes))
    return rows, renormalise(np.asarray(probs)[rows][:, classes]), remap[np.asarray(y_true)[rows]]


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of about n rows with the class proportions of y."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng([seed, 9091])
    out = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        out.append(rng.choice(idx, max(2, int(round(n * len(idx) / len(y)))), replace=False))
    return np.sort(np.concatenate(out))


def cross_fitted_probe(
    x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, folds: int = 2, c_reg: float = 1.0
) -> np.ndarray:
    """Out-of-sample probabilities of a linear probe (multinomial logistic regression) trained on
    labels `y` (the noisy ones, as a user's model would be) with K-fold cross-fitting: each row's
    probabilities come from the model that did not see it. Columns follow 0..num_classes-1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-12)
    out = np.zeros((len(y), num_classes))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        m = LogisticRegression(C=c_reg, max_iter=300, tol=1e-3)
        m.fit(x[tr], y[tr])
        out[np.ix_(te, m.classes_)] = m.predict_proba(x[te])
    return renormalise(out + 1e-6)


def synthetic_row(
    name: str,
    n: int = 12_000,
    dim: int = 128,
    num_classes: int = 10,
    subclusters: int = 3,
    emb_noise: float = 1.0,
    probe_dim: int = 8,
    probe_noise: float = 1.0,
    probe_from: str = "latent",
    noise: str = "symmetric",
    rate: float = 0.3,
    seed: int = 0,
) -> Row:
    """Clustered embeddings and a weak cross-fitted linear probe's probabilities.

    Each class has a centre drawn from N(0, I_dim) and `subclusters` sub-centres around it
    (offsets N(0, 0.6^2 I)); a sample's latent point is its sub-centre plus a small instance
    offset (N(0, 0.3^2 I)). Embeddings = latent + N(0, emb_noise^2 I): with 128 dims and 10
    classes, emb_noise 2.5 / 3 / 3.5 / 4 give a leave-one-out 10-NN accuracy of about 0.99 /
    0.96 / 0.88 / 0.78. The probe sees a degraded view: `probe_from="latent"`: a random
    projection of the latent point to `probe_dim` dims plus N(0, probe_noise^2) noise
    independent of the embedding noise (so the probabilities can be the stronger signal);
    `probe_from="embeddings"`: the same projection of the embeddings plus noise (probabilities
    strictly weaker than the embeddings). The probe (multinomial logistic regression, 2-fold
    cross-fitting) trains on the noisy labels, as a user's model would.
    Noise: "symmetric", "pair" (k -> k+1), "random-pair" (a seeded pairing of the classes) or
    "plausible" (labelfix.core.noise.plausible_noise: the samples nearest another class get it,
    mistakes the probe then learns).
    """
    from labelfix.core.noise import asymmetric_noise, plausible_noise, random_pairs, symmetric_noise

    rng = np.random.default_rng([seed, 5150, num_classes, dim])
    c = num_classes
    y = np.repeat(np.arange(c), int(np.ceil(n / c)))[:n]
    y = y[rng.permutation(n)]
    centres = rng.normal(0, 1, (c, dim))
    subs = centres[:, None, :] + 0.6 * rng.normal(0, 1, (c, subclusters, dim))
    sub_of = rng.integers(0, subclusters, n)
    latent = subs[y, sub_of] + 0.3 * rng.normal(0, 1, (n, dim))
    emb = latent + emb_noise * rng.normal(0, 1, (n, dim))
    proj = rng.normal(0, 1, (dim, probe_dim)) / np.sqrt(dim)
    base = latent if probe_from == "latent" else emb
    view = base @ proj + probe_noise * rng.normal(0, 1, (n, probe_dim))
    if noise == "symmetric":
        noisy = symmetric_noise(y, rate, c, seed)
    elif noise == "pair":
        noisy = asymmetric_noise(y, rate, c, seed)
    elif noise == "random-pair":
        noisy = asymmetric_noise(y, rate, c, seed, random_pairs(c, seed))
    elif noise == "plausible":
        noisy = plausible_noise(y, latent, centres, rate, seed)
    else:
        raise ValueError(f"unknown synthetic noise {noise!r}")
    probs = cross_fitted_probe(view, noisy, c, seed)
    info = {
        "group": "synthetic",
        "noise": noise,
        "rate": rate,
        "classes": c,
        "n": n,
        "model": f"probe{probe_dim}d/{probe_from} sigma {probe_noise:g}; emb {dim}d sigma {emb_noise:g}",
    }
    return Row(name, probs.astype(np.float32), noisy, y, emb.astype(np.float32), [f"c{k:02d}" for k in range(c)], info)


def knn_accuracy(emb: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-NN majority vote accuracy of the embeddings against labels `y` (cosine):
    how strong the embedding signal is, for the table."""
    import faiss

    x = np.ascontiguousarray(emb, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, ids = index.search(x, k + 1)
    c = int(y.max()) + 1
    votes = np.zeros((len(y), c))
    nb = ids[:, 1:]
    np.add.at(votes, (np.repeat(np.arange(len(y)), k), y[nb].ravel()), 1.0)
    return float((votes.argmax(1) == y).mean())


# ---------------------------------------------------------------------------------------------
# Running and scoring


# ---------------------------------------------------------------------------------------------
# CIFAR-10 rows from the published out-of-sample probabilities (no images)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MODELS = {"r18": "resnet18", "eb1": "efficientnet_b1", "r50": "resnet50d", "twins": "twins", "swin": "swin"}


def cifar_row(
    data: Path,
    name: str,
    model: str,
    noise: str = "given",
    rate: float = 0.0,
    n: int | None = None,
    seed: int = 0,
    classes: list[int] | None = None,
    imbalance: float | None = None,
    max_per_class: int = 2500,
    confusion_model: str | None = None,
) -> Row:
    """A row from `data/cifar10s-pred-probs`. `noise="given"`: the published noisy labels (all
    50,000 rows unless n). Otherwise NEW noise is injected from the true labels into a subset,
    the model's probabilities kept as fixed evidence: "symmetric", "pair" (k -> k+1),
    "random-pair" (a seeded pairing), "human" (flips drawn from `confusion_model`'s confusion
    matrix P(pred | true), off-diagonal renormalised). `classes`: keep samples whose true class is
    listed, probabilities restricted to those columns and renormalised. `imbalance`: a
    long-tailed subset, class sizes decaying geometrically from `max_per_class` by that factor;
    else `n`: a stratified subset."""
    from labelfix.core.noise import (
        asymmetric_noise,
        confusion_from_probs,
        confusion_noise,
        long_tail_indices,
        random_pairs,
        symmetric_noise,
    )

    d = Path(data) / "cifar10s-pred-probs"
    probs = np.load(d / f"pred_probs_{CIFAR_MODELS.get(model, model)}.npy")
    true = np.load(d / "true_labels.npy").astype(np.int64)
    given = np.load(d / "noisy_labels.npy").astype(np.int64)
    names = list(CIFAR10_CLASSES)
    other = (
        None
        if confusion_model is None
        else np.load(d / f"pred_probs_{CIFAR_MODELS.get(confusion_model, confusion_model)}.npy")
    )
    if classes is not None:
        if noise == "given":
            raise ValueError("a class subset needs re-injected noise (the given noisy labels leave the subset)")
        rows, probs, true = restrict_classes(probs, true, classes)
        if other is not None:
            other = renormalise(other[rows][:, classes])
        names = [CIFAR10_CLASSES[k] for k in classes]
    c = probs.shape[1]
    if imbalance is not None:
        keep = long_tail_indices(true, imbalance, max_per_class, seed)
    elif n is not None:
        keep = stratified_subset(true, n, seed)
    else:
        keep = np.arange(len(true))
    if noise == "given":
        noisy = given[keep]
    elif noise == "symmetric":
        noisy = symmetric_noise(true[keep], rate, c, seed)
    elif noise == "pair":
        noisy = asymmetric_noise(true[keep], rate, c, seed)
    elif noise == "random-pair":
        noisy = asymmetric_noise(true[keep], rate, c, seed, random_pairs(c, seed))
    elif noise == "human":
        if other is None:
            raise ValueError("human-like noise needs confusion_model")
        noisy = confusion_noise(true[keep], rate, confusion_from_probs(other, true, c), seed)
    else:
        raise ValueError(f"unknown noise {noise!r}")
    info = {
        "group": "cifar-given" if noise == "given" else "cifar",
        "noise": noise if confusion_model is None else f"human({confusion_model})",
        "rate": None if noise == "given" else rate,
        "model": model,
        "imbalance": imbalance,
        "class_subset": None if classes is None else [CIFAR10_CLASSES[k] for k in classes],
    }
    return Row(name, renormalise(probs[keep]).astype(np.float32), noisy, true[keep], None, names, info)


# ---------------------------------------------------------------------------------------------
# Real human label noise: CIFAR-10N aggregate labels with probabilities of models trained on them

HUMAN_DIR = "cifar10n-aggre-pred-probs"


def human_row(
    data: Path,
    name: str,
    models: list[str],
    n: int | None = None,
    restore: float = 0.0,
    classes: list[int] | None = None,
    seed: int = 0,
    degrade: float = 0.0,
) -> Row:
    """A row from `data/cifar10n-aggre-pred-probs`: the human labels as given (CIFAR-10N
    aggregate) and the out-of-sample probabilities of models cross-fitted on those same labels.
    `models`: one model, or several (an ensemble: scan gets each file, cleanlab their mean).
    `n`: a stratified subset of the rows. `restore`: a seeded share of the wrong labels set back
    to the truth (a label set less noisy than the one the models learned from). `classes`: the
    rows whose true and given labels are both among these classes, probabilities restricted to
    their columns and renormalised. `degrade`: a weaker model that learned the same labels, its
    log-probabilities plus seeded Gaussian noise of that standard deviation (renormalised)."""
    d = Path(data) / HUMAN_DIR
    true = np.load(d / "true_labels.npy").astype(np.int64)
    given = np.load(d / "noisy_labels.npy").astype(np.int64)
    probs = [np.asarray(np.load(d / f"pred_probs_{CIFAR_MODELS.get(m, m)}.npy"), dtype=np.float64) for m in models]
    names = list(CIFAR10_CLASSES)
    keep = np.arange(len(true))
    if classes is not None:
        keep = np.flatnonzero(np.isin(true, classes) & np.isin(given, classes))
        remap = np.full(len(CIFAR10_CLASSES), -1)
        remap[classes] = np.arange(len(classes))
        true, given = remap[true[keep]], remap[given[keep]]
        probs = [renormalise(p[keep][:, classes]) for p in probs]
        names = [CIFAR10_CLASSES[k] for k in classes]
        keep = np.arange(len(true))
    if n is not None:
        keep = stratified_subset(given, n, seed)
    true, given, probs = true[keep], given[keep].copy(), [renormalise(p[keep]).astype(np.float32) for p in probs]
    if restore > 0:
        rng = np.random.default_rng([seed, 7717])
        wrong = np.flatnonzero(given != true)
        back = rng.choice(wrong, int(round(restore * len(wrong))), replace=False)
        given[back] = true[back]
    if degrade > 0:
        rng = np.random.default_rng([seed, 7718])
        probs = [
            renormalise(np.exp(np.log(np.clip(p, 1e-6, 1.0)) + degrade * rng.normal(0, 1, p.shape))).astype(np.float32)
            for p in probs
        ]
    mean = probs[0] if len(probs) == 1 else np.mean(np.stack(probs), axis=0).astype(np.float32)
    info = {
        "group": "human",
        "noise": "human (CIFAR-10N aggregate)"
        + (f", {restore:.0%} of wrong restored" if restore else "")
        + (f", model degraded (log-noise sd {degrade:g})" if degrade else ""),
        "rate": None,
        "model": "+".join(models) if len(models) > 1 else models[0],
        "imbalance": None,
        "class_subset": None if classes is None else names,
    }
    return Row(name, mean, given, true, None, names, info, model_probs=probs if len(probs) > 1 else None)
