"""Teachers: where out-of-sample probabilities and embeddings come from.

* `auto`: a small ResNet trained on the given labels with K-fold cross-fitting, so each sample's
  probabilities come from the fold model that never trained on it. The generalised cross-entropy
  loss (Zhang & Sabuncu 2018) keeps the models from fitting wrong labels (optionally with the ELR
  regulariser, Liu et al. 2020). Embeddings are the L2-normalised
  penultimate features of all K fold models, concatenated: one shared space for the graph.
  Each fold starts with plain cross-entropy (the warm-up: GCE from a random start can stall at the
  uniform prediction) and is watched: a fold whose training agreement with its labels is not
  clearly above the majority-class share after the warm-up, or at the end, is restarted once with
  cross-entropy at a lower learning rate; both are recorded with per-epoch learning curves.
* a torchvision architecture with `weights`, or a user checkpoint: a frozen feature extractor;
  probabilities come from a linear head cross-fitted on those features.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelfix.config import TeacherConfig
from labelfix.errors import InputError, TeacherUnavailable
from labelfix.progress import NullProgress, Progress


@dataclass
class TeacherOutput:
    """Arrays in dataset row order.

    Attributes:
        probs: (N, C) float32 out-of-sample probabilities.
        embeddings: (N, D) float32, L2-normalised rows.
        stats: per-fold training statistics for summary.json.
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


# ---------------------------------------------------------------------------------------------
# Network


