"""K-fold cross-fitting: each sample is scored by a model that never trained on its label; the
output every teacher gives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfix.models.batches import effective_batch_size


@dataclass
class TeacherOutput:
    """What any teacher gives, arrays in dataset row order.

    Attributes:
        probs: (N, C) float32 out-of-sample probabilities.
        embeddings: (N, D) float32, L2-normalised rows.
        stats: training statistics for summary.json.
    """

    probs: np.ndarray
    embeddings: np.ndarray
    stats: dict


def fold_assignment(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold id of each row, from the seed alone (never from the labels).

    Independent of the labels so that flipping one sample's label cannot move any sample to
    another fold: the model that scores a sample is then untouched by that sample's label.
    """
    rng = np.random.default_rng([seed, 7919])
    perm = rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[perm] = np.arange(n) % folds
    return out


def crossfit_linear_head(
    feats: np.ndarray, y: np.ndarray, num_classes: int, folds: int, seed: int, device: str, epochs: int = 60
) -> tuple[np.ndarray, dict]:
    """Out-of-sample probabilities from a multinomial logistic regression, K-fold cross-fitted."""
    import torch
    import torch.nn.functional as F

    n, d = feats.shape
    x_all = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(device)
    mu, sd = x_all.mean(0, keepdim=True), x_all.std(0, keepdim=True) + 1e-6
    x_all = (x_all - mu) / sd
    y_all = torch.from_numpy(y).to(device)
    assign = fold_assignment(n, folds, seed)
    probs = np.zeros((n, num_classes), dtype=np.float32)
    stats = {"folds": [], "head": "linear (cross-fitted)"}
    for k in range(folds):
        tr = torch.from_numpy(np.flatnonzero(assign != k)).to(device)
        te = np.flatnonzero(assign == k)
        torch.manual_seed(seed * 1000 + k)
        head = torch.nn.Linear(d, num_classes).to(device)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
        gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + k)
        bs = effective_batch_size(1024, len(tr))
        for _ in range(epochs):
            perm = tr[torch.randperm(len(tr), generator=gen).to(device)]
            for s in range(0, len(perm), bs):
                b = perm[s : s + bs]
                loss = F.cross_entropy(head(x_all[b]), y_all[b], label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.inference_mode():
            probs[te] = F.softmax(head(x_all[torch.from_numpy(te).to(device)]), 1).cpu().numpy()
        stats["folds"].append({"fold": k, "n_train": int(len(tr)), "n_scored": int(len(te))})
    return probs, stats


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
