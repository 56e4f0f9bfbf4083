"""`labelfix bench`: inject label noise into clean data, run the pipeline, score it against the
injected truth, side by side with cleanlab on the same teacher probabilities and embeddings."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelfix.config import ScanConfig
from labelfix.core.metrics import auroc, precision_recall_f1
from labelfix.core.noise import FASHION_MNIST_PAIRS, inject
from labelfix.errors import InputError, WeakTeacher
from labelfix.files.outputs import atomic_write_json, leave_no_trace, list_column
from labelfix.progress import NullProgress, Progress


@dataclass(frozen=True)
class BenchResult:
    row: dict

    def to_json(self) -> str:
        from labelfix.files.outputs import to_json

        return to_json(self.row)


def flag_scores(flags, score, truth) -> dict:
    """Precision, recall, F1 and AUROC of `flags` / `score` against `truth`; AUROC is None when
    undefined (no wrong labels, or only wrong ones)."""
    m = precision_recall_f1(flags, truth)
    return {
        "precision": round(m["precision"], 4),
        "recall": round(m["recall"], 4),
        "f1": round(m["f1"], 4),
        "auroc": _finite_or_none(None if score is None else auroc(score, truth)),
        "flagged": int(np.asarray(flags).sum()),
    }


def _finite_or_none(x: float | None, nd: int = 4) -> float | None:
    """JSON has no NaN: an undefined metric (AUROC with no wrong labels) is null."""
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def cleanlab_variants(y: np.ndarray, probs: np.ndarray, emb: np.ndarray | None, truth: np.ndarray) -> dict:
    """cleanlab find_label_issues (default filter and predicted_neq_given) on `probs`, and
    Datalab's features-only label check on `emb`, each scored against `truth`."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = {}
    quality = get_label_quality_scores(y, probs)
    t = time.perf_counter()
    flags = find_label_issues(y, probs, n_jobs=1)  # its fork pool deadlocked beside torch threads
    out["cleanlab prune_by_noise_rate"] = dict(
        flag_scores(flags, 1 - quality, truth), seconds=round(time.perf_counter() - t, 2)
    )
    t = time.perf_counter()
    flags = find_label_issues(y, probs, filter_by="predicted_neq_given", n_jobs=1)
    out["cleanlab predicted_neq_given"] = dict(
        flag_scores(flags, 1 - quality, truth), seconds=round(time.perf_counter() - t, 2)
    )
    if emb is not None:
        try:
            from cleanlab import Datalab

            t = time.perf_counter()
            feats = np.asarray(emb, dtype=np.float32)
            issues, note = _datalab_label_issues(Datalab, y, feats), None
            if issues is None:
                # Datalab's kNN "out-of-sample" correction assumes each point is its own nearest
                # neighbour; exact duplicate features (binarised digits) break that and it fails with
                # "Values in pred_probs must be between 0 and 1". A seeded 1e-6 jitter breaks the ties.
                jitter = np.random.default_rng(0).normal(scale=1e-6, size=feats.shape)
                issues = _datalab_label_issues(Datalab, y, feats.astype(np.float64) + jitter)
                note = "exact duplicate features: Datalab failed, rerun with a 1e-6 jitter"
            if issues is None:
                out["cleanlab Datalab(features)"] = {"skipped": "Datalab found no label issues result (failed)"}
            else:
                out["cleanlab Datalab(features)"] = dict(
                    flag_scores(issues["is_label_issue"].to_numpy(), 1 - issues["label_score"].to_numpy(), truth),
                    seconds=round(time.perf_counter() - t, 2),
                )
                if note:
                    out["cleanlab Datalab(features)"]["note"] = note
        except ImportError:
            out["cleanlab Datalab(features)"] = {"skipped": "pip install 'cleanlab[datalab]'"}
    return out


def _datalab_label_issues(Datalab, y: np.ndarray, feats: np.ndarray):
    """Datalab's label issues from `feats`, or None when its label check failed."""
    lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
    lab.find_issues(features=feats, issue_types={"label": {}})
    try:
        return lab.get_issues("label")
    except ValueError:
        return None