def build_small_resnet(in_channels: int, num_classes: int, width: int = 32):
    """A ResNet with three stages (width, 2 width, 4 width) and a 3x3 stem, for images <= 64 px."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.act = nn.ReLU(inplace=True)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.act(self.b1(self.c1(x)))
            out = self.b2(self.c2(out))
            return self.act(out + (x if self.short is None else self.short(x)))

    class SmallResNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
            )
            self.layers = nn.Sequential(Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4 * w, num_classes)
            self.feature_dim = 4 * w

        def features(self, x):
            return self.pool(self.layers(self.stem(x))).flatten(1)

        def forward(self, x):
            return self.fc(self.features(x))

    return SmallResNet()


# ---------------------------------------------------------------------------------------------
# Batches from the on-disk image array


# Input normalisation of the auto teacher, the same rule for every data set: "image" brings each
# image and channel to zero mean and unit spread, so colour tints, inversion and contrast drop
# out (26 tinted classes at 16 px, clean labels, 780 images: held-out accuracy 0.754, against
# 0.103 for "fixed", which maps [0, 1] to [-1, 1] and let the model memorise colours); "data"
# (before issue 10) uses the per-channel mean and spread of a 4,096-image sample.
NORMALISE = "image"
NORM_MEAN, NORM_STD = 0.5, 0.5


class Batches:
    """Normalised float batches read from a (N, H, W, C) uint8 array."""

    def __init__(
        self, images: np.ndarray, device: str, size: int | None = None, mean=None, std=None, per_image: bool = False
    ):
        import torch

        self.images = images
        self.per_image = per_image
        self.device = device
        self.size = size
        if mean is None:
            rng = np.random.default_rng(0)
            idx = np.sort(rng.choice(len(images), size=min(len(images), 4096), replace=False))
            sample = np.asarray(images[idx], dtype=np.float32) / 255.0
            mean = sample.mean(axis=(0, 1, 2))
            std = sample.std(axis=(0, 1, 2)) + 1e-6
        self.mean = torch.tensor(np.asarray(mean, dtype=np.float32)).view(1, -1, 1, 1).to(device)
        self.std = torch.tensor(np.asarray(std, dtype=np.float32)).view(1, -1, 1, 1).to(device)

    def get(self, idx: np.ndarray):
        import torch
        import torch.nn.functional as F

        order = np.argsort(idx)
        arr = np.asarray(self.images[idx[order]])
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        x = torch.from_numpy(arr[inv]).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.per_image:  # each image and channel to zero mean, unit spread: tint and contrast drop out
            x = x - x.mean(dim=(2, 3), keepdim=True)
            return x / x.std(dim=(2, 3), keepdim=True).clamp_min(0.02)
        return (x - self.mean) / self.std


def _random_shift(x, gen, pad: int):
    """Pad with edge values and crop back at a random offset per sample."""
    import torch
    import torch.nn.functional as F

    if pad <= 0:
        return x
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    return torch.stack([xp[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(n)])


def effective_batch_size(requested: int, n: int) -> int:
    """The requested batch size, shrunk on small datasets so an epoch has about ten steps
    (a 150-sample fold with batch 256 would otherwise train one step per epoch)."""
    return int(max(1, min(requested, n, max(16, n // 10))))


def auto_epochs(n_train: int) -> int:
    """About 80k sample-visits per fold model, between 8 and 40 epochs (fits 20k images on 2 CPU
    cores in the scan time budget; measured in docs/benchmarks.md)."""
    return int(np.clip(round(80_000 / max(n_train, 1)), 8, 40))


AUGMENT_BELOW = 5_000


def uses_augmentation(setting: str, n_train: int) -> bool:
    """Whether the auto teacher augments: "on", "off", or "auto" = fewer than AUGMENT_BELOW
    training images per fold model."""
    return setting == "on" or (setting == "auto" and n_train < AUGMENT_BELOW)


# ---------------------------------------------------------------------------------------------
# Chance level, stall detection, recipes

# One-sided binomial significance below which an agreement count is "clearly above" the
# majority-class share. Used by the stall detector (training agreement) and by the weak-teacher
# gate (out-of-sample agreement of any probability source).
CLEARLY_ABOVE_P = 1e-3


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
    pred = np.asarray(probs).argmax(1)
    hits = int((pred == y).sum())
    q = np.bincount(pred, minlength=num_classes) / max(n, 1)
    g = np.bincount(y, minlength=num_classes) / max(n, 1)
    chance = float(np.dot(q, g))
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


@dataclass(frozen=True)
class Recipe:
    """How one fold model is trained. `warmup` is the share of epochs trained with plain
    cross-entropy before switching to `loss`."""

    name: str
    loss: str
    lr: float
    warmup: float


# Restarted folds train with cross-entropy throughout at this fraction of the learning rate.
FALLBACK_LR_FACTOR = 1 / 3


def recipes(cfg: TeacherConfig) -> list[Recipe]:
    """The default recipe, then the one a stalled fold is restarted with."""
    if cfg.loss == "ce" or cfg.warmup >= 1.0:
        first = Recipe("ce", "ce", cfg.lr, 1.0)
    elif cfg.warmup > 0:
        first = Recipe(f"ce-warmup+{cfg.loss}", cfg.loss, cfg.lr, cfg.warmup)
    else:
        first = Recipe(cfg.loss, cfg.loss, cfg.lr, 0.0)
    fallback = Recipe("ce-low-lr", "ce", cfg.lr * FALLBACK_LR_FACTOR, 1.0)
    return [first, fallback] if cfg.restart_on_stall else [first]


def warmup_epochs(recipe: Recipe, epochs: int) -> int:
    """Cross-entropy epochs at the start: the recipe's share, at least one when it has any."""
    if recipe.warmup <= 0:
        return 0
    return int(min(epochs, max(1, round(recipe.warmup * epochs))))


# A fold is not judged before this many optimiser steps: fewer are under-training, not a stall
# (150 digits: training agreement leaves chance after about 30 steps).
MIN_STEPS_BEFORE_CHECK = 60


