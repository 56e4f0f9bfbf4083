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
from labelfix.files.outputs import atomic_write_json, list_column
from labelfix.progress import NullProgress, Progress


@dataclass(frozen=True)
class BenchResult:
    row: dict

    def to_json(self) -> str:
        from labelfix.files.outputs import to_json

        return to_json(self.row)


def _scores(flags, score, truth) -> dict:
    m = precision_recall_f1(flags, truth)
    return {
        "precision": round(m["precision"], 4),
        "recall": round(m["recall"], 4),
        "f1": round(m["f1"], 4),
        "auroc": None if score is None else round(auroc(score, truth), 4),
        "flagged": int(np.asarray(flags).sum()),
    }


def cleanlab_variants(y: np.ndarray, probs: np.ndarray, emb: np.ndarray | None, truth: np.ndarray) -> dict:
    """cleanlab find_label_issues (default filter and predicted_neq_given) on `probs`, and
    Datalab's features-only label check on `emb`, each scored against `truth`."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = {}
    quality = get_label_quality_scores(y, probs)
    t = time.perf_counter()
    flags = find_label_issues(y, probs)
    out["cleanlab prune_by_noise_rate"] = dict(
        _scores(flags, 1 - quality, truth), seconds=round(time.perf_counter() - t, 2)
    )
    t = time.perf_counter()
    flags = find_label_issues(y, probs, filter_by="predicted_neq_given")
    out["cleanlab predicted_neq_given"] = dict(
        _scores(flags, 1 - quality, truth), seconds=round(time.perf_counter() - t, 2)
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
                    _scores(issues["is_label_issue"].to_numpy(), 1 - issues["label_score"].to_numpy(), truth),
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
    row = {
        "samples": int(len(y_true)),
        "actual_noise_rate": round(float(truth.mean()), 4),
        "estimated_noise_rate": summary["estimated_noise_rate"],
        "labelfix flags": _scores(scan_df["is_issue"].to_numpy(), scan_df["issue_score"].to_numpy(), truth),
        "labelfix refined != given": _scores(refined != y_noisy, 1 - soft[np.arange(len(y_noisy)), y_noisy], truth),
        "flagged_share": round(float(scan_df["is_issue"].to_numpy().mean()), 4),
        "given_accuracy": round(float((~truth).mean()), 4),
        "refined_accuracy": round(float((~wrong_refined).mean()), 4),
        "teacher_accuracy": round(float((list_column(scan_df, "teacher_probs").argmax(1) == y_true).mean()), 4),
        "ambiguity_wrong_over_right": round(
            float(amb[wrong_refined].mean() / max(amb[~wrong_refined].mean(), 1e-12)), 2
        ),
        "seconds": dict(summary["timings_s"], refine=summary["refine"]["time_s"]),
    }
    if compare:
        emb_path = run / "embeddings.npy"
        if not emb_path.is_file():
            emb_path = run / summary["teacher"]["cache"] / "embeddings.npy"
        probs = list_column(scan_df, "teacher_probs")
        row["cleanlab"] = cleanlab_variants(y_noisy, probs, np.load(emb_path), truth)
        best = max((v["f1"] for v in row["cleanlab"].values() if "f1" in v), default=float("nan"))
        row["best_cleanlab_f1"] = best
        row["f1_ratio_vs_best_cleanlab"] = round(row["labelfix flags"]["f1"] / best, 3) if best > 0 else None
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
    bench.json) a row saying so instead of raising."""
    from PIL import Image

    from labelfix.commands.refine import refine
    from labelfix.commands.scan import ScanInputs, scan

    cfg = cfg or ScanConfig()
    progress = progress or NullProgress()
    c = len(class_names)
    y_noisy = inject(noise, y_true, rate, c, cfg.seed, features=images, pairs=pairs)
    work = Path(work)
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

    pd.DataFrame({"path": names, "label": [class_names[v] for v in y_noisy]}).to_csv(work / "labels.csv", index=False)
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
    """Real (already present) noise: given noisy and true labels and out-of-sample probabilities."""
    import pandas as pd

    from labelfix.commands.refine import refine
    from labelfix.commands.scan import ScanInputs, scan

    if len(y_noisy) != len(y_true):
        raise InputError(f"noisy labels ({len(y_noisy)}) and true labels ({len(y_true)}) differ in length")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"path": [f"row{i:07d}" for i in range(len(y_noisy))], "label": y_noisy}).to_csv(
        work / "labels.csv", index=False
    )
    probs = np.load(probs_path, mmap_mode="r")
    classes = [str(k) for k in range(probs.shape[1])]
    run = work / "run"
    t = time.perf_counter()
    scan(
        ScanInputs(labels_csv=work / "labels.csv", pred_probs=Path(probs_path), embeddings=embeddings, classes=classes),
        cfg or ScanConfig(),
        run,
        progress,
    )
    scan_s = time.perf_counter() - t
    refine(run, progress=progress)
    row = _evaluate_run(run, np.asarray(y_noisy), np.asarray(y_true), compare)
    row.update({"noise": "given (real)", "rate": None, "scan_wall_s": round(scan_s, 1)})
    atomic_write_json(work / "bench.json", row)
    return row


def load_npz(path: Path, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`images` (N, H, W[, C]) uint8 and `labels` (N,) from an .npz; a seeded stratified subset of n."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: --npz file not found")
    d = np.load(path)
    for key in ("images", "labels"):
        if key not in d:
            raise InputError(f"{path}: no array named {key!r} (has {', '.join(d.files)})")
    images, labels = d["images"], d["labels"].astype(np.int64)
    if n is not None and n < len(labels):
        rng = np.random.default_rng(seed)
        classes = np.unique(labels)
        per = n // len(classes)
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