def _evaluate_run(run: Path, y_noisy: np.ndarray, y_true: np.ndarray, compare: bool) -> dict:
    import pandas as pd

    from labelfix.commands.refine import REFINED_FILE

    scan_df = pd.read_parquet(run / "scan.parquet")
    ref = pd.read_parquet(run / REFINED_FILE)
    summary = json.loads((run / "summary.json").read_text())
    truth = y_noisy != y_true
    soft = list_column(ref, "soft_label")
    refined = soft.argmax(1)
    wrong_refined = refined != y_true
    amb = ref["ambiguity"].to_numpy()
    relabel = (ref["action"] == "relabel").to_numpy()
    row = {
        "samples": int(len(y_true)),
        "actual_noise_rate": round(float(truth.mean()), 4),
        "estimated_noise_rate": summary["estimated_noise_rate"],
        "labelfix flags": flag_scores(scan_df["is_issue"].to_numpy(), scan_df["issue_score"].to_numpy(), truth),
        "labelfix refined != given": flag_scores(refined != y_noisy, 1 - soft[np.arange(len(y_noisy)), y_noisy], truth),
        "flagged_share": round(float(scan_df["is_issue"].to_numpy().mean()), 4),
        "given_accuracy": round(float((~truth).mean()), 4),
        "refined_accuracy": round(float((~wrong_refined).mean()), 4),
        # refine's relabels (what labels.refined.csv applies without a person): how many, how often right
        "relabels": int(relabel.sum()),
        "relabel_precision": round(float((~wrong_refined[relabel]).mean()), 4) if relabel.any() else None,
        "teacher_accuracy": round(float((list_column(scan_df, "teacher_probs").argmax(1) == y_true).mean()), 4),
        "ambiguity_wrong_over_right": _finite_or_none(
            amb[wrong_refined].mean() / max(amb[~wrong_refined].mean(), 1e-12) if wrong_refined.any() else None, 2
        ),
        "seconds": dict(summary["timings_s"], refine=summary["refine"]["time_s"]),
    }
    if compare:
        emb_path = run / "embeddings.npy"
        if not emb_path.is_file():
            emb_path = run / summary["teacher"]["cache"] / "embeddings.npy"
        probs = list_column(scan_df, "teacher_probs")
        row["cleanlab"] = cleanlab_variants(y_noisy, probs, np.load(emb_path), truth)
        best = max((v["f1"] for v in row["cleanlab"].values() if "f1" in v), default=None)
        row["best_cleanlab_f1"] = best
        row["f1_ratio_vs_best_cleanlab"] = round(row["labelfix flags"]["f1"] / best, 3) if best else None
    return row


