"""Acceptance run for `labelfix scan --pred-probs` (and refine) on published CIFAR-10 probabilities.

Reads ../shared/data/cifar10s-pred-probs (50,000 rows, 20% real-world-like noise), writes a labels
CSV of the noisy labels, runs the real `labelfix scan` and `labelfix refine` commands for each
probability file, and scores the flags against the true labels.

    .venv/bin/python examples/cifar_pred_probs.py [--work /tmp/lf-cifar]
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

from labelfix.core.metrics import auroc, precision_recall_f1

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10s-pred-probs"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/lf-cifar"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    noisy = np.load(DATA / "noisy_labels.npy")
    true = np.load(DATA / "true_labels.npy")
    csv = args.work / "labels.csv"
    pd.DataFrame({"path": [f"img{i:05d}" for i in range(len(noisy))], "label": noisy}).to_csv(csv, index=False)
    exe = str(Path(sys.executable).parent / "labelfix")
    results = []
    for model in ("resnet18", "swin"):
        out = args.work / f"run_{model}"
        cmd = [
            exe,
            "scan",
            "--labels",
            str(csv),
            "--pred-probs",
            str(DATA / f"pred_probs_{model}.npy"),
            "--out",
            str(out),
            "--json",
        ]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"scan failed: {proc.stderr.strip()}")
        subprocess.run([exe, "refine", str(out), "--json"], capture_output=True, check=True)
        df = pd.read_parquet(out / "scan.parquet")
        ref = pd.read_parquet(out / "refined.parquet")
        truth = noisy != true
        m = precision_recall_f1(df["is_issue"].to_numpy(), truth)
        soft = np.stack(ref["soft_label"].to_numpy())
        results.append(
            {
                "model": model,
                "command": " ".join(cmd),
                "scan_wall_s": round(wall, 1),
                "precision": round(m["precision"], 4),
                "recall": round(m["recall"], 4),
                "f1": round(m["f1"], 4),
                "auroc": round(auroc(df["issue_score"].to_numpy(), truth), 4),
                "refined_accuracy": round(float((soft.argmax(1) == true).mean()), 4),
                "given_accuracy": round(float((noisy == true).mean()), 4),
            }
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
