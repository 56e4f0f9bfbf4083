"""The student: any torchvision classifier trained on the cleaned (soft, weighted) labels in the
one training loop (`labelfix.models.train.fit`), resumable from per-epoch checkpoints; its
outputs; and loading a saved student (weights only, described by its student.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from labelfix.errors import InputError, RunDirError
from labelfix.models.batches import Batches, as_rgb, effective_batch_size, infer, shift_pad
from labelfix.models.checkpoint import checkpoint_key, read_checkpoint, resume_from, write_checkpoint
from labelfix.models.nets import build_student, check_arch, features_and_logits
from labelfix.models.train import EpochResult, LoopState, SoftTargetLoss, TrainPlan, fit
from labelfix.progress import NullProgress, Progress
from labelfix.runtime import Runtime, check_precision, ensure_runtime

AUGMENTS = ("on", "off")


@dataclass(frozen=True)
class DistillConfig:
    student: str = "resnet18"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    val_fraction: float = 0.1
    augment: str = "on"
    rounds: int = 1
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise InputError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.rounds < 1:
            raise InputError(f"--rounds must be >= 1 (got {self.rounds})")
        if self.batch_size < 2:
            raise InputError(f"--batch-size must be >= 2 (got {self.batch_size})")
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0 (got {self.lr})")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise InputError(f"--kd-weight must be in [0, 1] (got {self.kd_weight})")
        check_precision(self.precision)
        if self.augment not in AUGMENTS:
            raise InputError(f"--augment must be one of {', '.join(AUGMENTS)} (got {self.augment!r})")
        if not 0.0 <= self.val_fraction < 0.5:
            raise InputError(f"--val-fraction must be in [0, 0.5) (got {self.val_fraction})")
        check_arch(self.student, "--student")

    def plan(self, n: int, image_side: int) -> TrainPlan:
        """The training-loop settings for `n` training rows of `image_side` px: SGD with a warm-up
        epoch and cosine decay, shifts of up to 1/8 of the side (--augment on), per-epoch seeds
        (resumable), batches read in row order."""
        return TrainPlan(
            epochs=self.epochs,
            batch_size=effective_batch_size(self.batch_size, n),
            lr=self.lr,
            optimizer="sgd",
            weight_decay=self.weight_decay,
            schedule="warmup-cosine",
            pad=shift_pad(image_side) if self.augment == "on" else 0,
            seed=self.seed,
            reseed_each_epoch=True,
            sort_batches=True,
        )


def student_batches(images, input_size: int, device: str, mean=None, std=None) -> Batches:
    """The student's view of a (N, H, W, C) image array: three channels, `input_size` pixels."""
    return Batches(
        as_rgb(images), device, size=input_size if input_size != images.shape[1] else None, mean=mean, std=std
    )


@dataclass
class StudentFit:
    """Per-epoch logs (epoch, loss, seconds, and what `on_epoch` added), warnings (a discarded
    checkpoint), and the epoch training resumed after (0: from scratch)."""

    logs: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    resumed_epochs: int = 0


def fit_student(
    model,
    batches: Batches,
    train_idx: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    cfg: DistillConfig,
    runtime: Runtime,
    teacher_probs: np.ndarray | None = None,
    checkpoint: Path | None = None,
    progress: Progress | None = None,
    description: str = "student",
    on_epoch: Callable | None = None,
    write: Callable[[Path, bytes], None] | None = None,
) -> StudentFit:
    """Train `model` on soft `targets` (N, C) with per-sample `weights`, optionally with KD from
    `teacher_probs`. After every epoch `on_epoch(epoch, model)` may return a dict merged into
    that epoch's log, and the state is saved to `checkpoint` (through `write`, default an atomic
    write); a checkpoint of the same run resumes, a damaged one is discarded with a warning."""
    progress = progress or NullProgress()
    n = len(train_idx)
    plan = cfg.plan(n, batches.images.shape[1])
    key = checkpoint_key([asdict(cfg), int(n)], description, runtime, (train_idx, targets, weights))
    result = StudentFit()
    state = None
    if checkpoint is not None and checkpoint.exists() and not checkpoint.is_file():
        result.warnings.append(f"{checkpoint}: not a file; left alone, this run keeps no checkpoint")
        checkpoint = None
    if checkpoint is not None:
        state, warning = read_checkpoint(checkpoint, key, model, cfg.epochs)
        result.warnings += [warning] if warning else []
    if state is not None:
        result.logs = json.loads(state["logs"])
        result.resumed_epochs = int(state["epoch"]) + 1
    objective = SoftTargetLoss(targets, weights, runtime.device, teacher_probs, cfg.kd_weight, cfg.kd_temperature)

    def after_epoch(res: EpochResult, loop: LoopState) -> bool:
        result.logs.append({"epoch": res.epoch, "loss": round(res.mean_loss, 4), "seconds": round(res.seconds, 1)})
        if on_epoch is not None:
            result.logs[-1].update(on_epoch(res.epoch, loop.model) or {})
        if checkpoint is not None:
            write_checkpoint(checkpoint, key, loop, result.logs, write)
        return False

    steps = plan.steps_per_epoch(n)
    with progress.task(description, total=(cfg.epochs - result.resumed_epochs) * steps * plan.batch_size) as task:
        fit(model, batches, train_idx, objective, plan, runtime, task, after_epoch, resume_from(state))
    return result


