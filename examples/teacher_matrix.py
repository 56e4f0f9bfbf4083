"""Does the auto teacher learn on any reasonable image set?

For several image sets built from what is available offline (scikit-learn's digits and
../shared/data/fashion-mnist.npz, or $LABELFIX_DATA), injects symmetric label noise and trains
the auto teacher (labelfix.models.teacher.train_auto_teacher, the default TeacherConfig) on the noisy
labels, and the same recipe on the true labels (its ceiling). Reports the teacher's out-of-sample
accuracy against the TRUE labels for both, the gap, the chance level (majority-class share), the
recipe each fold ended with and whether a fold was restarted.

    .venv/bin/python examples/teacher_matrix.py [--quick] [--rows digits,fmnist-rgb] [--noise 0.3]
        [--n 2000] [--device cpu] [--out docs/teacher_matrix.json]

Writes a JSON file and prints a markdown table. Acceptance target: at 30% symmetric
noise, the gap to the ceiling is at most 5 points on every row and no row is near chance.

Cost: the auto teacher trains about 80k sample visits per fold (40 epochs below 4,000 images), so
a row costs two teachers of up to 160k visits each; on one shared CPU core a 600-image 28 px row
took ~7 min, a 1,797-image 8 px row ~3 min, 520 images of 32 px RGB ~9 min. `--n` sets the
Fashion-MNIST subset size (the many-class row takes about n / 26 images a class).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from labelfix.config import TeacherConfig  # noqa: E402
from labelfix.core.noise import inject  # noqa: E402
from labelfix.models.teacher import train_auto_teacher  # noqa: E402
from labelfix.runtime import resolve_runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("LABELFIX_DATA", ROOT.parent / "shared" / "data"))


# ---------------------------------------------------------------------------------------------
# Image sets: (N, H, W, C) uint8 and labels 0..C-1


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, H, W, C) uint8 to (N, size, size, C)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _tint(images: np.ndarray, seed: int) -> np.ndarray:
    """Gray (N, H, W, 1) -> RGB: each image gets a random foreground and background colour."""
    rng = np.random.default_rng([seed, 99])
    n = len(images)
    fg = rng.integers(0, 256, (n, 1, 1, 3)).astype(np.float32)
    bg = rng.integers(0, 256, (n, 1, 1, 3)).astype(np.float32)
    a = images.astype(np.float32) / 255.0
    return (a * fg + (1 - a) * bg).round().clip(0, 255).astype(np.uint8)


def _stratified(labels: np.ndarray, per_class: dict[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 5])
    return np.sort(
        np.concatenate([rng.choice(np.flatnonzero(labels == k), m, replace=False) for k, m in per_class.items()])
    )


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0 * 255).round().astype(np.uint8)[..., None], d.target.astype(np.int64)


_FMNIST: dict = {}


def fmnist_all() -> tuple[np.ndarray, np.ndarray]:
    if not _FMNIST:
        path = data_dir() / "fashion-mnist.npz"
        if not path.is_file():
            sys.exit(f"teacher_matrix: {path}: not found (set LABELFIX_DATA to the folder holding fashion-mnist.npz)")
        d = np.load(path)
        _FMNIST["x"], _FMNIST["y"] = d["images"][..., None], d["labels"].astype(np.int64)
    return _FMNIST["x"], _FMNIST["y"]


def fmnist(n: int, seed: int, classes=tuple(range(10)), counts=None):
    x, y = fmnist_all()
    counts = counts or {k: n // len(classes) for k in classes}
    idx = _stratified(y, counts, seed)
    remap = {k: i for i, k in enumerate(counts)}
    return x[idx], np.array([remap[v] for v in y[idx]], dtype=np.int64)


def many_class_rgb(n: int, seed: int):
    """26 classes at 32 px, each image tinted with random colours: 10 digits, 6 digits turned by
    90 degrees (2..7: none of them looks like another digit when turned) and the 10 Fashion-MNIST
    classes; about n / 26 images per class (digits have ~180 a class)."""
    rng = np.random.default_rng([seed, 26])
    per = max(10, n // 26)
    dx, dy = digits()
    pick = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(dy == k), min(per, int((dy == k).sum())), replace=False) for k in range(10)]
        )
    )
    turn = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(dy == k), min(per, int((dy == k).sum())), replace=False) for k in range(2, 8)]
        )
    )
    fx, fy = fmnist(10 * per, seed)
    x = np.concatenate([_resize(dx[pick], 32), np.rot90(_resize(dx[turn], 32), 1, axes=(1, 2)), _resize(fx, 32)])
    y = np.concatenate([dy[pick], dy[turn] - 2 + 10, fy + 16])
    return _tint(np.ascontiguousarray(x), seed), y


def build(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        return digits()
    if name == "fmnist":
        return fmnist(n, seed)
    if name == "fmnist-rgb":
        x, y = fmnist(n, seed)
        return _tint(x, seed), y
    if name == "fmnist-inverted":
        x, y = fmnist(n, seed)
        return 255 - x, y
    if name == "fmnist-binary":
        x, y = fmnist(n, seed)
        return np.where(x > 127, 255, 0).astype(np.uint8), y
    if name == "fmnist-16px":
        x, y = fmnist(n, seed)
        return _resize(x, 16), y
    if name == "fmnist-32px-rgb":
        x, y = fmnist(n, seed)
        return _tint(_resize(x, 32), seed), y
    if name == "fmnist-2class":  # T-shirt/top vs Shirt: the hardest pair
        return fmnist(n, seed, classes=(0, 6))
    if name == "fmnist-longtail":  # imbalance 20: class k keeps 400 * 20^(-k/9) images
        counts = {k: max(10, int(round(n / 5 * 20 ** (-k / 9)))) for k in range(10)}
        return fmnist(n, seed, counts=counts)
    if name == "many-class-rgb":
        return many_class_rgb(n, seed)
    raise SystemExit(f"teacher_matrix: --rows: unknown row {name!r} (known: {', '.join(ROWS)})")


ROWS = [
    "digits",
    "fmnist",
    "fmnist-rgb",
    "fmnist-inverted",
    "fmnist-binary",
    "fmnist-16px",
    "fmnist-32px-rgb",
    "fmnist-2class",
    "fmnist-longtail",
    "many-class-rgb",
]
QUICK = ["digits", "fmnist-16px", "many-class-rgb"]


# ---------------------------------------------------------------------------------------------


def teacher_accuracy(images, given, true, c, cfg, seed, runtime) -> dict:
    t0 = time.perf_counter()
    out = train_auto_teacher(images, given, c, cfg, seed, runtime=runtime)
    pred = out.probs.argmax(1)
    folds = out.stats["folds"]
    return {
        "acc_true": float((pred == true).mean()),
        "agree_given": float((pred == given).mean()),
        "recipes": sorted({f.get("recipe", "?") for f in folds}),
        "restarts": int(sum(bool(f.get("restarted")) for f in folds)),
        "stalled": int(sum(bool(f.get("stalled")) for f in folds)),
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_per_fold": [f.get("seconds") for f in folds],
        # time spent scoring the learning-curve rows (part of seconds_per_fold)
        "curve_seconds_per_fold": [
            round(sum(a.get("curve_seconds", 0.0) for a in f.get("attempts", [])), 2) for f in folds
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=None, help="comma list of rows (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--n", type=int, default=2000, help="images per Fashion-MNIST row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the clean-label runs")
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="the earlier recipe (GCE from the start, per-data-set normalisation, no restart), for comparison",
    )
    ap.add_argument("--out", type=Path, default=Path("teacher_matrix.json"))
    args = ap.parse_args()
    rows = args.rows.split(",") if args.rows else (QUICK if args.quick else ROWS)
    cfg = TeacherConfig()
    if args.baseline:
        import labelfix.models.teacher

        labelfix.models.teacher.NORMALISE = "data"
        cfg = TeacherConfig(warmup=0.0, restart_on_stall=False)
    runtime = resolve_runtime(args.device, cfg.precision)  # once for every row
    results = []
    for name in rows:
        images, true = build(name, args.n, args.seed)
        c = int(true.max()) + 1
        given = inject("symmetric", true, args.noise, c, args.seed)
        row = {
            "row": name,
            "n": int(len(true)),
            "shape": list(images.shape[1:]),
            "classes": c,
            "chance": round(float(np.bincount(true, minlength=c).max() / len(true)), 4),
            "noise": round(float((given != true).mean()), 4),
        }
        row["noisy"] = teacher_accuracy(images, given, true, c, cfg, args.seed, runtime)
        if not args.no_ceiling:
            row["ceiling"] = teacher_accuracy(images, true, true, c, cfg, args.seed, runtime)
            row["gap"] = round(row["ceiling"]["acc_true"] - row["noisy"]["acc_true"], 4)
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        args.out.write_text(
            json.dumps(
                {
                    "noise": args.noise,
                    "n": args.n,
                    "seed": args.seed,
                    "baseline": args.baseline,
                    "config": cfg.__dict__,
                    "rows": results,
                },
                indent=1,
            )
        )
    recipe = "baseline recipe (--baseline)" if args.baseline else "default TeacherConfig"
    print(f"\nauto teacher, {recipe}, {args.noise:.0%} symmetric noise, device {args.device}, seed {args.seed}\n")
    print(
        "| row | N | shape | C | chance | acc (noisy labels) | ceiling (true labels) | gap | recipes | restarts | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        nz, ce = r["noisy"], r.get("ceiling", {})
        print(
            f"| {r['row']} | {r['n']} | {'x'.join(map(str, r['shape']))} | {r['classes']} | {r['chance']:.3f} | "
            f"{nz['acc_true']:.3f} | {ce.get('acc_true', float('nan')):.3f} | {r.get('gap', float('nan')):+.3f} | "
            f"{', '.join(nz['recipes'])} | {nz['restarts']}+{ce.get('restarts', 0)} | {nz['seconds'] + ce.get('seconds', 0):.0f} |"
        )
    worst = max((r.get("gap", 0.0) for r in results), default=0.0)
    print(f"\nlargest gap to the ceiling: {worst:.3f} (target <= 0.05)")


if __name__ == "__main__":
    main()
