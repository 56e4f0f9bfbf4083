"""Seeded label-noise injection, for the demo and benchmarks."""

from __future__ import annotations

import numpy as np


def symmetric_noise(y: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Each label is replaced, with probability `rate`, by a different class chosen uniformly.

    Exactly the flipped rows are wrong, so `rate` is the expected share of wrong labels.
    """
    rng = np.random.default_rng([seed, 31337])
    flip = rng.random(len(y)) < rate
    noisy = y.copy()
    noisy[flip] = (y[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
    return noisy


# Fashion-MNIST's usual confusable pairs: T-shirt/top <-> Shirt, Pullover <-> Coat,
# Sandal <-> Sneaker, plus Trouser <-> Dress and Ankle boot -> Sneaker; Bag keeps its label.
FASHION_MNIST_PAIRS = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 5, 1: 3, 3: 1, 9: 7}


def asymmetric_noise(
    y: np.ndarray, rate: float, num_classes: int, seed: int, pairs: dict[int, int] | None = None
) -> np.ndarray:
    """Each class flips, with probability `rate`, to one fixed confusable class.

    `pairs` maps class -> target; classes not in it keep their labels. Without `pairs`, class
    k flips to (k + 1) mod C (the "pair flip" of the noisy-label literature).
    """
    pairs = pairs if pairs is not None else {k: (k + 1) % num_classes for k in range(num_classes)}
    rng = np.random.default_rng([seed, 4711])
    flip = rng.random(len(y)) < rate
    target = np.array([pairs.get(k, k) for k in range(num_classes)])
    noisy = y.copy()
    noisy[flip] = target[y[flip]]
    return noisy


def instance_noise(y: np.ndarray, features: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Instance-dependent noise (Xia et al. 2020, "Part-dependent label noise"): each sample's
    flip probability is drawn from N(rate, 0.1^2) truncated to [0, 1]; its flip target follows
    softmax(x W_y) over the other classes, with W_y a random projection per class, so both the
    chance and the direction of a flip depend on the image `features` (N, D)."""
    from scipy.stats import truncnorm

    rng = np.random.default_rng([seed, 1234])
    n = len(y)
    x = np.asarray(features, dtype=np.float64).reshape(n, -1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    sd = 0.1
    a, b = (0 - rate) / sd, (1 - rate) / sd
    q = truncnorm.rvs(a, b, loc=rate, scale=sd, size=n, random_state=np.random.RandomState(seed))
    w = rng.normal(size=(num_classes, x.shape[1], num_classes))
    noisy = y.copy()
    for i in range(n):
        logits = x[i] @ w[y[i]]
        logits[y[i]] = -np.inf
        p = np.exp(logits - logits[np.isfinite(logits)].max())
        p[y[i]] = 0.0
        p = q[i] * p / p.sum()
        p[y[i]] = 1.0 - q[i]
        noisy[i] = rng.choice(num_classes, p=p)
    return noisy


def plausible_noise(y: np.ndarray, latent: np.ndarray, centres: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """People's kind of mistake: the `rate` share of samples that lie nearest to another class
    (smallest margin between the distance to their own class centre and to the nearest other
    one, with a little seeded jitter) get that nearest other class. The mistakes are plausible
    and consistent, so a model trained on these labels learns them, as models trained on
    CIFAR-10N's human labels do."""
    rng = np.random.default_rng([seed, 4321])
    d = ((np.asarray(latent)[:, None, :] - np.asarray(centres)[None, :, :]) ** 2).sum(-1)
    own = d[np.arange(len(y)), y]
    d[np.arange(len(y)), y] = np.inf
    other = d.argmin(1)
    margin = d.min(1) - own
    margin = margin / (margin.std() + 1e-12) + 0.1 * rng.normal(0, 1, len(y))
    flip = np.argsort(margin, kind="stable")[: int(round(rate * len(y)))]
    noisy = np.asarray(y).copy()
    noisy[flip] = other[flip]
    return noisy


def inject(kind: str, y: np.ndarray, rate: float, num_classes: int, seed: int, features=None, pairs=None) -> np.ndarray:
    if kind == "symmetric":
        return symmetric_noise(y, rate, num_classes, seed)
    if kind == "asymmetric":
        return asymmetric_noise(y, rate, num_classes, seed, pairs)
    if kind == "instance":
        if features is None:
            raise ValueError("instance-dependent noise needs the images")
        return instance_noise(y, features, rate, num_classes, seed)
    raise ValueError(f"unknown noise kind {kind!r} (symmetric, asymmetric, instance)")


def random_pairs(num_classes: int, seed: int) -> dict[int, int]:
    """A fixed random pairing of the classes for asymmetric noise: the classes are shuffled and
    consecutive ones swap (a <-> b); with an odd count the last class flips one way into the
    first pair. Every class gets a target other than itself."""
    if num_classes < 2:
        raise ValueError("a pairing needs at least two classes")
    order = np.random.default_rng([seed, 2718]).permutation(num_classes)
    pairs: dict[int, int] = {}
    for a, b in zip(order[0:-1:2], order[1::2]):
        pairs[int(a)], pairs[int(b)] = int(b), int(a)
    if num_classes % 2:
        pairs[int(order[-1])] = int(order[0])
    return pairs


def confusion_from_probs(probs: np.ndarray, y_true: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """P(predicted = column | true = row), from a model's argmax on samples with known true labels.

    Used to draw "human-like" noise: the mistakes a (different) model makes, which concentrate on
    visually similar classes, stand in for the mistakes annotators make."""
    probs = np.asarray(probs)
    c = num_classes or probs.shape[1]
    counts = np.zeros((c, c))
    np.add.at(counts, (np.asarray(y_true), probs.argmax(1)), 1.0)
    rows = counts.sum(1, keepdims=True)
    return np.divide(counts, rows, out=np.eye(c), where=rows > 0)


def confusion_noise(y: np.ndarray, rate: float, confusion: np.ndarray, seed: int) -> np.ndarray:
    """Each label flips with probability `rate`; the new class is drawn from its true class's row
    of `confusion` (P(other | true)) with the diagonal removed and the row renormalised, so flips
    follow the confusion's off-diagonal pattern. A row with no off-diagonal mass flips uniformly.

    Exactly the flipped rows are wrong, so `rate` is the expected share of wrong labels."""
    y = np.asarray(y)
    conf = np.array(confusion, dtype=np.float64)
    c = conf.shape[0]
    np.fill_diagonal(conf, 0.0)
    conf = np.clip(conf, 0.0, None)
    rows = conf.sum(1, keepdims=True)
    uniform = (1.0 - np.eye(c)) / max(c - 1, 1)
    conf = np.where(rows > 0, conf / np.maximum(rows, 1e-300), uniform)
    rng = np.random.default_rng([seed, 8642])
    flip = rng.random(len(y)) < rate
    u = rng.random(len(y))
    cdf = np.cumsum(conf, axis=1)
    cdf[:, -1] = 1.0
    target = (u[:, None] > cdf[y]).sum(1)
    noisy = y.copy()
    noisy[flip] = target[flip]
    return noisy


def long_tail_indices(y: np.ndarray, imbalance: float, max_per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of a long-tailed subset: class sizes decay geometrically from
    `max_per_class` (largest) to `max_per_class / imbalance` (smallest); which class gets which
    size is a seeded shuffle. A class with fewer samples than its size gives all it has."""
    y = np.asarray(y)
    classes = np.unique(y)
    rng = np.random.default_rng([seed, 1618])
    order = rng.permutation(classes)
    m = len(classes)
    picked = []
    for rank, k in enumerate(order):
        size = int(round(max_per_class * float(imbalance) ** (-rank / max(m - 1, 1))))
        idx = np.flatnonzero(y == k)
        picked.append(rng.choice(idx, min(max(size, 2), len(idx)), replace=False))
    return np.sort(np.concatenate(picked))