def bench_images(
    images: np.ndarray,
    y_true: np.ndarray,
    class_names: list[str],
    noise: str,
    rate: float,
    work: Path,
    cfg: ScanConfig | None = None,
    pairs: dict[int, int] | None = None,
    compare: bool = True,
    progress: Progress | None = None,
    image_dir: Path | None = None,
    record_weak_teacher: bool = False,
) -> dict:
    """Write `images` (N, H, W[, C]) uint8 as PNGs with injected noisy labels, scan and refine
    them with the real pipeline, and score the result. `image_dir` lets several rows share PNGs.
    `record_weak_teacher`: when scan stops with WeakTeacher (exit 5), return (and write to
    bench.json) a row saying so instead of raising. A failure before the scan is complete leaves
    `work` as it was."""
    from PIL import Image

    from labelfix.commands.refine import refine
    from labelfix.commands.scan import ScanInputs, scan

    cfg = cfg or ScanConfig()
    progress = progress or NullProgress()
    c = len(class_names)
    y_noisy = inject(noise, y_true, rate, c, cfg.seed, features=images, pairs=pairs)
    work = Path(work)
    # a failure up to a complete scan (bad input, exit 5 unless recorded, Ctrl-C) leaves no
    # labels.csv, PNGs or run behind
    with leave_no_trace(work, restore=("labels.csv", "bench.json")):
        work.mkdir(parents=True, exist_ok=True)
        img_dir = Path(image_dir) if image_dir is not None else work / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        names = [f"{i:06d}.png" for i in range(len(y_true))]
        t = time.perf_counter()
        with progress.task("write PNGs", total=len(names)) as task:
            for name, im in zip(names, images):
                if not (img_dir / name).is_file():
                    Image.fromarray(im.squeeze() if im.ndim == 3 and im.shape[-1] == 1 else im).save(img_dir / name)
                task.advance()
        write_s = time.perf_counter() - t
        import pandas as pd

        pd.DataFrame({"path": names, "label": [class_names[v] for v in y_noisy]}).to_csv(
            work / "labels.csv", index=False
        )
        run = work / "run"
        t = time.perf_counter()
        try:
            result = scan(ScanInputs(images_dir=img_dir, labels_csv=work / "labels.csv"), cfg, run, progress)
        except WeakTeacher as e:
            if not record_weak_teacher:
                raise
            row = weak_teacher_row(str(e), y_noisy, y_true)
            row.update(
                {
                    "noise": noise,
                    "rate": rate,
                    "scan_wall_s": round(time.perf_counter() - t, 1),
                    "png_write_s": round(write_s, 1),
                }
            )
            atomic_write_json(work / "bench.json", row)
            return row
        scan_s = time.perf_counter() - t
    # a complete scan is a valid run (and holds the teacher cache): a later failure leaves it
    refine(run, progress=progress)
    index = {n: j for j, n in enumerate(result.summary["class_names"])}
    remap = np.array([index[n] for n in class_names])
    row = _evaluate_run(run, remap[y_noisy], remap[y_true], compare)
    row.update({"noise": noise, "rate": rate, "scan_wall_s": round(scan_s, 1), "png_write_s": round(write_s, 1)})
    atomic_write_json(work / "bench.json", row)
    return row


def weak_teacher_row(message: str, y_noisy: np.ndarray, y_true: np.ndarray) -> dict:
    """The row of a benchmark whose scan stopped with WeakTeacher (exit 5): nothing to score."""
    truth = np.asarray(y_noisy) != np.asarray(y_true)
    return {
        "outcome": f"weak teacher (exit {WeakTeacher.exit_code})",
        "weak_teacher": True,
        "message": message,
        "samples": int(len(y_true)),
        "actual_noise_rate": round(float(truth.mean()), 4),
        "given_accuracy": round(float((~truth).mean()), 4),
        "seconds": {},
    }


def bench_pred_probs(
    probs_path: Path,
    y_noisy: np.ndarray,
    y_true: np.ndarray,
    work: Path,
    embeddings: Path | None = None,
    cfg: ScanConfig | None = None,
    compare: bool = True,
    progress: Progress | None = None,
) -> dict:
    """Real (already present) noise: given noisy and true labels and out-of-sample probabilities.
    A failure before the scan is complete leaves `work` as it was."""
    import pandas as pd

    from labelfix.commands.refine import refine
    from labelfix.commands.scan import ScanInputs, scan
    from labelfix.files.inputs import open_npy

    if len(y_noisy) != len(y_true):
        raise InputError(f"noisy labels ({len(y_noisy)}) and true labels ({len(y_true)}) differ in length")
    probs = open_npy(probs_path, "--pred-probs")
    if probs.ndim != 2:
        raise InputError(f"{probs_path}: --pred-probs must be 2-D (rows x classes), got shape {probs.shape}")
    classes = [str(k) for k in range(probs.shape[1])]
    work = Path(work)
    with leave_no_trace(work, restore=("labels.csv", "bench.json")):
        work.mkdir(parents=True, exist_ok=True)
        labels = pd.DataFrame({"path": [f"row{i:07d}" for i in range(len(y_noisy))], "label": y_noisy})
        labels.to_csv(work / "labels.csv", index=False)
        run = work / "run"
        t = time.perf_counter()
        inputs = ScanInputs(
            labels_csv=work / "labels.csv", pred_probs=Path(probs_path), embeddings=embeddings, classes=classes
        )
        scan(inputs, cfg or ScanConfig(), run, progress)
        scan_s = time.perf_counter() - t
    refine(run, progress=progress)
    row = _evaluate_run(run, np.asarray(y_noisy), np.asarray(y_true), compare)
    row.update({"noise": "given (real)", "rate": None, "scan_wall_s": round(scan_s, 1)})
    atomic_write_json(work / "bench.json", row)
    return row


