"""`distill`: train a torchvision student on the refined soft labels; `predict` with it.

Loss per sample: weight_i * [(1 - kd) CE(student, soft_label_i) + kd T^2 KL(teacher_T || student_T)],
weight_i = 1 - ambiguity_i (0 for review rows). Checkpoints after every epoch make an
interrupted run resume where it stopped. Afterwards the student's embeddings feed a mutual
refinement round (teacher graph and student graph alternate) that updates refined.parquet, but
only when the student is at least as good as the teacher on the held-out rows (`mutual_guard`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from labelfix import __version__
from labelfix.errors import InputError, RunDirError
from labelfix.files.inputs import sha256_file, sha256_json
from labelfix.files.outputs import atomic_save_npy, atomic_write_json, list_column, read_parquet, write_parquet
from labelfix.files.rundir import RunDir
from labelfix.progress import NullProgress, Progress
from labelfix.runtime import check_precision

STUDENT_FILE = "student.pt"
STUDENT_META = "student.json"
DISTILL_FILE = "distill.json"
CHECKPOINT = "checkpoints/student-last.pt"
ROUNDS_STATE = "checkpoints/distill-rounds.json"
ROUND_KEYS = (
    "train_rows",
    "excluded_review_rows",
    "heldout_accuracy_vs_refined",
    "mutual_guard",
    "train_seconds",
    "mutual_refine",
)
GUARD_Z = 2.0
FIXED_SIZE = ("vit", "swin", "maxvit")
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
        _check_arch(self.student)


def _check_arch(arch: str) -> None:
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"--student {arch!r}: torchvision has no classification model of that name")


# ---------------------------------------------------------------------------------------------
# Students


def build_student(arch: str, num_classes: int, image_size: int):
    """A random-init torchvision classifier whose stem suits `image_size`; (model, input_size, stem)."""
    import torch.nn as nn
    import torchvision

    _check_arch(arch)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    input_size, stem = image_size, "original"
    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool") and image_size <= 64:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        stem = "3x3 stride 1"
        if image_size < 24:
            model.maxpool = nn.Identity()
            stem += ", no max-pool"
    elif arch.startswith(FIXED_SIZE):
        input_size, stem = 224, "input resized to 224"
    elif image_size < 32:
        input_size, stem = 32, "input resized to 32"
    return model, input_size, stem


def _features_and_logits(model, x):
    """Penultimate features via a forward hook on the final Linear layer."""
    import torch.nn as nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    box = {}
    h = last.register_forward_hook(lambda mod, inp, out: box.__setitem__("f", inp[0]))
    try:
        logits = model(x)
    finally:
        h.remove()
    return box["f"].flatten(1), logits


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def train_classifier(
    model,
    batches,
    train_idx: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    cfg: DistillConfig,
    teacher_probs: np.ndarray | None = None,
    checkpoint: Path | None = None,
    progress: Progress | None = None,
    description: str = "student",
    on_epoch=None,
) -> list[dict]:
    """Train `model` on soft `targets` (N, C) with per-sample `weights`; optional KD from
    `teacher_probs`. Resumes from `checkpoint` when it holds a matching run. `on_epoch(epoch,
    model)` may return a dict that is merged into that epoch's log (the model is put back in
    train mode afterwards). Returns per-epoch logs."""
    import torch
    import torch.nn.functional as F

    from labelfix.models.teacher import _random_shift
    from labelfix.runtime import autocast, resolve_precision

    progress = progress or NullProgress()
    dev = batches.device
    precision = resolve_precision(dev, cfg.precision)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    from labelfix.models.teacher import effective_batch_size

    n = len(train_idx)
    bs = effective_batch_size(cfg.batch_size, n)
    steps = max(1, n // bs)
    total = steps * cfg.epochs
    # the key covers what is trained on, so a checkpoint left by a run on other labels (distill
    # again after the mutual round, with the same row count) is never resumed
    h = hashlib.sha256(json.dumps([asdict(cfg), int(n), description, dev, precision], sort_keys=True).encode())
    for arr in (train_idx, targets, weights):
        h.update(np.ascontiguousarray(arr).tobytes())
    key = h.hexdigest()[:16]
    start, logs = 0, []
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=dev, weights_only=True)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            start = int(state["epoch"]) + 1
            logs = json.loads(state["logs"])
    tgt = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)).to(dev)
    wts = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)).to(dev)
    tp = None
    if teacher_probs is not None and cfg.kd_weight > 0:
        tp = torch.from_numpy(np.ascontiguousarray(teacher_probs, dtype=np.float32)).to(dev)
    pad = max(1, batches.images.shape[1] // 8) if cfg.augment == "on" else 0
    T = cfg.kd_temperature
    with progress.task(description, total=(cfg.epochs - start) * steps * bs) as task:
        for epoch in range(start, cfg.epochs):
            model.train()
            rng = np.random.default_rng([cfg.seed, epoch])
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            perm = train_idx[rng.permutation(n)]
            tot_loss, tot_w, t0 = 0.0, 0.0, time.perf_counter()
            for s in range(steps):
                for g in opt.param_groups:
                    g["lr"] = _lr_at(epoch * steps + s, total, cfg.lr, steps)
                b = np.sort(perm[s * bs : (s + 1) * bs])
                bt = torch.from_numpy(b).to(dev)
                x = _random_shift(batches.get(b), gen, pad)
                with autocast(dev, precision):
                    logits = model(x)
                logits = logits.float()
                logp = F.log_softmax(logits, dim=1)
                per = -(tgt[bt] * logp).sum(1)
                if tp is not None:
                    t_soft = F.softmax(torch.log(tp[bt].clamp_min(1e-8)) / T, dim=1)
                    kd = F.kl_div(F.log_softmax(logits / T, dim=1), t_soft, reduction="none").sum(1) * T * T
                    per = (1 - cfg.kd_weight) * per + cfg.kd_weight * kd
                w = wts[bt]
                loss = (per * w).sum() / w.sum().clamp_min(1e-8)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot_loss += float(loss.detach()) * float(w.sum())
                tot_w += float(w.sum())
                task.advance(len(b))
            logs.append(
                {
                    "epoch": epoch + 1,
                    "loss": round(tot_loss / max(tot_w, 1e-8), 4),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            if on_epoch is not None:
                logs[-1].update(on_epoch(epoch + 1, model) or {})
                model.train()
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                tmp = checkpoint.with_suffix(".tmp")
                torch.save(
                    {
                        "key": key,
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "logs": json.dumps(logs),
                    },
                    tmp,
                )
                os.replace(tmp, checkpoint)
    model.eval()
    return logs


def infer(
    model,
    batches,
    idx: np.ndarray,
    batch_size: int = 512,
    progress: Progress | None = None,
    features: bool = False,
    precision: str = "fp32",
):
    """(probs (n, C), features (n, D) L2-normalised or None) for rows `idx`, through the same
    batched-inference loop as the teacher."""
    import torch.nn.functional as F

    from labelfix.models.teacher import _infer

    def step(x):
        if features:
            f, logits = _features_and_logits(model, x)
            return F.softmax(logits.float(), dim=1).cpu().numpy(), F.normalize(f.float(), dim=1).cpu().numpy()
        return F.softmax(model(x).float(), dim=1).cpu().numpy(), None

    progress = progress or NullProgress()
    model.eval()
    with progress.task("student inference", total=len(idx)) as task:
        outs = _infer(step, batches, idx, batch_size, task, precision)
    probs = np.concatenate([o[0] for o in outs])
    return probs, (np.concatenate([o[1] for o in outs]) if features else None)


def student_batches(images, input_size: int, device: str, mean=None, std=None):
    from labelfix.models.teacher import Batches, _GrayAsRGB

    rgb = images if images.shape[3] == 3 else _GrayAsRGB(images)
    return Batches(rgb, device, size=input_size if input_size != images.shape[1] else None, mean=mean, std=std)


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
# The guard on the mutual round


def mutual_guard(student_pred: np.ndarray, teacher_pred: np.ndarray, target: np.ndarray) -> dict:
    """Is the student at least as good as the teacher? Both predictions are compared with the same
    `target` labels on the same held-out rows (rows the student did not train on; the teacher's
    probabilities are out-of-sample everywhere).

    Tolerance: a paired (McNemar) test. With b rows only the student gets right and c rows only the
    teacher gets right, the difference of accuracies is (b - c) / n, and its standard error under
    "equally accurate" is sqrt(b + c) / n. The student passes unless it is more than GUARD_Z (2)
    such standard errors worse: c - b <= 2 sqrt(b + c), i.e. accuracy difference >= -tolerance with
    tolerance = 2 sqrt(b + c) / n. The tolerance shrinks as the held-out count grows and as the two
    models agree more, so a chance-level student fails on a few dozen rows while a student one or
    two rows behind the teacher on a small held-out set passes. No held-out rows: nothing was
    measured, the guard fails (the mutual round is not run blind).

    The target (distill uses the refined labels the student trained on) was partly derived from the
    teacher's own probabilities, so the comparison leans towards the teacher: the guard errs on
    the side of keeping the teacher-only labels."""
    student_pred, teacher_pred, target = (np.asarray(a) for a in (student_pred, teacher_pred, target))
    n = int(len(target))
    s = student_pred == target
    t = teacher_pred == target
    b, c = int((s & ~t).sum()), int((~s & t).sum())
    return {
        "heldout_rows": n,
        "student_accuracy": round(float(s.mean()), 4) if n else None,
        "teacher_accuracy": round(float(t.mean()), 4) if n else None,
        "only_student_right": b,
        "only_teacher_right": c,
        "tolerance": round(GUARD_Z * math.sqrt(b + c) / n, 4) if n else None,
        "passed": bool(n > 0 and c - b <= GUARD_Z * math.sqrt(b + c)),
    }


def guard_warning(guard: dict, what: str) -> str:
    """One line saying why the mutual round did not run and what was left as it was."""
    if not guard.get("heldout_rows"):
        why = "no held-out rows to compare the student with the teacher on"
    else:
        why = (
            f"the student's held-out accuracy {guard['student_accuracy']:.4f} is below the teacher's "
            f"{guard['teacher_accuracy']:.4f} (same {guard['heldout_rows']} rows, same labels; "
            f"tolerance {guard['tolerance']:.4f})"
        )
    return f"mutual round skipped: {why}; {what}"


def recorded_guard(run_dir: Path) -> tuple[dict | None, str | None]:
    """The guard distill recorded in student.json for the student view in `run_dir`: (guard,
    None) when the view may be used, else (guard or None, one-line warning). The record must
    name the student_probs.npy it was measured with (a view left by an interrupted distill or
    copied from elsewhere has none that matches)."""
    from labelfix.commands.refine import STUDENT_PROBS

    run_dir = Path(run_dir)
    guard, run = None, RunDir(run_dir)
    try:
        guard = run.load_json(STUDENT_META, "run labelfix distill again").get("mutual_guard")
        probs_sha = sha256_file(run.check_file(STUDENT_PROBS, "run labelfix distill again"))
    except RunDirError:
        probs_sha = None
    if not isinstance(guard, dict) or probs_sha is None or guard.get("student_probs_sha256") != probs_sha:
        return None, (
            f"mutual round skipped: {run_dir / STUDENT_META} records no held-out comparison for this "
            f"{STUDENT_PROBS} (run labelfix distill again); teacher-only refinement"
        )
    if not guard.get("passed"):
        return guard, guard_warning(guard, "teacher-only refinement")
    return guard, None


# ---------------------------------------------------------------------------------------------
# The distill step


def open_run_images(run_dir: Path, summary: dict) -> np.ndarray:
    info = summary.get("images")
    if not info:
        raise InputError(
            f"{run_dir}: this run has no images (scanned from --pred-probs); distill trains on images: "
            "scan an IMAGES_DIR first"
        )
    path = run_dir / info["cache"]
    if not path.is_file():
        raise RunDirError(f"{path}: decoded images missing (run labelfix scan again)")
    return np.memmap(path, dtype=np.uint8, mode="r", shape=tuple(info["shape"]))


def distill(
    run_dir: Path, cfg: DistillConfig | None = None, progress: Progress | None = None, mutual_refine: bool = True
) -> dict:
    """Train the student, save it, and run the mutual refinement round; with cfg.rounds > 1, again
    on the labels each mutual round leaves (a fresh student each round). Returns distill.json's
    content: the last round's report, plus a per-round summary under "rounds".

    The mutual round runs only when the student passes `mutual_guard` (held-out accuracy against
    the refined labels at least the teacher's, within the tolerance); otherwise refined.parquet and
    labels.refined.csv are left untouched, a warning goes into distill.json's and summary.json's
    refine section `warnings`, and no further round is trained.

    An interrupted multi-round run resumes: the rounds already finished are recorded in
    checkpoints/distill-rounds.json (removed when all are done), and the unfinished round resumes
    from its per-epoch checkpoint."""
    cfg = cfg or DistillConfig()
    cfg.validate()
    if cfg.rounds > 1 and not mutual_refine:
        raise InputError("--rounds above 1 needs the mutual refinement round (each round trains on its labels)")
    progress = progress or NullProgress()
    run_dir = Path(run_dir)
    state_path = run_dir / ROUNDS_STATE
    key = sha256_json(asdict(cfg))[:16]
    done: list[dict] = []
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        # resume only the same command on the labels the last finished round left
        if state.get("key") == key and state.get("refined_sha256") == _refined_sha(run_dir):
            done = list(state.get("rounds", []))
    report: dict = {}
    for r in range(len(done) + 1, cfg.rounds + 1):
        label = f"distill {cfg.student}" + (f" round {r}/{cfg.rounds}" if cfg.rounds > 1 else "")
        report = _distill_round(run_dir, cfg, progress, mutual_refine, label)
        done.append({"round": r, **{k: report.get(k) for k in ROUND_KEYS}})
        if mutual_refine and not report["mutual_guard"]["passed"]:
            # the labels did not move: a further round would train the same student again
            if r < cfg.rounds:
                report["warnings"].append(
                    f"--rounds {cfg.rounds}: stopped after round {r}, whose student failed the guard"
                )
            break
        if r < cfg.rounds:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(state_path, {"key": key, "refined_sha256": _refined_sha(run_dir), "rounds": done})
    state_path.unlink(missing_ok=True)
    report["rounds"] = done
    with RunDir(run_dir).commit("distill") as stage:
        atomic_write_json(stage / DISTILL_FILE, report)
    return report


def _refined_sha(run_dir: Path) -> str | None:
    from labelfix.commands.refine import REFINED_FILE

    path = run_dir / REFINED_FILE
    return sha256_file(path) if path.is_file() else None


def _distill_round(run_dir: Path, cfg: DistillConfig, progress: Progress, mutual_refine: bool, label: str) -> dict:
    """One round: a fresh student on the current refined labels, saved, then the mutual round."""
    import torch

    from labelfix.commands.refine import (
        REFINED_CSV,
        REFINED_FILE,
        STUDENT_EMB,
        STUDENT_PROBS,
        RefineConfig,
        load_run,
        refine,
    )
    from labelfix.runtime import resolve_device, resolve_precision, seed_everything

    summary, _, _, _, _ = load_run(run_dir)
    images = open_run_images(run_dir, summary)
    ref, _ = read_parquet(run_dir / REFINED_FILE) if (run_dir / REFINED_FILE).is_file() else (None, None)
    if ref is None:
        raise RunDirError(f"{run_dir / REFINED_FILE}: missing (run labelfix refine {run_dir} first)")
    names = list(summary["class_names"])
    c = len(names)
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    soft = list_column(ref, "soft_label")
    weight = ref["weight"].to_numpy().astype(np.float32)
    teacher = list_column(read_parquet(run_dir / "scan.parquet")[0], "teacher_probs")
    refined = soft.argmax(1)
    held = stratified_holdout(refined, weight > 0, cfg.val_fraction, cfg.seed)
    train_idx = np.flatnonzero(~held & (weight > 0))
    model, input_size, stem = build_student(cfg.student, c, images.shape[1])
    model = model.to(device)
    batches = student_batches(images, input_size, device)
    logs = train_classifier(
        model, batches, train_idx, soft, weight, cfg, teacher, run_dir / CHECKPOINT, progress, label
    )
    held_idx = np.flatnonzero(held)
    val_acc = None
    p_held = np.zeros((0, c), dtype=np.float32)
    if len(held_idx):
        p_held, _ = infer(model, batches, held_idx, progress=progress, precision=precision)
        val_acc = float((p_held.argmax(1) == refined[held_idx]).mean())
    guard = mutual_guard(p_held.argmax(1), teacher[held_idx].argmax(1), refined[held_idx])
    probs, feats = infer(model, batches, np.arange(len(refined)), progress=progress, features=True, precision=precision)
    meta = {
        "labelfix_version": __version__,
        "arch": cfg.student,
        "num_classes": c,
        "class_names": names,
        "image_size": int(images.shape[1]),
        "channels": int(images.shape[3]),
        "input_size": int(input_size),
        "stem": stem,
        "mean": batches.mean.flatten().cpu().tolist(),
        "std": batches.std.flatten().cpu().tolist(),
        "precision": precision,
        "preprocessing": "decode as in scan (grayscale kept, alpha on white), resize to image_size, "
        "repeat gray to 3 channels, resize to input_size, /255, normalise with mean/std",
    }
    # the student and its view appear together (RunDir.commit); student.json names the
    # probabilities the guard was measured with: refine reads the guard there
    with RunDir(run_dir).commit("distill") as stage:
        torch.save(model.state_dict(), stage / STUDENT_FILE)
        atomic_save_npy(stage / STUDENT_EMB, feats.astype(np.float32))
        atomic_save_npy(stage / STUDENT_PROBS, probs.astype(np.float32))
        meta["mutual_guard"] = dict(
            guard, target="refined labels", student_probs_sha256=sha256_file(stage / STUDENT_PROBS)
        )
        atomic_write_json(stage / STUDENT_META, meta)
    report = {
        "labelfix_version": __version__,
        "config": asdict(cfg),
        "device": device,
        "precision": precision,
        "train_rows": int(len(train_idx)),
        "heldout_rows": int(len(held_idx)),
        "excluded_review_rows": int((weight == 0).sum()),
        "epochs": logs,
        "heldout_accuracy_vs_refined": None if val_acc is None else round(val_acc, 4),
        "mutual_guard": dict(guard, target="refined labels"),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "warnings": [],
    }
    if mutual_refine and guard["passed"]:
        prev = summary.get("refine", {}).get("config", {})
        keep = {k: v for k, v in prev.items() if k in RefineConfig.__dataclass_fields__}
        report["mutual_refine"] = refine(run_dir, RefineConfig(**keep), progress)["counts"]
    elif mutual_refine:
        warning = guard_warning(guard, f"{REFINED_FILE} and {REFINED_CSV} were left as they were")
        report["warnings"].append(warning)
        _add_refine_warning(run_dir, warning)
    return report


def _add_refine_warning(run_dir: Path, warning: str) -> None:
    """Record a skipped mutual round in summary.json's refine section (the refined outputs, and
    the rest of that section, describe the refine that wrote them and stay as they are)."""
    from labelfix.commands.scan import SUMMARY_FILE

    run = RunDir(run_dir)
    summary = run.load_summary()
    section = summary.setdefault("refine", {})
    section["warnings"] = [w for w in section.get("warnings", []) if not w.startswith("mutual round skipped")] + [
        warning
    ]
    with run.commit("distill") as stage:
        atomic_write_json(stage / SUMMARY_FILE, summary)


# ---------------------------------------------------------------------------------------------
# predict


def load_student(model_path: Path, device: str):
    import torch

    model_path = Path(model_path)
    meta_path = model_path.with_name(STUDENT_META)
    if not model_path.is_file():
        raise InputError(f"{model_path}: --model file not found")
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: missing (student.pt needs its student.json beside it)")
    meta = json.loads(meta_path.read_text())
    model, _, _ = build_student(meta["arch"], meta["num_classes"], meta["image_size"])
    try:
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise InputError(
            f"{model_path}: not the weights {meta_path.name} describes ({exc.__class__.__name__})"
        ) from None
    return model.to(device).eval(), meta


def predict(
    images_dir: Path,
    model_path: Path,
    out_dir: Path,
    labels_csv: Path | None = None,
    path_col: str = "path",
    label_col: str = "label",
    device: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """Write predictions.parquet; with labels, also the accuracy. Returns a small report."""
    import tempfile

    from labelfix.files.inputs import IMAGE_EXTENSIONS, decode_images, read_labels_csv, resolve_paths
    from labelfix.runtime import resolve_device, resolve_precision

    progress = progress or NullProgress()
    device = resolve_device(device)
    model, meta = load_student(model_path, device)
    names = meta["class_names"]
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: images folder not found")
    if labels_csv is not None:
        labels = read_labels_csv(labels_csv, path_col, label_col, names)
        files = resolve_paths(images_dir, labels, str(labels_csv))
        rel = list(labels.paths)
    else:
        labels = None
        files = sorted(f for f in images_dir.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise InputError(f"{images_dir}: no images found")
        rel = [f.relative_to(images_dir).as_posix() for f in files]
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        arr = decode_images(files, Path(tmp) / "images.u8", meta["image_size"], str(labels_csv or images_dir), progress)
        images = arr.open()
        if images.shape[3] != meta["channels"] and meta["channels"] == 1:
            images = np.asarray(images).mean(axis=3, keepdims=True).astype(np.uint8)
        batches = student_batches(images, meta["input_size"], device, meta["mean"], meta["std"])
        # The precision the student was trained and evaluated with, where this device runs it natively.
        precision = meta.get("precision", "fp32")
        if precision == "bf16" and resolve_precision(device, "auto") != "bf16":
            precision = "fp32"
        probs, _ = infer(model, batches, np.arange(len(files)), progress=progress, precision=precision)
        del images
    pred = probs.argmax(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(
        out_dir / "predictions.parquet",
        {
            "path": np.array(rel, dtype=str),
            "predicted_label": np.array(names, dtype=object)[pred].astype(str),
            "confidence": probs.max(1).astype(np.float32),
            "probs": probs.astype(np.float32),
        },
        {"labelfix_version": __version__, "class_names": names, "model": str(Path(model_path).resolve())},
    )
    report = {"images": len(files), "out": str(out_dir / "predictions.parquet")}
    if labels is not None:
        report["accuracy"] = round(float((pred == labels.y).mean()), 4)
    return report
