"""`labelfix demo`: scikit-learn's bundled digits with known injected noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelfix.commands.scan import ScanInputs, ScanResult, scan
from labelfix.config import ScanConfig
from labelfix.core.metrics import auroc, precision_recall_f1
from labelfix.core.noise import symmetric_noise
from labelfix.files.outputs import atomic_write_bytes
from labelfix.progress import Progress


def write_digits_folder(
    root: Path, noise: float, seed: int, n: int | None = None
) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write digits as 8x8 PNGs plus `labels.csv` (noisy labels) and `truth.csv`.

    Returns (csv path, true labels, noisy labels) in CSV row order.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255).round().astype(np.uint8)
    y = d.target.astype(np.int64)
    if n is not None and n < len(y):
        keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
        images, y = images[keep], y[keep]
    noisy = symmetric_noise(y, noise, 10, seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows, truth = ["path,label"], ["path,label"]
    for i, (im, t, g) in enumerate(zip(images, y, noisy)):
        name = f"digit_{i:04d}.png"
        Image.fromarray(im, "L").save(img_dir / name)
        rows.append(f"{name},{g}")
        truth.append(f"{name},{t}")
    atomic_write_bytes(root / "labels.csv", ("\n".join(rows) + "\n").encode())
    atomic_write_bytes(root / "truth.csv", ("\n".join(truth) + "\n").encode())
    return root / "labels.csv", y, noisy


def run_demo(out: Path, noise: float = 0.2, seed: int = 0, progress: Progress | None = None) -> tuple[ScanResult, dict]:
    out = Path(out)
    csv, y, noisy = write_digits_folder(out / "data", noise, seed)
    result = scan(
        ScanInputs(images_dir=out / "data" / "images", labels_csv=csv),
        ScanConfig(seed=seed),
        out / "run",
        progress,
    )
    truth = noisy != y
    flags = result.table["is_issue"]
    metrics = precision_recall_f1(flags, truth)
    metrics["auroc"] = auroc(result.table["issue_score"], truth)
    metrics["injected"] = int(truth.sum())
    metrics["noise"] = noise
    metrics["samples"] = int(len(y))
    # refine (actions for the review queue) and the report a person opens
    from labelfix.commands.refine import refine
    from labelfix.report import write_report

    refine(out / "run", progress=progress)
    metrics["report"] = str(write_report(out / "run"))
    return result, metrics
