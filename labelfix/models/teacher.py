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
  Fold models train in the one training loop (`labelfix.models.train.fit`).
* a torchvision architecture with `weights`, or a user checkpoint: a frozen feature extractor;
  probabilities come from a linear head cross-fitted on those features (`labelfix.models.pretrained`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from labelfix.config import TeacherConfig
from labelfix.models.agreement import (
    CLEARLY_ABOVE_P,
    agreement_check,
    binomial_excess_p,
    clearly_above_chance,
    majority_share,
    weak_teacher_message,
)
from labelfix.models.batches import Batches, effective_batch_size, infer, shift_pad
from labelfix.models.crossfit import TeacherOutput, crossfit_linear_head, fold_assignment, l2_normalise
from labelfix.models.nets import build_small_resnet, features_and_probs
from labelfix.models.pretrained import frozen_teacher, validate_teacher
from labelfix.models.train import CurveHook, HardLabelLoss, TrainPlan, fit
from labelfix.progress import NullProgress, Progress
from labelfix.runtime import Runtime, ensure_runtime

__all__ = [
    "CLEARLY_ABOVE_P",
    "Recipe",
    "TeacherOutput",
    "agreement_check",
    "auto_epochs",
    "binomial_excess_p",
    "build_small_resnet",
    "clearly_above_chance",
    "crossfit_linear_head",
    "fold_assignment",
    "frozen_teacher",
    "majority_share",
    "recipes",
    "run_teacher",
    "train_auto_teacher",
    "train_fold",
    "uses_augmentation",
    "validate_teacher",
    "weak_teacher_message",
]

# Input normalisation of the auto teacher, the same rule for every data set: "image" brings each
# image and channel to zero mean and unit spread, so colour tints, inversion and contrast drop
# out (26 tinted classes at 16 px, clean labels, 780 images: held-out accuracy 0.754, against
# 0.103 for "fixed", which maps [0, 1] to [-1, 1] and let the model memorise colours); "data"
# (the earlier recipe) uses the per-channel mean and spread of a 4,096-image sample.
NORMALISE = "image"
NORM_MEAN, NORM_STD = 0.5, 0.5


def teacher_batches(images: np.ndarray, device: str) -> Batches:
    """The auto teacher's view of the images, normalised by the NORMALISE rule."""
    if NORMALISE in ("fixed", "image"):
        return Batches(images, device, mean=NORM_MEAN, std=NORM_STD, per_image=NORMALISE == "image")
    return Batches(images, device)


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
# Recipes and the stall check


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


# ---------------------------------------------------------------------------------------------
# The auto teacher


def train_fold(
    model,
    batches: Batches,
    train_idx: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    cfg: TeacherConfig,
    seed: int,
    epochs: int,
    task,
    runtime: Runtime,
    recipe: Recipe | None = None,
    curve_idx: np.ndarray | None = None,
    stop_early: bool = False,
) -> dict:
    """Train one fold model in place with `recipe`. Returns its learning curve and whether it
    stalled (see train.CurveHook: the stall check reads training rows only; `curve_idx`,
    held-out rows, are only recorded). With `stop_early` (a fallback recipe follows), training
    stops at the first failed check."""
    recipe = recipe or recipes(cfg)[0]
    t0 = time.perf_counter()
    n = len(train_idx)
    augment = uses_augmentation(cfg.augment, n)
    plan = TrainPlan(
        epochs=epochs,
        batch_size=effective_batch_size(cfg.batch_size, n),
        lr=recipe.lr,
        optimizer="adamw",
        weight_decay=5e-4,
        schedule="onecycle",
        pad=shift_pad(batches.images.shape[1]) if augment else 0,
        seed=int(seed),
    )
    warm = warmup_epochs(recipe, epochs)
    check_at = stall_check_epoch(recipe, epochs, plan.steps_per_epoch(n))
    chance = majority_share(y[train_idx], num_classes)

    def loss_at(epoch: int) -> str:
        return "ce" if epoch < warm else recipe.loss

    curve = (curve_idx, batches, cfg.batch_size * 2, runtime.precision)
    hook = CurveHook(y, loss_at, chance, {check_at, epochs} - {0}, epochs, stop_early, curve)
    objective = HardLabelLoss(y, num_classes, runtime.device, loss_at, cfg)
    fit(model, batches, train_idx, objective, plan, runtime, task, on_epoch=hook)
    return {
        "recipe": recipe.name,
        "lr": recipe.lr,
        "warmup_epochs": warm,
        "stall_check_epochs": sorted({check_at, epochs} - {0}),
        "chance_train": round(chance, 4),
        **hook.result(),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def train_auto_teacher(
    images: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    cfg: TeacherConfig,
    seed: int,
    device: str | None = None,
    progress: Progress | None = None,
    *,
    runtime: Runtime | None = None,
) -> TeacherOutput:
    """K-fold cross-fitted small ResNet. `images` is (N, H, W, C) uint8 (a memmap is fine).
    `runtime`: where and in which precision (else one resolved from `device` and cfg.precision).

    A fold whose model stalls (training agreement with its labels not clearly above the
    majority-class share after the warm-up or at the end) is trained again from a fresh start
    with the fallback recipe; `stats["folds"][k]` records the recipe used, `restarted`,
    `stalled` (the last attempt stalled too) and every attempt's learning curve.
    """
    runtime = ensure_runtime(runtime, device, cfg.precision)
    progress = progress or NullProgress()
    n = len(y)
    folds = fold_assignment(n, cfg.folds, seed)
    batches = teacher_batches(images, runtime.device)
    probs = np.zeros((n, num_classes), dtype=np.float32)
    feats = []
    stats = {
        "folds": [],
        "precision": runtime.precision,
        "loss": cfg.loss,
        "width": cfg.width,
        "lr": cfg.lr,
        "warmup": cfg.warmup,
        "normalisation": NORMALISE,
        "restarts": 0,
        "stalled_folds": 0,
        "stall_test": f"one-sided binomial p < {CLEARLY_ABOVE_P:g} against the majority-class share",
    }
    for k in range(cfg.folds):
        held = np.flatnonzero(folds == k)
        p, f, fold_stats = _cross_fit_fold(images, batches, y, num_classes, cfg, seed, k, folds, runtime, progress)
        probs[held] = p[held]
        feats.append(f)
        stats["restarts"] += int(fold_stats["restarted"])
        stats["stalled_folds"] += int(fold_stats["stalled"])
        stats["folds"].append(fold_stats)
    emb = l2_normalise(np.concatenate(feats, axis=1) / np.sqrt(cfg.folds))
    return TeacherOutput(probs, emb.astype(np.float32), stats)


def _cross_fit_fold(images, batches, y, num_classes, cfg, seed, k, folds, runtime, progress) -> tuple:
    """Fold k's model (restarted once if it stalls): (probabilities and features of every row,
    the fold's statistics)."""
    import torch

    t0 = time.perf_counter()
    train_idx, held = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
    epochs = cfg.epochs or auto_epochs(len(train_idx))
    m = curve_rows(len(held), len(train_idx), cfg.curve_rows)
    curve_idx = np.sort(np.random.default_rng([seed, k, 404]).choice(held, size=m, replace=False)) if m > 0 else None
    plan = recipes(cfg)
    attempts = []
    for a, recipe in enumerate(plan):
        fold_seed = seed * 1000 + k + 100_003 * a
        torch.manual_seed(fold_seed)
        model = build_small_resnet(images.shape[3], num_classes, cfg.width).to(runtime.device)
        label = f"teacher fold {k + 1}/{cfg.folds}" + (" (restart)" if a else "")
        with progress.task(label, total=epochs * len(train_idx)) as task:
            run = train_fold(
                model,
                batches,
                train_idx,
                y,
                num_classes,
                cfg,
                fold_seed,
                epochs,
                task,
                runtime,
                recipe,
                curve_idx,
                stop_early=a + 1 < len(plan),
            )
        attempts.append(run)
        if run["stalled_at_epoch"] is None:
            break
    with progress.task(f"embed fold {k + 1}/{cfg.folds}", total=len(y)) as task:
        outs = infer(
            lambda x, m=model: features_and_probs(m, x),
            batches,
            np.arange(len(y)),
            cfg.batch_size * 2,
            task,
            runtime.precision,
        )
    f = torch.cat([o[0] for o in outs]).cpu().numpy()
    p = torch.cat([o[1] for o in outs]).cpu().numpy()
    return p, f, _fold_stats(k, cfg, attempts, train_idx, held, epochs, m, p, y, t0)


def _fold_stats(k, cfg, attempts, train_idx, held, epochs, m, p, y, t0) -> dict:
    first, last = attempts[0], attempts[-1]
    restarted = len(attempts) > 1
    return {
        "fold": k,
        "n_train": int(len(train_idx)),
        "n_scored": int(len(held)),
        "epochs": epochs,
        "augment": uses_augmentation(cfg.augment, len(train_idx)),
        "recipe": last["recipe"],
        "restarted": restarted,
        "restart_reason": (
            f"{first['recipe']}: training agreement {first['curve']['train_agreement'][-1]:.1%} not clearly "
            f"above the majority-class share {first['chance_train']:.1%} after epoch {first['stalled_at_epoch']}"
        )
        if restarted
        else None,
        "stalled": last["stalled_at_epoch"] is not None,
        "train_loss": last["curve"]["train_loss"],
        "curve_rows": int(m),
        "attempts": attempts,
        "heldout_agreement_with_given": float((p[held].argmax(1) == y[held]).mean()),
        "train_agreement_with_given": float((p[train_idx].argmax(1) == y[train_idx]).mean()),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def run_teacher(
    images: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    cfg: TeacherConfig,
    seed: int,
    device: str | None = None,
    progress: Progress | None = None,
    *,
    runtime: Runtime | None = None,
) -> TeacherOutput:
    """The teacher `cfg.teacher` names: the auto teacher, or a frozen pretrained/user model."""
    runtime = ensure_runtime(runtime, device, cfg.precision)
    if cfg.teacher == "auto":
        return train_auto_teacher(images, y, num_classes, cfg, seed, progress=progress, runtime=runtime)
    return frozen_teacher(images, y, num_classes, cfg, seed, progress=progress, runtime=runtime)