def bench_from_flags(
    paths: dict[str, Path | None],
    class_names: list[str] | None,
    n: int | None,
    noise: str,
    rate: float,
    out: Path,
    seed: int,
    compare: bool,
    progress: Progress | None = None,
) -> dict:
    """The `labelfix bench` command: `paths` maps --npz, --pred-probs, --noisy-labels,
    --true-labels and --embeddings to the user's files (None when not given), each read with
    the checks that name the flag (a missing or pickled --noisy-labels is one line, exit 2)."""
    from labelfix.files.inputs import load_label_vector, open_npy

    cfg = ScanConfig(seed=seed)
    if paths.get("--npz") is not None:
        images, labels = load_npz(paths["--npz"], n, seed)
        names = class_names or [str(k) for k in range(int(labels.max()) + 1)]
        if len(names) <= int(labels.max()):
            raise InputError(f"--class-names lists {len(names)} names but --npz labels go up to {int(labels.max())}")
        return bench_images(images, labels, names, noise, rate, out, cfg, default_pairs(names), compare, progress)
    if paths.get("--pred-probs") is None:
        raise InputError("give --npz (clean data) or --pred-probs with --noisy-labels and --true-labels")
    if paths.get("--noisy-labels") is None or paths.get("--true-labels") is None:
        raise InputError("--pred-probs needs --noisy-labels and --true-labels")
    shape = open_npy(paths["--pred-probs"], "--pred-probs").shape
    rows, c = shape[0], shape[1] if len(shape) == 2 else None
    noisy = load_label_vector(paths["--noisy-labels"], "--noisy-labels", rows, c)
    true = load_label_vector(paths["--true-labels"], "--true-labels", rows, c)
    return bench_pred_probs(paths["--pred-probs"], noisy, true, out, paths.get("--embeddings"), cfg, compare, progress)


def load_npz(path: Path, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`images` (N, H, W[, C]) uint8 and `labels` (N,) from an .npz; a seeded stratified subset of n."""
    from labelfix.files.paths import check_path_flag

    path = check_path_flag(path, "--npz")
    if not path.is_file():
        raise InputError(f"{path}: --npz file not found")
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [key for key in ("images", "labels") if key not in d.files]
            if missing:
                raise InputError(f"{path}: --npz has no array named {missing[0]!r} (has {', '.join(d.files)})")
            images, labels = d["images"], d["labels"]
    except InputError:
        raise
    except ValueError as exc:
        what = "holds pickled Python objects; labelfix never unpickles" if "pickle" in str(exc) else "is unreadable"
        raise InputError(f"{path}: --npz {what}") from None
    except Exception as exc:  # not a zip archive (a single .npy has no .files), truncated...
        raise InputError(f"{path}: --npz is not a readable .npz archive ({exc.__class__.__name__})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise InputError(f"{path}: --npz images must be uint8 (N, H, W[, C]) with N = {len(labels)} labels")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise InputError(f"{path}: --npz labels must be (N,) non-negative integers (got {labels.dtype} {labels.shape})")
    labels = labels.astype(np.int64)
    if n is not None and n < len(labels):
        rng = np.random.default_rng(seed)
        classes, counts = np.unique(labels, return_counts=True)
        per = n // len(classes)
        if per < 2 or per > counts.min():
            raise InputError(
                f"--n {n}: needs 2 to {counts.min()} images per class for {len(classes)} classes "
                f"(--n from {2 * len(classes)} to {counts.min() * len(classes)}, or leave it out)"
            )
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), per, replace=False) for k in classes]))
        images, labels = images[idx], labels[idx]
    return images, labels


def default_pairs(class_names: list[str]) -> dict[int, int] | None:
    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return FASHION_MNIST_PAIRS if list(class_names) == fashion else None


def machine_description() -> str:
    """CPU model, core count and OS, for the benchmark documents."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