def stall_check_epoch(recipe: Recipe, epochs: int, steps_per_epoch: int) -> int:
    """1-based epoch after which the early stall check runs: the end of the warm-up (a quarter
    of the epochs without one), once MIN_STEPS_BEFORE_CHECK steps are done; 0 (none: only the
    last epoch is checked) when that is not before the last epoch."""
    w = warmup_epochs(recipe, epochs)
    w = w if 0 < w < epochs else max(1, epochs // 4)
    w = max(w, -(-MIN_STEPS_BEFORE_CHECK // max(steps_per_epoch, 1)))
    return w if w < epochs else 0


def curve_rows(n_held: int, n_train: int, cap: int) -> int:
    """Held-out rows scored after every epoch for the learning curve: at most `cap`, and about
    a tenth of the training rows (a forward pass over them costs ~3% of the epoch)."""
    return int(min(cap, n_held, max(100, n_train // 10)))


def _train_fold(
    model,
    batches: Batches,
    train_idx,
    y,
    num_classes,
    cfg: TeacherConfig,
    seed,
    epochs,
    progress_task,
    precision="fp32",
    recipe: Recipe | None = None,
    curve_idx=None,
    stop_early: bool = False,
) -> dict:
    """Train one fold model in place. Returns its learning curve and whether it stalled.

    The stall detector looks only at the training rows (the agreement of the training batches'
    predictions with their labels): a decision taken from held-out labels would let a held-out
    sample's label shape the model that scores it. `curve_idx` (held-out rows) is only recorded.
    With `stop_early` (a fallback recipe follows), training stops at the first failed check.
    """
    import time

    import torch
    import torch.nn.functional as F

    from labelfix.runtime import autocast

    recipe = recipe or recipes(cfg)[0]
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed)
    n = len(train_idx)
    bs = effective_batch_size(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max(recipe.lr, 1e-12), total_steps=epochs * steps_per_epoch, pct_start=0.25
    )
    if recipe.lr <= 0:  # OneCycle cannot be built with 0; keep it scheduling, at 0
        for g in opt.param_groups:
            g["lr"] = 0.0
        sched = None
    targets = torch.zeros(n, num_classes, device=batches.device)
    y_t = torch.from_numpy(y[train_idx]).to(batches.device)
    pad = max(1, batches.images.shape[1] // 8)
    augment = uses_augmentation(cfg.augment, n)
    warm = warmup_epochs(recipe, epochs)
    check_at = stall_check_epoch(recipe, epochs, steps_per_epoch)
    chance = majority_share(y[train_idx], num_classes)
    curve = {"epoch": [], "loss": [], "train_loss": [], "train_agreement": [], "heldout_agreement": []}
    stalled_at = None
    curve_seconds = 0.0
    model.train()
    for epoch in range(epochs):
        loss_name = "ce" if epoch < warm else recipe.loss
        perm = rng.permutation(n)
        total, count, hits = 0.0, 0, 0
        for s in range(steps_per_epoch):
            local = perm[s * bs : (s + 1) * bs]
            x = batches.get(train_idx[local])
            if augment:
                x = _random_shift(x, gen, pad)
            with autocast(batches.device, precision):
                logits = model(x)
            logits = logits.float()
            yb = y_t[local]
            probs = F.softmax(logits, dim=1)
            if loss_name == "gce":
                p_y = probs.gather(1, yb[:, None]).squeeze(1).clamp_min(1e-6)
                loss = ((1.0 - p_y**cfg.gce_q) / cfg.gce_q).mean()
            else:
                loss = F.cross_entropy(logits, yb)
            if cfg.elr_lambda > 0:
                p = probs.clamp(1e-4, 1 - 1e-4)
                lt = torch.from_numpy(local).to(batches.device)
                with torch.no_grad():
                    targets[lt] = cfg.elr_beta * targets[lt] + (1 - cfg.elr_beta) * (p / p.sum(1, keepdim=True))
                elr = torch.log(1 - (targets[lt] * p).sum(1)).mean()
                loss = loss + cfg.elr_lambda * elr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(local)
            count += len(local)
            hits += int((logits.detach().argmax(1) == yb).sum())
            progress_task.advance(len(local))
        curve["epoch"].append(epoch + 1)
        curve["loss"].append(loss_name)
        curve["train_loss"].append(round(total / max(count, 1), 4))
        curve["train_agreement"].append(round(hits / max(count, 1), 4))
        if curve_idx is not None and len(curve_idx):
            tc = time.perf_counter()
            model.eval()
            outs = _infer(model, batches, curve_idx, cfg.batch_size * 2, precision=precision)
            pred = torch.cat([o.float() for o in outs]).argmax(1).cpu().numpy()
            curve["heldout_agreement"].append(round(float((pred == y[curve_idx]).mean()), 4))
            model.train()
            curve_seconds += time.perf_counter() - tc
        if epoch + 1 in (check_at, epochs) and not clearly_above_chance(hits, count, chance):
            stalled_at = epoch + 1
            if stop_early or epoch + 1 == epochs:
                break
        elif epoch + 1 == epochs:
            stalled_at = None  # stalled at the warm-up check, then learned
    model.eval()
    if not curve["heldout_agreement"]:
        del curve["heldout_agreement"]
    return {
        "recipe": recipe.name,
        "lr": recipe.lr,
        "warmup_epochs": warm,
        "stall_check_epochs": sorted({check_at, epochs} - {0}),
        "chance_train": round(chance, 4),
        "stalled_at_epoch": stalled_at,
        "curve": curve,
        "seconds": round(time.perf_counter() - t0, 2),
        "curve_seconds": round(curve_seconds, 2),
    }


def _infer(model_fn, batches: Batches, idx: np.ndarray, batch_size: int, task=None, precision: str = "fp32"):
    import torch

    from labelfix.runtime import autocast

    outs = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            x = batches.get(b)
            with autocast(batches.device, precision):
                outs.append(model_fn(x))
            if task is not None:
                task.advance(len(b))
    return outs


def train_auto_teacher(
    images: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    cfg: TeacherConfig,
    seed: int,
    device: str,
    progress: Progress | None = None,
) -> TeacherOutput:
    """K-fold cross-fitted small ResNet. `images` is (N, H, W, C) uint8 (a memmap is fine).

    A fold whose model stalls (training agreement with its labels not clearly above the
    majority-class share after the warm-up or at the end) is trained again from a fresh start
    with the fallback recipe; `stats["folds"][k]` records the recipe used, `restarted`,
    `stalled` (the last attempt stalled too) and every attempt's learning curve.
    """
    import time

    import torch

    from labelfix.runtime import resolve_precision

    progress = progress or NullProgress()
    n = len(y)
    folds = fold_assignment(n, cfg.folds, seed)
    batches = (
        Batches(images, device, mean=NORM_MEAN, std=NORM_STD, per_image=NORMALISE == "image")
        if NORMALISE in ("fixed", "image")
        else Batches(images, device)
    )
    precision = resolve_precision(device, cfg.precision)
    probs = np.zeros((n, num_classes), dtype=np.float32)
    feats = []
    stats = {
        "folds": [],
        "precision": precision,
        "loss": cfg.loss,
        "width": cfg.width,
        "lr": cfg.lr,
        "warmup": cfg.warmup,
        "normalisation": NORMALISE,
        "restarts": 0,
        "stalled_folds": 0,
        "stall_test": f"one-sided binomial p < {CLEARLY_ABOVE_P:g} against the majority-class share",
    }
    all_idx = np.arange(n)
    plan = recipes(cfg)
    for k in range(cfg.folds):
        t0 = time.perf_counter()
        train_idx = np.flatnonzero(folds != k)
        held = np.flatnonzero(folds == k)
        epochs = cfg.epochs or auto_epochs(len(train_idx))
        m = curve_rows(len(held), len(train_idx), cfg.curve_rows)
        curve_idx = (
            np.sort(np.random.default_rng([seed, k, 404]).choice(held, size=m, replace=False)) if m > 0 else None
        )
        attempts = []
        for a, recipe in enumerate(plan):
            torch.manual_seed(seed * 1000 + k + 100_003 * a)
            model = build_small_resnet(images.shape[3], num_classes, cfg.width).to(device)
            label = f"teacher fold {k + 1}/{cfg.folds}" + (" (restart)" if a else "")
            with progress.task(label, total=epochs * len(train_idx)) as task:
                run = _train_fold(
                    model,
                    batches,
                    train_idx,
                    y,
                    num_classes,
                    cfg,
                    seed * 1000 + k + 100_003 * a,
                    epochs,
                    task,
                    precision,
                    recipe,
                    curve_idx,
                    stop_early=a + 1 < len(plan),
                )
            attempts.append(run)
            if run["stalled_at_epoch"] is None:
                break
        last = attempts[-1]
        with progress.task(f"embed fold {k + 1}/{cfg.folds}", total=n) as task:
            outs = _infer(
                lambda x, m=model: _feat_and_prob(m, x), batches, all_idx, cfg.batch_size * 2, task, precision
            )
        f = torch.cat([o[0] for o in outs]).cpu().numpy()
        p = torch.cat([o[1] for o in outs]).cpu().numpy()
        probs[held] = p[held]
        feats.append(f)
        restarted = len(attempts) > 1
        stalled = last["stalled_at_epoch"] is not None
        stats["restarts"] += int(restarted)
        stats["stalled_folds"] += int(stalled)
        stats["folds"].append(
            {
                "fold": k,
                "n_train": int(len(train_idx)),
                "n_scored": int(len(held)),
                "epochs": epochs,
                "augment": uses_augmentation(cfg.augment, len(train_idx)),
                "recipe": last["recipe"],
                "restarted": restarted,
                "restart_reason": (
                    f"{attempts[0]['recipe']}: training agreement {attempts[0]['curve']['train_agreement'][-1]:.1%} not clearly "
                    f"above the majority-class share {attempts[0]['chance_train']:.1%} after epoch {attempts[0]['stalled_at_epoch']}"
                )
                if restarted
                else None,
                "stalled": stalled,
                "train_loss": last["curve"]["train_loss"],
                "curve_rows": int(m),
                "attempts": attempts,
                "heldout_agreement_with_given": float((p[held].argmax(1) == y[held]).mean()),
                "train_agreement_with_given": float((p[train_idx].argmax(1) == y[train_idx]).mean()),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    emb = np.concatenate(feats, axis=1) / np.sqrt(cfg.folds)
    emb = _l2n(emb)
    return TeacherOutput(probs, emb.astype(np.float32), stats)


def _feat_and_prob(model, x):
    """Normalised features and probabilities; the head always runs in float32, so bf16 features
    do not round the probabilities that rank the samples."""
    import torch
    import torch.nn.functional as F

    f = model.features(x).float()
    with torch.autocast(device_type=f.device.type, enabled=False):
        logits = model.fc(f)
    return F.normalize(f, dim=1), F.softmax(logits, dim=1)


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------
# Frozen feature extractors: torchvision pretrained, user checkpoints


def load_torchvision(arch: str, weights: str | None, num_classes_hint: int | None = None):
    """A torchvision classification model with pretrained `weights` from the user's torch cache."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"--teacher {arch!r}: not a torchvision classification model or an existing checkpoint path")
    try:
        w = (
            torchvision.models.get_model_weights(arch)[weights]
            if weights and weights != "DEFAULT"
            else (torchvision.models.get_model_weights(arch).DEFAULT if weights else None)
        )
    except KeyError:
        names = ", ".join(m.name for m in torchvision.models.get_model_weights(arch))
        raise InputError(f"--weights {weights!r}: unknown for {arch} (known: {names})") from None
    if w is None:
        raise InputError(f"--teacher {arch}: pass --weights (e.g. DEFAULT); a random-init teacher knows nothing")
    try:
        model = torchvision.models.get_model(arch, weights=w)
    except Exception as exc:
        import torch.hub

        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        raise TeacherUnavailable(
            f"--teacher {arch} --weights {w.name}: weights not in the torch cache ({cache}) and could not be "
            f"downloaded ({exc.__class__.__name__}); copy {Path(w.url).name} there or use --teacher auto"
        ) from None
    return model, w


def strip_head(model):
    """Replace the final classification layer of a torchvision model with Identity, in place."""
    import torch.nn as nn

    for attr in ("fc", "classifier", "head", "heads"):
        mod = getattr(model, attr, None)
        if mod is None:
            continue
        if isinstance(mod, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model
        if isinstance(mod, nn.Sequential):
            for i in range(len(mod) - 1, -1, -1):
                if isinstance(mod[i], nn.Linear):
                    mod[i] = nn.Identity()
                    return model
    raise InputError(f"cannot find the classification head of {model.__class__.__name__} to take features from")


def load_checkpoint(path: Path, arch: str | None, device: str):
    """A TorchScript archive, or a torchvision state dict with `arch`; never unpickles code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise TeacherUnavailable(f"{path}: checkpoint not found")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                is_script = any(n.endswith("/code/") or "/code/" in n for n in z.namelist())
        except zipfile.BadZipFile:
            is_script = False
        if is_script:
            try:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    return torch.jit.load(str(path), map_location=device), "torchscript"
            except Exception as exc:
                raise TeacherUnavailable(f"{path}: not a loadable TorchScript archive ({exc})") from None
    if not arch:
        raise InputError(f"{path}: a state-dict checkpoint needs --arch (a torchvision architecture name)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = (
            "it pickles Python objects, which labelfix never executes: save model.state_dict() or a TorchScript archive"
            if "Weights only load failed" in str(exc)
            else f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        raise TeacherUnavailable(f"{path}: cannot be loaded as a state dict ({hint})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"--arch {arch!r}: not a torchvision classification model")
    heads = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    num_classes = int(heads[-1].shape[0]) if heads else 1000
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path}: does not match --arch {arch}: {str(exc).splitlines()[0]}") from None
    return model, "state_dict"


def frozen_teacher(
    images: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    cfg: TeacherConfig,
    seed: int,
    device: str,
    progress: Progress | None = None,
) -> TeacherOutput:
    """Features from a pretrained or user model, probabilities from a cross-fitted linear head."""
    import torch

    progress = progress or NullProgress()
    size = 224
    mean = std = None
    if Path(cfg.teacher).exists():
        model, kind = load_checkpoint(Path(cfg.teacher), cfg.arch, device)
        if kind == "state_dict":
            model = strip_head(model)
    else:
        model, w = load_torchvision(cfg.teacher, cfg.weights)
        model = strip_head(model)
        tf = w.transforms()
        size = int(getattr(tf, "crop_size", [224])[0])
        mean, std = list(tf.mean), list(tf.std)
    if mean is None:
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    from labelfix.runtime import resolve_precision

    # auto stays float32 for frozen teachers on CPU: bf16 was measured for the auto teacher only.
    precision = "fp32" if cfg.precision == "auto" and device == "cpu" else resolve_precision(device, cfg.precision)
    model = model.to(device).eval()
    rgb = images if images.shape[3] == 3 else _GrayAsRGB(images)
    batches = Batches(rgb, device, size=size, mean=mean, std=std)
    with progress.task("embed (frozen teacher)", total=len(y)) as task:
        outs = _infer(
            lambda x: model(x).float().flatten(1), batches, np.arange(len(y)), cfg.batch_size, task, precision
        )
    feats = torch.cat(outs).cpu().numpy()
    probs, stats = crossfit_linear_head(feats, y, num_classes, cfg.folds, seed, device)
    stats["precision"] = precision
    return TeacherOutput(probs, _l2n(feats).astype(np.float32), stats)


class _GrayAsRGB:
    """View of a one-channel image array as three channels (for ImageNet models)."""

    def __init__(self, images):
        self.images = images
        self.shape = images.shape[:3] + (3,)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return np.repeat(np.asarray(self.images[idx]), 3, axis=-1)


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


def validate_teacher(cfg: TeacherConfig) -> None:
    """Check `--teacher`, `--weights` and `--arch` before any image is decoded."""
    if cfg.teacher == "auto":
        return
    path = Path(cfg.teacher)
    if path.exists():
        if not path.is_file():
            raise InputError(f"--teacher {cfg.teacher}: a directory, not a checkpoint file")
        return
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if cfg.teacher not in known:
        looks_like_path = "/" in cfg.teacher or path.suffix in (".pt", ".pth", ".ckpt", ".bin")
        raise InputError(
            f"--teacher {cfg.teacher}: checkpoint file not found"
            if looks_like_path
            else f"--teacher {cfg.teacher!r}: not 'auto', a checkpoint path, or a torchvision classification model"
        )
    if not cfg.weights:
        raise InputError(f"--teacher {cfg.teacher}: pass --weights (e.g. DEFAULT); a random-init teacher knows nothing")
    if cfg.weights != "DEFAULT":
        names = [m.name for m in torchvision.models.get_model_weights(cfg.teacher)]
        if cfg.weights not in names:
            raise InputError(f"--weights {cfg.weights!r}: unknown for {cfg.teacher} (known: {', '.join(names)})")


def run_teacher(images, y, num_classes, cfg: TeacherConfig, seed: int, device: str, progress=None) -> TeacherOutput:
    if cfg.teacher == "auto":
        return train_auto_teacher(images, y, num_classes, cfg, seed, device, progress)
    return frozen_teacher(images, y, num_classes, cfg, seed, device, progress)