def train_classifier(
    model,
    batches: Batches,
    train_idx: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    cfg: DistillConfig,
    teacher_probs: np.ndarray | None = None,
    checkpoint: Path | None = None,
    progress: Progress | None = None,
    description: str = "student",
    on_epoch=None,
    *,
    runtime: Runtime | None = None,
) -> list[dict]:
    """fit_student's per-epoch logs (the 0.2 signature: without `runtime`, one is resolved
    from the batches' device and cfg.precision)."""
    runtime = ensure_runtime(runtime, batches.device, cfg.precision)
    fitted = fit_student(
        model,
        batches,
        train_idx,
        targets,
        weights,
        cfg,
        runtime,
        teacher_probs,
        checkpoint,
        progress,
        description,
        on_epoch,
    )
    return fitted.logs


def student_outputs(
    model,
    batches: Batches,
    idx: np.ndarray,
    batch_size: int = 512,
    progress: Progress | None = None,
    features: bool = False,
    precision: str = "fp32",
):
    """(probs (n, C), features (n, D) L2-normalised or None) of rows `idx`."""
    import torch.nn.functional as F

    def step(x):
        if features:
            f, logits = features_and_logits(model, x)
            return F.softmax(logits.float(), dim=1).cpu().numpy(), F.normalize(f.float(), dim=1).cpu().numpy()
        return F.softmax(model(x).float(), dim=1).cpu().numpy(), None

    progress = progress or NullProgress()
    model.eval()
    with progress.task("student inference", total=len(idx)) as task:
        outs = infer(step, batches, idx, batch_size, task, precision)
    probs = np.concatenate([o[0] for o in outs])
    return probs, (np.concatenate([o[1] for o in outs]) if features else None)


def stratified_holdout(labels: np.ndarray, eligible: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: `fraction` of each class among `eligible` rows."""
    rng = np.random.default_rng([seed, 4242])
    held = np.zeros(len(labels), dtype=bool)
    for k in np.unique(labels[eligible]):
        idx = np.flatnonzero(eligible & (labels == k))
        m = int(round(fraction * len(idx)))
        held[rng.choice(idx, m, replace=False)] = True
    return held


# ---------------------------------------------------------------------------------------------
# A saved student


def student_meta_fields(meta_path: Path, meta) -> dict:
    """student.json, checked: a RunDirError (exit 4) naming the file and field at fault."""

    def bad(why: str):
        return RunDirError(f"{meta_path}: {why}; run labelfix distill again")

    if not isinstance(meta, dict):
        raise bad("not a JSON object")
    for name, kind in (("arch", str), ("num_classes", int), ("image_size", int), ("input_size", int)):
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise bad(f"field {name!r} missing or not {'a string' if kind is str else 'an integer'}")
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) != meta["num_classes"] or meta["num_classes"] < 2:
        raise bad("class_names must list num_classes (two or more) names")
    if meta.get("channels") not in (1, 3) or not 1 <= meta["image_size"] <= 4096:
        raise bad("channels must be 1 or 3 and image_size in 1..4096")
    for name in ("mean", "std"):
        v = meta.get(name)
        if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
            raise bad(f"field {name!r} must list three numbers")
    try:
        check_arch(meta["arch"], "arch")
    except InputError as exc:
        raise bad(str(exc)) from None
    return meta


def load_student(model_path: Path, device: str):
    """(model in eval mode on `device`, its student.json) of a student.pt written by distill.
    Only tensors are read (never pickled code)."""
    import torch

    model_path = Path(model_path)
    meta_path = model_path.with_name("student.json")
    if not model_path.is_file():
        raise InputError(f"{model_path}: --model file not found")
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: missing (student.pt needs its student.json beside it)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{meta_path}: not valid JSON ({exc}); run labelfix distill again") from None
    meta = student_meta_fields(meta_path, meta)
    model, _, _ = build_student(meta["arch"], meta["num_classes"], meta["image_size"], what="arch")
    try:
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise InputError(
            f"{model_path}: not the weights {meta_path.name} describes ({exc.__class__.__name__})"
        ) from None
    return model.to(device).eval(), meta
