"""The one training loop, shared by the auto teacher's fold models and the distilled student.

`fit` trains a model on rows of a `Batches` array for `TrainPlan.epochs` epochs: shuffled batches,
the random-shift augmentation, autocast at the runtime's precision, an optimiser with its
schedule, and a loss from an objective:

* `HardLabelLoss` (teacher): cross-entropy for the warm-up epochs, then generalised
  cross-entropy (or cross-entropy throughout), optionally with the ELR regulariser.
* `SoftTargetLoss` (student): per-sample weighted cross-entropy on soft targets, optionally
  plus knowledge distillation from teacher probabilities.

Hooks: `on_epoch(result, state)` runs after every epoch (learning-curve rows, the stall check,
checkpoints) and stops training by returning True; `resume(model, optimizer, scheduler)`
restores a checkpoint before the first epoch and returns the epoch to start from. With
`TrainPlan.reseed_each_epoch` every epoch draws its shuffle and shifts from (seed, epoch) alone,
so a run resumed after epoch k trains exactly as one that never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from labelfix.models.agreement import clearly_above_chance
from labelfix.models.batches import Batches, infer, random_shift
from labelfix.runtime import Runtime


@dataclass(frozen=True)
class TrainPlan:
    """How `fit` trains.

    Attributes:
        epochs: epochs to train.
        batch_size: rows a step (already shrunk to the data: `batches.effective_batch_size`);
            an epoch is floor(n / batch_size) steps, at least one.
        lr: peak learning rate.
        optimizer: "adamw" or "sgd" (Nesterov momentum 0.9).
        weight_decay: of the optimiser.
        schedule: "onecycle" (torch's OneCycleLR, a quarter of the steps rising) or
            "warmup-cosine" (linear over the first epoch, then cosine to 0).
        pad: largest shift of the random-shift augmentation in pixels (0: none).
        seed: of the shuffles and shifts.
        reseed_each_epoch: draw each epoch's shuffle and shifts from (seed, epoch) (resumable),
            instead of one stream from the seed.
        sort_batches: feed each batch's rows in index order (sequential reads of a memmap).
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    pad: int = 0
    seed: int = 0
    reseed_each_epoch: bool = False
    sort_batches: bool = False

    def steps_per_epoch(self, n: int) -> int:
        return max(1, n // self.batch_size)


@dataclass
class EpochResult:
    """One epoch: `loss_sum` / `weight_sum` is the mean training loss; `hits` of `count` training
    rows had the model's argmax agree with their (hard or argmax of soft) target."""

    epoch: int
    loss_sum: float = 0.0
    weight_sum: float = 0.0
    hits: int = 0
    count: int = 0
    seconds: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.weight_sum, 1e-8)

    @property
    def agreement(self) -> float:
        return self.hits / max(self.count, 1)


@dataclass
class LoopState:
    """What a hook may read: the model, its optimiser and scheduler, the epochs so far."""

    model: object
    optimizer: object
    scheduler: object
    results: list = field(default_factory=list)

    def state_dict(self) -> dict:
        """Everything a checkpoint needs to resume after the last finished epoch."""
        return {
            "epoch": self.results[-1].epoch - 1 if self.results else -1,
            "model": self.model.state_dict(),
            "opt": self.optimizer.state_dict(),
            "sched": None if self.scheduler is None else self.scheduler.state_dict(),
        }


# ---------------------------------------------------------------------------------------------
# Objectives: (logits float32, rows, 0-based epoch) -> (loss, weight of the batch, hits)


class HardLabelLoss:
    """Integer labels `y` (all rows); `loss_at(epoch)` is "ce" or "gce" for that epoch."""

    def __init__(self, y: np.ndarray, num_classes: int, device: str, loss_at: Callable[[int], str], cfg):
        import torch

        self.y = torch.from_numpy(np.asarray(y)).to(device)
        self.loss_at, self.device = loss_at, device
        self.q, self.elr_lambda, self.elr_beta = cfg.gce_q, cfg.elr_lambda, cfg.elr_beta
        self.targets = torch.zeros(len(y), num_classes, device=device) if cfg.elr_lambda > 0 else None

    def __call__(self, logits, rows: np.ndarray, epoch: int):
        import torch
        import torch.nn.functional as F

        rt = torch.from_numpy(rows).to(self.device)
        yb = self.y[rt]
        probs = F.softmax(logits, dim=1)
        if self.loss_at(epoch) == "gce":
            p_y = probs.gather(1, yb[:, None]).squeeze(1).clamp_min(1e-6)
            loss = ((1.0 - p_y**self.q) / self.q).mean()
        else:
            loss = F.cross_entropy(logits, yb)
        if self.targets is not None:  # ELR (Liu et al. 2020): stay close to a running mean of predictions
            p = probs.clamp(1e-4, 1 - 1e-4)
            with torch.no_grad():
                self.targets[rt] = self.elr_beta * self.targets[rt] + (1 - self.elr_beta) * (p / p.sum(1, keepdim=True))
            loss = loss + self.elr_lambda * torch.log(1 - (self.targets[rt] * p).sum(1)).mean()
        return loss, len(rows), int((logits.detach().argmax(1) == yb).sum())


class SoftTargetLoss:
    """weight_i [(1 - kd) CE(model, target_i) + kd T^2 KL(teacher_T || model_T)] / sum of weights."""

    def __init__(self, targets, weights, device: str, teacher_probs=None, kd_weight: float = 0.0, kd_t: float = 4.0):
        import torch

        def tensor(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

        self.tgt, self.wts, self.device = tensor(targets), tensor(weights), device
        self.tp = tensor(teacher_probs) if teacher_probs is not None and kd_weight > 0 else None
        self.kd, self.t = kd_weight, kd_t

    def __call__(self, logits, rows: np.ndarray, epoch: int):
        import torch
        import torch.nn.functional as F

        bt = torch.from_numpy(rows).to(self.device)
        per = -(self.tgt[bt] * F.log_softmax(logits, dim=1)).sum(1)
        if self.tp is not None:
            t_soft = F.softmax(torch.log(self.tp[bt].clamp_min(1e-8)) / self.t, dim=1)
            kd = F.kl_div(F.log_softmax(logits / self.t, dim=1), t_soft, reduction="none").sum(1) * self.t * self.t
            per = (1 - self.kd) * per + self.kd * kd
        w = self.wts[bt]
        loss = (per * w).sum() / w.sum().clamp_min(1e-8)
        hits = int((logits.detach().argmax(1) == self.tgt[bt].argmax(1)).sum())
        return loss, float(w.sum()), hits


# ---------------------------------------------------------------------------------------------
# The loop


def warmup_cosine(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(model, plan: TrainPlan, steps: int):
    """(optimizer, torch scheduler or None, lr_at(step) or None) for `plan`."""
    import torch

    params = model.parameters()
    if plan.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=plan.lr, momentum=0.9, nesterov=True, weight_decay=plan.weight_decay)
    elif plan.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {plan.optimizer!r}")
    total = plan.epochs * steps
    if plan.schedule == "warmup-cosine":
        return opt, None, lambda step: warmup_cosine(step, total, plan.lr, steps)
    if plan.schedule != "onecycle":
        raise ValueError(f"unknown schedule {plan.schedule!r}")
    if plan.lr <= 0:  # OneCycle cannot be built with 0: train at 0 throughout
        for g in opt.param_groups:
            g["lr"] = 0.0
        return opt, None, None
    # a quarter of exactly 4 steps puts the peak on step 0, where torch's OneCycleLR divides by
    # zero (scan --epochs 4 on 20 images crashed); any other step count keeps the quarter
    pct = 0.25 if total != 4 else 0.3
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=plan.lr, total_steps=total, pct_start=pct), None


def fit(
    model,
    batches: Batches,
    train_idx: np.ndarray,
    objective,
    plan: TrainPlan,
    runtime: Runtime,
    task=None,
    on_epoch: Callable[[EpochResult, LoopState], bool] | None = None,
    resume: Callable | None = None,
) -> list[EpochResult]:
    """Train `model` in place on rows `train_idx`; returns the epochs trained (the model is left
    in eval mode). `task.advance(rows)` after every step."""
    import torch

    train_idx = np.asarray(train_idx)
    n = len(train_idx)
    steps = plan.steps_per_epoch(n)
    opt, sched, lr_at = build_optimizer(model, plan, steps)
    state = LoopState(model, opt, sched)
    start = int(resume(model, opt, sched)) if resume is not None else 0
    stream = (np.random.default_rng(plan.seed), torch.Generator().manual_seed(int(plan.seed)))
    for epoch in range(start, plan.epochs):
        if plan.reseed_each_epoch:
            stream = (
                np.random.default_rng([plan.seed, epoch]),
                torch.Generator().manual_seed(plan.seed * 100_003 + epoch),
            )
        res = EpochResult(epoch + 1)
        t0 = time.perf_counter()
        model.train()
        perm = train_idx[stream[0].permutation(n)]
        step_rows = [perm[s * plan.batch_size : (s + 1) * plan.batch_size] for s in range(steps)]
        step_rows = [np.sort(r) for r in step_rows] if plan.sort_batches else step_rows
        with batches.stream(step_rows) as xs:  # the next batches are read while this one trains
            for s, (rows, xb) in enumerate(zip(step_rows, xs)):
                if lr_at is not None:
                    for g in opt.param_groups:
                        g["lr"] = lr_at(epoch * steps + s)
                x = random_shift(xb, stream[1], plan.pad)
                with runtime.autocast():
                    logits = model(x)
                loss, weight, hits = objective(logits.float(), rows, epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                res.loss_sum += float(loss.detach()) * weight
                res.weight_sum += weight
                res.hits += hits
                res.count += len(rows)
                if task is not None:
                    task.advance(len(rows))
        res.seconds = time.perf_counter() - t0
        state.results.append(res)
        if on_epoch is not None and on_epoch(res, state):
            break
    model.eval()
    return state.results


# ---------------------------------------------------------------------------------------------
# The learning curve and the stall check of a hard-label fold


class CurveHook:
    """An `on_epoch` hook: records the learning curve (loss used, training loss, training
    agreement, agreement on `curve_idx` held-out rows) and checks for a stall after the epochs
    in `check_epochs`: training agreement not clearly above `chance` (one-sided binomial). The
    check reads only training rows (a held-out label never shapes the model that scores it).
    With `stop_early` training stops at the first failed check."""

    def __init__(self, y, loss_at, chance: float, check_epochs, epochs: int, stop_early: bool, curve=None):
        self.y, self.loss_at, self.chance = y, loss_at, chance
        self.check_epochs, self.epochs, self.stop_early = set(check_epochs), epochs, stop_early
        self.curve_idx, self.batches, self.batch_size, self.precision = curve or (None, None, 0, "fp32")
        self.curve = {"epoch": [], "loss": [], "train_loss": [], "train_agreement": [], "heldout_agreement": []}
        self.stalled_at = None
        self.curve_seconds = 0.0

    def __call__(self, res: EpochResult, state: LoopState) -> bool:
        import torch

        e = res.epoch
        self.curve["epoch"].append(e)
        self.curve["loss"].append(self.loss_at(e - 1))
        self.curve["train_loss"].append(round(res.loss_sum / max(res.count, 1), 4))
        self.curve["train_agreement"].append(round(res.agreement, 4))
        if self.curve_idx is not None and len(self.curve_idx):
            tc = time.perf_counter()
            state.model.eval()
            outs = infer(state.model, self.batches, self.curve_idx, self.batch_size, precision=self.precision)
            pred = torch.cat([o.float() for o in outs]).argmax(1).cpu().numpy()
            self.curve["heldout_agreement"].append(round(float((pred == self.y[self.curve_idx]).mean()), 4))
            state.model.train()
            self.curve_seconds += time.perf_counter() - tc
        if e in self.check_epochs and not clearly_above_chance(res.hits, res.count, self.chance):
            self.stalled_at = e
            return self.stop_early or e == self.epochs
        if e == self.epochs:
            self.stalled_at = None  # stalled at the warm-up check, then learned
        return False

    def result(self) -> dict:
        curve = dict(self.curve)
        if not curve["heldout_agreement"]:
            del curve["heldout_agreement"]
        return {"stalled_at_epoch": self.stalled_at, "curve": curve, "curve_seconds": round(self.curve_seconds, 2)}
