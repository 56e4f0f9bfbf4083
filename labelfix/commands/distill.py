"""`distill`: train a torchvision student on the refined soft labels, then refine again with its
view (the mutual round). The student trains in labelfix.models.student (the one training loop);
this module is the command around it: reading the run, the guard, the rounds, writing.

Loss per sample: weight_i * [(1 - kd) CE(student, soft_label_i) + kd T^2 KL(teacher_T || student_T)],
weight_i = 1 - ambiguity_i (0 for review rows). Checkpoints after every epoch make an
interrupted run resume where it stopped (a damaged checkpoint is discarded with a warning).
Afterwards the student's embeddings feed a mutual refinement round (teacher graph and student
graph alternate) that updates refined.parquet, but only when the student is at least as good as
the teacher on the held-out rows (`mutual_guard`). The student and its view are committed
together (RunDir.commit); on any failure no temporary file is left.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from labelfix import __version__
from labelfix.commands.predict import predict
from labelfix.errors import InputError, RunDirError
from labelfix.files import rundir as rd
from labelfix.files.inputs import sha256_file, sha256_json
from labelfix.files.outputs import atomic_save_npy, atomic_write_bytes, atomic_write_json, list_column
from labelfix.files.rundir import RunDir
from labelfix.models.checkpoint import torch_bytes
from labelfix.models.nets import build_student
from labelfix.models.student import (
    DistillConfig,
    fit_student,
    stratified_holdout,
    student_batches,
    student_outputs,
    train_classifier,
)
from labelfix.progress import NullProgress, Progress
from labelfix.runtime import Runtime, ensure_runtime, seed_everything

__all__ = [
    "DistillConfig",
    "build_student",
    "distill",
    "guard_warning",
    "mutual_guard",
    "predict",
    "recorded_guard",
    "stratified_holdout",
    "student_batches",
    "train_classifier",
]

STUDENT_FILE, STUDENT_META, DISTILL_FILE, CHECKPOINT = rd.STUDENT, rd.STUDENT_META, rd.DISTILL, rd.CHECKPOINT
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
    run_dir = Path(run_dir)
    guard, run = None, RunDir(run_dir)
    try:
        guard = run.load_json(STUDENT_META, "run labelfix distill again").get("mutual_guard")
        probs_sha = sha256_file(run.check_file(rd.STUDENT_PROBS, "run labelfix distill again"))
    except RunDirError:
        probs_sha = None
    if not isinstance(guard, dict) or probs_sha is None or guard.get("student_probs_sha256") != probs_sha:
        return None, (
            f"mutual round skipped: {run_dir / STUDENT_META} records no held-out comparison for this "
            f"{rd.STUDENT_PROBS} (run labelfix distill again); teacher-only refinement"
        )
    if not guard.get("passed"):
        return guard, guard_warning(guard, "teacher-only refinement")
    return guard, None


# ---------------------------------------------------------------------------------------------
# The distill step


def open_run_images(run: RunDir, summary: dict) -> np.ndarray:
    """The run's decoded images (N, H, W, C) uint8, memory-mapped, their size checked."""
    info = summary.get("images")
    if not info:
        raise InputError(
            f"{run.path}: this run has no images (scanned from --pred-probs); distill trains on images: "
            "scan an IMAGES_DIR first"
        )
    try:
        name, shape = str(info["cache"]), tuple(int(s) for s in info["shape"])
    except (KeyError, TypeError, ValueError):
        raise RunDirError(
            f"{run / rd.SUMMARY}: 'images' does not name the decoded images; run labelfix scan again"
        ) from None
    path = run.check_file(name, "run labelfix scan again")  # listed in the manifest, size unchanged
    if len(shape) != 4 or shape[0] != summary["counts"].get("samples") or path.stat().st_size != math.prod(shape):
        raise RunDirError(f"{path}: not the {shape} images summary.json describes; run labelfix scan again")
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)


