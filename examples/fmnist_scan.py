"""Acceptance run for `labelfix scan` on Fashion-MNIST written as PNG files.

Writes a seeded, stratified 20,000-image subset of ../shared/data/fashion-mnist.npz as PNGs
with a labels CSV carrying 40% symmetric noise, runs the real `labelfix scan` command on it,
and prints precision / recall / F1 / AUROC of the flags against the injected truth and the
wall time of the scan command.

    .venv/bin/python examples/fmnist_scan.py [--n 20000] [--noise 0.4] [--work /tmp/lf-fmnist]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from labelfix.core.metrics import auroc, precision_recall_f1
from labelfix.core.noise import symmetric_noise

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist.npz"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per = n // 10
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), per, replace=False) for k in range(10)]))


def write_folder(root: Path, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(DATA)
    idx = stratified_subset(d["labels"], n, seed)
    images, y = d["images"][idx], d["labels"][idx].astype(np.int64)
    noisy = symmetric_noise(y, noise, 10, seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.png" for i in range(len(y))]
    for name, im in zip(names, images):
        Image.fromarray(im, "L").save(root / "images" / name)
    pd.DataFrame({"path": names, "label": [CLASSES[v] for v in noisy]}).to_csv(root / "labels.csv", index=False)
    pd.DataFrame({"path": names, "label": [CLASSES[v] for v in y]}).to_csv(root / "truth.csv", index=False)
    return y, noisy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--noise", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lf-fmnist"))
    args = ap.parse_args()
    root = args.work / f"fmnist-{args.n}-sym{int(args.noise * 100)}-s{args.seed}"
    y, noisy = write_folder(root, args.n, args.noise, args.seed)
    out = root / "run"
    cmd = [
        str(Path(sys.executable).parent / "labelfix"),
        "scan",
        str(root / "images"),
        "--labels",
        str(root / "labels.csv"),
        "--out",
        str(out),
        "--seed",
        str(args.seed),
        "--json",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 10):
        sys.exit(f"scan failed ({proc.returncode}): {proc.stderr.strip()}")
    summary = json.loads(proc.stdout)
    df = pd.read_parquet(out / "scan.parquet")
    truth = noisy != y
    m = precision_recall_f1(df["is_issue"].to_numpy(), truth)
    result = {
        "command": " ".join(cmd),
        "samples": int(len(y)),
        "noise": args.noise,
        "scan_wall_s": round(wall, 1),
        "timings_s": summary["timings_s"],
        "precision": round(m["precision"], 4),
        "recall": round(m["recall"], 4),
        "f1": round(m["f1"], 4),
        "auroc": round(auroc(df["issue_score"].to_numpy(), truth), 4),
        "estimated_noise_rate": summary["estimated_noise_rate"],
        "teacher_accuracy_vs_true": round(
            float(
                (
                    np.array(summary["class_names"])[np.stack(df["teacher_probs"]).argmax(1)] == np.array(CLASSES)[y]
                ).mean()
            ),
            4,
        ),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
