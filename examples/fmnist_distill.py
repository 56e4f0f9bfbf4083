"""Acceptance run for `refine`, `distill` and `predict` on Fashion-MNIST (CPU).

Uses the scan run of examples/fmnist_scan.py (20,000 training PNGs, 40% symmetric noise; run
it first), writes 10,000 clean test PNGs from the images not in the training subset, then:
refine (teacher only), distill --student ARCH (which refines again with the student's view),
predict on the test folder; and, in the same process with the same architecture, epochs and
training loop, two baseline students trained on the noisy labels and on the true labels.

    .venv/bin/python examples/fmnist_distill.py [--epochs 8] [--student resnet18] [--augment on|off]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from fmnist_scan import CLASSES, DATA, stratified_subset  # noqa: E402

from labelfix.files.inputs import decode_images  # noqa: E402
from labelfix.models.nets import build_student  # noqa: E402
from labelfix.models.student import DistillConfig, student_batches, student_outputs, train_classifier  # noqa: E402


def refined_accuracy(run: Path, truth: np.ndarray) -> dict:
    df = pd.read_parquet(run / "refined.parquet")
    names = np.array(json.loads((run / "summary.json").read_text())["class_names"])
    ref = names[np.stack(df["soft_label"].to_numpy()).argmax(1)]
    given = df["given_label"].to_numpy()
    wrong = ref != truth
    det_flags, det_truth = ref != given, given != truth
    tp = (det_flags & det_truth).sum()
    p, r = tp / max(det_flags.sum(), 1), tp / max(det_truth.sum(), 1)
    amb = df["ambiguity"].to_numpy()
    return {
        "refined_accuracy": round(float((~wrong).mean()), 4),
        "given_accuracy": round(float((given == truth).mean()), 4),
        "detector_f1": round(float(2 * p * r / (p + r)), 4),
        "ambiguity_wrong_over_right": round(float(amb[wrong].mean() / amb[~wrong].mean()), 2),
        "actions": df["action"].value_counts().to_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/lf-fmnist/fmnist-20000-sym40-s0"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--augment", default="on", choices=["on", "off"], help="distill --augment, used for all three students"
    )
    ap.add_argument(
        "--distill-rounds",
        type=int,
        default=1,
        help="distill --rounds: students trained in turn, each on the previous mutual round's labels",
    )
    ap.add_argument("--curves", action="store_true", help="also log the baselines' test accuracy after every epoch")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    run = args.work / "run"
    if not (run / "scan.parquet").is_file():
        sys.exit(f"{run}: run examples/fmnist_scan.py first")
    exe = str(Path(sys.executable).parent / "labelfix")
    truth = pd.read_csv(args.work / "truth.csv")["label"].to_numpy()
    noisy = pd.read_csv(args.work / "labels.csv")["label"].to_numpy()

    # 10,000 clean test images that are not in the training subset.
    with np.load(DATA) as d:  # read each array once: indexing an NpzFile re-reads it
        all_images, all_labels = d["images"], d["labels"]
    train_idx = stratified_subset(all_labels, 20_000, args.seed)
    rest = np.setdiff1d(np.arange(len(all_labels)), train_idx)
    rng = np.random.default_rng([args.seed, 99])
    test_idx = np.sort(
        np.concatenate([rng.choice(rest[all_labels[rest] == k], 1000, replace=False) for k in range(10)])
    )
    test_dir = args.work / "test"
    (test_dir / "images").mkdir(parents=True, exist_ok=True)
    names = [f"t{i:05d}.png" for i in range(len(test_idx))]
    for name, i in zip(names, test_idx):
        Image.fromarray(all_images[i], "L").save(test_dir / "images" / name)
    test_true = np.array(CLASSES)[all_labels[test_idx]]
    pd.DataFrame({"path": names, "label": test_true}).to_csv(test_dir / "labels.csv", index=False)

    t0 = time.perf_counter()
    subprocess.run([exe, "refine", str(run), "--json"], check=True, capture_output=True)
    before = refined_accuracy(run, truth)
    t1 = time.perf_counter()
    cmd = [
        exe,
        "distill",
        str(run),
        "--student",
        args.student,
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--augment",
        args.augment,
        "--rounds",
        str(args.distill_rounds),
        "--json",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    distill_s = time.perf_counter() - t1
    after = refined_accuracy(run, truth)
    distill_report = json.loads((run / "distill.json").read_text())
    pred = subprocess.run(
        [
            exe,
            "predict",
            str(test_dir / "images"),
            "--model",
            str(run / "student.pt"),
            "--labels",
            str(test_dir / "labels.csv"),
            "--out",
            str(args.work / "pred"),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    cleaned_acc = json.loads(pred.stdout)["accuracy"]

    # Baselines: same architecture, epochs and loop; noisy labels, then true labels; no KD.
    summary = json.loads((run / "summary.json").read_text())
    class_names = summary["class_names"]
    index = {c: j for j, c in enumerate(class_names)}
    images = np.memmap(
        run / summary["images"]["cache"], dtype=np.uint8, mode="r", shape=tuple(summary["images"]["shape"])
    )
    with tempfile.TemporaryDirectory() as tmp:
        test_arr = decode_images([test_dir / "images" / n for n in names], Path(tmp) / "t.u8", images.shape[1]).open()
        test_y = np.array([index[c] for c in test_true])
        baselines = {}
        cfg = DistillConfig(
            student=args.student, epochs=args.epochs, kd_weight=0.0, augment=args.augment, seed=args.seed
        )
        for label_name, labels in (("noisy", noisy), ("true", truth)):
            t = time.perf_counter()
            y = np.array([index[c] for c in labels])
            import torch

            torch.manual_seed(args.seed)
            model, size, _ = build_student(args.student, len(class_names), images.shape[1])
            batches = student_batches(images, size, "cpu")
            tb = student_batches(test_arr, size, "cpu", batches.mean.flatten().tolist(), batches.std.flatten().tolist())

            def test_accuracy(epoch, m, tb=tb):
                probs, _ = student_outputs(m, tb, np.arange(len(test_y)))
                return {"test_accuracy": round(float((probs.argmax(1) == test_y).mean()), 4)}

            logs = train_classifier(
                model,
                batches,
                np.arange(len(y)),
                np.eye(len(class_names), dtype=np.float32)[y],
                np.ones(len(y), np.float32),
                cfg,
                description=f"baseline-{label_name}",
                on_epoch=test_accuracy if args.curves else None,
            )
            baselines[label_name] = {**test_accuracy(args.epochs, model), "seconds": round(time.perf_counter() - t, 1)}
            if args.curves:
                baselines[label_name]["test_accuracy_per_epoch"] = [e["test_accuracy"] for e in logs]
    result = {
        "data": "Fashion-MNIST, 20,000 train PNGs at 40% symmetric noise, 10,000 clean test PNGs",
        "student": args.student,
        "epochs": args.epochs,
        "augment": args.augment,
        "distill_rounds": args.distill_rounds,
        "refine_teacher_only": before,
        "refine_after_distill_mutual_round": after,
        "distill_heldout_accuracy_vs_refined": distill_report["heldout_accuracy_vs_refined"],
        "test_accuracy": {
            "cleaned (labelfix distill)": cleaned_acc,
            "noisy labels": baselines["noisy"]["test_accuracy"],
            "true labels": baselines["true"]["test_accuracy"],
        },
        "baseline_curves": {k: v.get("test_accuracy_per_epoch") for k, v in baselines.items()} if args.curves else None,
        "seconds": {
            "refine": round(t1 - t0, 1),
            "distill": round(distill_s, 1),
            "baseline_noisy": baselines["noisy"]["seconds"],
            "baseline_true": baselines["true"]["seconds"],
        },
        "distill_command": " ".join(cmd),
    }
    result["seconds"]["whole_run"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    if args.json_out is not None:
        from labelfix.files.outputs import atomic_write_bytes

        atomic_write_bytes(args.json_out, (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    main()