def distill(
    run_dir: Path,
    cfg: DistillConfig | None = None,
    progress: Progress | None = None,
    mutual_refine: bool = True,
    *,
    runtime: Runtime | None = None,
) -> dict:
    """Train the student, save it, and run the mutual refinement round; with cfg.rounds > 1, again
    on the labels each mutual round leaves (a fresh student each round). Returns distill.json's
    content: the last round's report, plus a per-round summary under "rounds". `runtime` (else
    one resolved from cfg.device and cfg.precision) says where and in which precision.

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
    runtime = ensure_runtime(runtime, cfg.device, cfg.precision)
    progress = progress or NullProgress()
    run_dir = Path(run_dir)
    state_path = run_dir / ROUNDS_STATE
    key = sha256_json(asdict(cfg))[:16]
    done = _rounds_done(state_path, key, run_dir)
    report: dict = {}
    for r in range(len(done) + 1, cfg.rounds + 1):
        label = f"distill {cfg.student}" + (f" round {r}/{cfg.rounds}" if cfg.rounds > 1 else "")
        report = distill_round(run_dir, cfg, progress, mutual_refine, runtime, label)
        done.append({"round": r, **{k: report.get(k) for k in ROUND_KEYS}})
        if mutual_refine and not report["mutual_guard"]["passed"]:
            # the labels did not move: a further round would train the same student again
            if r < cfg.rounds:
                report["warnings"].append(
                    f"--rounds {cfg.rounds}: stopped after round {r}, whose student failed the guard"
                )
            break
        if r < cfg.rounds:
            atomic_write_json(state_path, {"key": key, "refined_sha256": refined_sha(run_dir), "rounds": done})
            RunDir(run_dir).record([ROUNDS_STATE], "distill")
    state_path.unlink(missing_ok=True)
    report["rounds"] = done
    with RunDir(run_dir).commit("distill") as stage:
        atomic_write_json(stage / DISTILL_FILE, report)
    return report


def _rounds_done(state_path: Path, key: str, run_dir: Path) -> list[dict]:
    """The rounds an interrupted run of the same command finished on the labels it left."""
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(state, dict) or not isinstance(state.get("rounds"), list):
        return []
    if state.get("key") == key and state.get("refined_sha256") == refined_sha(run_dir):
        return list(state["rounds"])
    return []


def refined_sha(run_dir: Path) -> str | None:
    path = run_dir / rd.REFINED
    return sha256_file(path) if path.is_file() else None


def distill_round(
    run_dir: Path, cfg: DistillConfig, progress: Progress, mutual_refine: bool, runtime: Runtime, label: str
) -> dict:
    """One round: a fresh student on the current refined labels, saved, then the mutual round."""
    from labelfix.commands.refine import RefineConfig, load_run, refine

    run = RunDir(run_dir)
    summary, scan_df, _, _, _ = load_run(run_dir)
    images = open_run_images(run, summary)
    if not run.written(rd.REFINED):
        raise RunDirError(f"{run_dir / rd.REFINED}: missing (run labelfix refine {run_dir} first)")
    names = list(summary["class_names"])
    ref, _ = run.load_table(rd.REFINED, ("soft_label", "weight"), len(scan_df))
    soft = list_column(ref, "soft_label")
    weight = ref["weight"].to_numpy().astype(np.float32)
    if soft.shape[1] != len(names) or not (np.isfinite(weight).all() and np.isfinite(soft).all()):
        raise RunDirError(f"{run_dir / rd.REFINED}: soft labels or weights damaged; run labelfix refine again")
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    teacher = list_column(scan_df, "teacher_probs")
    trained = _train_student(run_dir, images, soft, weight, teacher, cfg, runtime, progress, label)
    _save_student(run, trained, cfg, names, images.shape, runtime)
    report = {
        "labelfix_version": __version__,
        "config": asdict(cfg),
        "device": runtime.device,
        "precision": runtime.precision,
        "train_rows": int(len(trained["train_idx"])),
        "heldout_rows": int(trained["guard"]["heldout_rows"]),
        "excluded_review_rows": int((weight == 0).sum()),
        "epochs": trained["fit"].logs,
        "heldout_accuracy_vs_refined": trained["val_acc"],
        "mutual_guard": dict(trained["guard"], target="refined labels"),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "warnings": list(trained["fit"].warnings),
    }
    guard = trained["guard"]
    if mutual_refine and guard["passed"]:
        prev = summary.get("refine", {}).get("config", {})
        keep = {k: v for k, v in prev.items() if k in RefineConfig.__dataclass_fields__}
        report["mutual_refine"] = refine(run_dir, RefineConfig(**keep), progress)["counts"]
    elif mutual_refine:
        warning = guard_warning(guard, f"{rd.REFINED} and {rd.REFINED_CSV} were left as they were")
        report["warnings"].append(warning)
        _add_refine_warning(run_dir, warning)
    return report


def _train_student(run_dir, images, soft, weight, teacher, cfg, runtime, progress, label) -> dict:
    """Train on the rows not held out; the held-out accuracy, the guard, and every row's outputs."""
    refined = soft.argmax(1)
    held = stratified_holdout(refined, weight > 0, cfg.val_fraction, cfg.seed)
    train_idx = np.flatnonzero(~held & (weight > 0))
    model, input_size, stem = build_student(cfg.student, soft.shape[1], images.shape[1])
    model = model.to(runtime.device)
    batches = student_batches(images, input_size, runtime.device)
    fitted = fit_student(
        model,
        batches,
        train_idx,
        soft,
        weight,
        cfg,
        runtime,
        teacher,
        run_dir / CHECKPOINT,
        progress,
        label,
        write=RunDir(run_dir).write_recorded("distill"),
    )
    held_idx = np.flatnonzero(held)
    val_acc = None
    p_held = np.zeros((0, soft.shape[1]), dtype=np.float32)
    if len(held_idx):
        p_held, _ = student_outputs(model, batches, held_idx, progress=progress, precision=runtime.precision)
        val_acc = round(float((p_held.argmax(1) == refined[held_idx]).mean()), 4)
    guard = mutual_guard(p_held.argmax(1), teacher[held_idx].argmax(1), refined[held_idx])
    probs, feats = student_outputs(
        model, batches, np.arange(len(refined)), progress=progress, features=True, precision=runtime.precision
    )
    return {
        "model": model,
        "input_size": input_size,
        "stem": stem,
        "batches": batches,
        "fit": fitted,
        "train_idx": train_idx,
        "val_acc": val_acc,
        "guard": guard,
        "probs": probs,
        "feats": feats,
    }


def _save_student(run: RunDir, trained: dict, cfg: DistillConfig, names: list, shape: tuple, runtime: Runtime) -> None:
    """student.pt, student.json and the student view, committed together; student.json names
    the probabilities the guard was measured with (refine reads the guard there)."""
    batches = trained["batches"]
    meta = {
        "labelfix_version": __version__,
        "arch": cfg.student,
        "num_classes": len(names),
        "class_names": names,
        "image_size": int(shape[1]),
        "channels": int(shape[3]),
        "input_size": int(trained["input_size"]),
        "stem": trained["stem"],
        "mean": batches.mean.flatten().cpu().tolist(),
        "std": batches.std.flatten().cpu().tolist(),
        "precision": runtime.precision,
        "preprocessing": "decode as in scan (grayscale kept, alpha on white), resize to image_size, "
        "repeat gray to 3 channels, resize to input_size, /255, normalise with mean/std",
    }
    with run.commit("distill") as stage:
        atomic_write_bytes(stage / STUDENT_FILE, torch_bytes(trained["model"].state_dict()))
        atomic_save_npy(stage / rd.STUDENT_EMB, trained["feats"].astype(np.float32))
        atomic_save_npy(stage / rd.STUDENT_PROBS, trained["probs"].astype(np.float32))
        meta["mutual_guard"] = dict(
            trained["guard"], target="refined labels", student_probs_sha256=sha256_file(stage / rd.STUDENT_PROBS)
        )
        atomic_write_json(stage / STUDENT_META, meta)


def _add_refine_warning(run_dir: Path, warning: str) -> None:
    """Record a skipped mutual round in summary.json's refine section (the refined outputs, and
    the rest of that section, describe the refine that wrote them and stay as they are)."""
    run = RunDir(run_dir)
    summary = run.load_summary()
    section = summary.setdefault("refine", {})
    section["warnings"] = [w for w in section.get("warnings", []) if not w.startswith("mutual round skipped")] + [
        warning
    ]
    with run.commit("distill") as stage:
        atomic_write_json(stage / rd.SUMMARY, summary)
