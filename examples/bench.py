"""`make bench`: the benchmark matrix; prints a table and writes docs/benchmarks.md and .json.

Fashion-MNIST (../shared/data/fashion-mnist.npz, 20,000-image stratified subset written as PNGs)
under symmetric, asymmetric and instance-dependent noise, the published CIFAR-10
probabilities (../shared/data/cifar10s-pred-probs), and small image-set variants (the
generalisation matrix: scikit-learn's digits plain, tinted RGB, inverted, binarised, resized to 16 px, 3
classes, long-tailed, and a long-tailed Fashion-MNIST subset; builders from
examples/teacher_matrix.py), each through the real scan + refine, with cleanlab's variants on the
same teacher outputs in the same run. CPU only.

    .venv/bin/python examples/bench.py [--rows sym20,sym40,digits-sym20,...] [--repeats 1] [--work /tmp/labelfix-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The shared benchmark data (never committed): ../shared/data beside the repository, or
# $LABELFIX_DATA, or --data.
SHARED = Path(os.environ.get("LABELFIX_DATA", ROOT.parent / "shared" / "data"))
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# name: (noise kind, rate, flag F1 target, refined accuracy target); None = report only
FMNIST_ROWS = {
    "sym20": ("symmetric", 0.2, 0.93, 0.91),
    "sym40": ("symmetric", 0.4, 0.92, 0.90),
    "sym60": ("symmetric", 0.6, 0.85, 0.85),
    "asym20": ("asymmetric", 0.2, 0.88, 0.90),
    "asym40": ("asymmetric", 0.4, None, None),
    "inst20": ("instance", 0.2, 0.85, 0.89),
    "inst40": ("instance", 0.4, None, None),
}
CIFAR_ROWS = {"cifar-resnet18": ("resnet18", 0.942), "cifar-swin": ("swin", 0.987)}
# Image-set variants: name: (image set, noise kind, rate). Report only: F1 next to the
# best cleanlab variant; refined accuracy against the floor max(given accuracy, teacher accuracy);
# at 0% noise the flagged share against the teacher's held-out error (and <= 3% on digits).
# Each is a few hundred to ~2,000 small images, well under 2 minutes on 2 cores.
IMAGE_ROWS = {
    "digits-sym0": ("digits", "symmetric", 0.0),
    "digits-sym20": ("digits", "symmetric", 0.2),
    "digits-sym40": ("digits", "symmetric", 0.4),
    "digits-sym60": ("digits", "symmetric", 0.6),
    "digits-pair30": ("digits", "asymmetric", 0.3),
    "digits-rgb30": ("digits-rgb", "symmetric", 0.3),
    "digits-inverted30": ("digits-inverted", "symmetric", 0.3),
    "digits-binary30": ("digits-binary", "symmetric", 0.3),
    "digits-16px30": ("digits-16px", "symmetric", 0.3),
    "digits-3class30": ("digits-3class", "symmetric", 0.3),
    "digits-longtail30": ("digits-longtail", "symmetric", 0.3),
    "fmnist-longtail30": ("fmnist-longtail", "symmetric", 0.3),
}
IMAGE_SETS = {
    "digits": "sklearn digits, 1,797 x 8x8 gray, 10 classes",
    "digits-rgb": "digits, each image tinted with a random foreground and background colour (RGB)",
    "digits-inverted": "digits, 255 - pixel",
    "digits-binary": "digits, thresholded at 128 to 0 / 255",
    "digits-16px": "digits, bilinear resize to 16x16 (32 px took ~300 s a row on one core: over the make bench budget)",
    "digits-3class": "digits 3, 5 and 8 only (~540 images)",
    "digits-longtail": "digits, class k keeps 170 * 10^(-k/9) images (imbalance 10, ~690 images)",
    "fmnist-longtail": "Fashion-MNIST, class k keeps 300 * 20^(-k/9) images (imbalance 20, ~1,020 images; ~2,040 took ~360 s a row on one core)",
}
DIGIT_CLASSES = [str(k) for k in range(10)]
DIGITS_3CLASS = (3, 5, 8)


def _teacher_matrix():
    """examples/teacher_matrix.py (its image-set builders), imported without letting its
    OMP_NUM_THREADS=1 default change this process's thread count."""
    import torch

    threads, had = torch.get_num_threads(), "OMP_NUM_THREADS" in os.environ
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import teacher_matrix
    finally:
        sys.path.pop(0)
    if not had:
        os.environ.pop("OMP_NUM_THREADS", None)
    torch.set_num_threads(threads)
    teacher_matrix.data_dir = lambda: SHARED  # honour --data
    return teacher_matrix


def build_image_set(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (N, H, W, C) uint8, labels 0..C-1, class names) of an IMAGE_SETS entry."""
    tm = _teacher_matrix()
    x, y = tm.digits()
    if name == "digits":
        return x, y, DIGIT_CLASSES
    if name == "digits-rgb":
        return tm._tint(x, seed), y, DIGIT_CLASSES
    if name == "digits-inverted":
        return 255 - x, y, DIGIT_CLASSES
    if name == "digits-binary":
        return np.where(x > 127, 255, 0).astype(np.uint8), y, DIGIT_CLASSES
    if name == "digits-16px":
        return tm._resize(x, 16), y, DIGIT_CLASSES
    if name == "digits-3class":
        keep = np.isin(y, DIGITS_3CLASS)
        remap = {k: i for i, k in enumerate(DIGITS_3CLASS)}
        return x[keep], np.array([remap[v] for v in y[keep]], dtype=np.int64), [str(k) for k in DIGITS_3CLASS]
    if name == "digits-longtail":
        idx = tm._stratified(y, {k: int(round(170 * 10 ** (-k / 9))) for k in range(10)}, seed)
        return x[idx], y[idx], DIGIT_CLASSES
    if name == "fmnist-longtail":
        x, y = tm.build("fmnist-longtail", 1500, seed)
        return x, y, FASHION
    raise KeyError(name)


def machine() -> str:
    from labelfix.commands.bench import machine_description

    return machine_description()


def versions() -> str:
    import cleanlab
    import faiss
    import torch

    from labelfix import __version__

    return f"labelfix {__version__}, torch {torch.__version__}, faiss {faiss.__version__}, cleanlab {cleanlab.__version__}, Python {platform.python_version()}"


def median_row(rows: list[dict]) -> dict:
    """Median of every numeric leaf across repeats (structure of the first)."""

    def merge(vals):
        if isinstance(vals[0], dict):
            return {k: merge([v[k] for v in vals]) for k in vals[0]}
        if isinstance(vals[0], (int, float)) and not isinstance(vals[0], bool) and all(v is not None for v in vals):
            return statistics.median(vals)
        return vals[0]

    out = merge(rows)
    out["repeats"] = len(rows)
    return out


def run_matrix(names: list[str], repeats: int, work: Path, reuse: bool = False, on_row=None) -> dict:
    from labelfix.commands.bench import bench_images, bench_pred_probs, load_npz
    from labelfix.config import ScanConfig
    from labelfix.core.noise import FASHION_MNIST_PAIRS

    results = {}
    images = labels = None
    for name in names:
        reps = []
        for r in range(repeats):
            done = work / f"{name}-r{r}" / "bench.json"
            if reuse and done.is_file():
                reps.append(json.loads(done.read_text(), parse_constant=lambda c: None))  # old rows held NaN
                continue
            if name in FMNIST_ROWS:
                if images is None:
                    images, labels = load_npz(SHARED / "fashion-mnist.npz", 20_000, 0)
                kind, rate, _, _ = FMNIST_ROWS[name]
                row = bench_images(
                    images,
                    labels,
                    FASHION,
                    kind,
                    rate,
                    work / f"{name}-r{r}",
                    ScanConfig(seed=r),
                    FASHION_MNIST_PAIRS,
                    True,
                    image_dir=work / "fmnist-images",
                )
            elif name in IMAGE_ROWS:
                image_set, kind, rate = IMAGE_ROWS[name]
                x, y, classes = build_image_set(image_set, r)
                # plain digits PNGs are the same for every row and seed; the others depend on the seed
                shared = work / "digits-images" if image_set == "digits" else None
                # asymmetric: Fashion-MNIST's pairs there, else the pair flip k -> k + 1
                pairs = FASHION_MNIST_PAIRS if classes == FASHION else None
                row = bench_images(
                    x,
                    y,
                    classes,
                    kind,
                    rate,
                    work / f"{name}-r{r}",
                    ScanConfig(seed=r),
                    pairs,
                    True,
                    image_dir=shared,
                    record_weak_teacher=True,
                )
                row["image_set"] = image_set
            else:
                model, _ = CIFAR_ROWS[name]
                d = SHARED / "cifar10s-pred-probs"
                row = bench_pred_probs(
                    d / f"pred_probs_{model}.npy",
                    np.load(d / "noisy_labels.npy"),
                    np.load(d / "true_labels.npy"),
                    work / f"{name}-r{r}",
                    cfg=ScanConfig(seed=r),
                )
            reps.append(row)
        scored = [rp for rp in reps if not rp.get("weak_teacher")]
        results[name] = median_row(scored or reps)
        if scored and len(scored) < len(reps):
            results[name]["weak_teacher_repeats"] = len(reps) - len(scored)
        # from the stages, so that a row taken with --reuse keeps its measured time
        results[name]["row_seconds"] = round(row_seconds(results[name]), 1)
        r = results[name]
        if r.get("weak_teacher"):
            print(f"{name}: {r['outcome']}: {r['message']}, {r['row_seconds']:.0f}s", flush=True)
        else:
            print(
                f"{name}: labelfix F1 {r['labelfix flags']['f1']:.4f}, best cleanlab "
                f"{r.get('best_cleanlab_f1') or float('nan'):.4f}, refined acc {r['refined_accuracy']:.4f}, "
                f"teacher acc {r['teacher_accuracy']:.4f}, flagged {r['labelfix flags']['flagged'] / r['samples']:.3f}, "
                f"{r['row_seconds']:.0f}s",
                flush=True,
            )
        if on_row is not None:
            on_row(results)
    return results


def row_seconds(r: dict) -> float:
    """Measured time of one row from its stages (also right for rows taken with --reuse)."""
    cl = sum(v.get("seconds", 0.0) for v in r.get("cleanlab", {}).values())
    return float(r.get("png_write_s", 0.0) + r["scan_wall_s"] + r["seconds"].get("refine", 0.0) + cl)


def fmt(v, target=None) -> str:
    if v is None or v != v:  # None or NaN
        return "-"
    s = f"{v:.3f}"
    if target is not None:
        s += " ✓" if v >= target else f" ✗ (target {target})"
    return s


def markdown(results: dict, command: str, total_s: float, repeats: int) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`examples/bench.py`); do not edit by hand.",
        "",
        f"- command: `{command}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {machine()} (CPU only)",
        f"- versions: {versions()}",
        f"- repeats per row: {repeats} (medians when more than one)",
        f"- total time: {total_s / 60:.1f} min (sum of the rows' measured stages: PNG writing, scan, refine, cleanlab)",
        "",
        "Flag F1 is against the injected (or, for CIFAR-10, the published) truth. cleanlab runs on labelfix's own "
        "out-of-sample teacher probabilities (`find_label_issues`, default `prune_by_noise_rate` and "
        "`predicted_neq_given`) and embeddings (`Datalab` with `features=`), in the same run. Ratio = labelfix F1 / best "
        "cleanlab F1 (target >= 1.08 on Fashion-MNIST rows; >= 1.00 on CIFAR-10). `row s` = PNG writing + scan + "
        "refine + cleanlab (target: under 360 s for a Fashion-MNIST row).",
        "",
        "| row | noise | actual / est. rate | labelfix P / R | labelfix F1 | best cleanlab F1 (variant) | ratio | AUROC | refined acc | teacher acc | relabels (precision) | ambiguity wrong/right | scan s | row s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name in IMAGE_ROWS:
            lines.append(image_row(name, r))
            continue
        f1_t = FMNIST_ROWS[name][2] if name in FMNIST_ROWS else CIFAR_ROWS[name][1]
        acc_t = FMNIST_ROWS[name][3] if name in FMNIST_ROWS else None
        cl = {k: v for k, v in r.get("cleanlab", {}).items() if "f1" in v}
        best_name = max(cl, key=lambda k: cl[k]["f1"]) if cl else "-"
        lf = r["labelfix flags"]
        noise = r["noise"] if r["rate"] is None else f"{r['noise']} {r['rate']:.0%}"
        lines.append(
            f"| {name} | {noise} | {rates(r)} | {lf['precision']:.3f} / {lf['recall']:.3f} | {fmt(lf['f1'], f1_t)} | "
            f"{fmt(r.get('best_cleanlab_f1'))} ({best_name.replace('cleanlab ', '')}) | {fmt(r.get('f1_ratio_vs_best_cleanlab'))} | "
            f"{fmt(lf['auroc'])} | {fmt(r['refined_accuracy'], acc_t)} | {fmt(r['teacher_accuracy'])} | {relabels(r)} | "
            f"{r['ambiguity_wrong_over_right']:.2f} | {r['scan_wall_s']:.0f} | {row_seconds(r):.0f} |"
        )
    image_names = [n for n in results if n in IMAGE_ROWS]
    if image_names:
        lines += [
            "",
            "Image-set variants (`digits-*`, `fmnist-longtail30`; the generalisation matrix, report only): "
            "the refined accuracy is checked against the floor max(given accuracy, teacher accuracy) (✓ when at or "
            "above it); rows with 0% noise have no F1, so their F1 cell compares labelfix's flagged share with the "
            "teacher's held-out error rate (1 - teacher acc; ✓ when the share is at most that, and at most 3% on "
            "digits) and the cleanlab cell gives the smallest flagged share of its variants. `asymmetric` on digits "
            "is the pair flip k -> k+1. A scan that stops with the weak-teacher error (exit 5) is recorded as the "
            "row's outcome. The image sets:",
            "",
        ]
        for s in dict.fromkeys(IMAGE_ROWS[n][0] for n in image_names):
            samples = next(results[n]["samples"] for n in image_names if IMAGE_ROWS[n][0] == s)
            lines.append(f"- `{s}` ({samples} images): {IMAGE_SETS[s]}")
    lines += ["", "## All cleanlab variants", "", "| row | variant | P | R | F1 | AUROC |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        for k, v in r.get("cleanlab", {}).items():
            if "f1" in v:
                lines.append(
                    f"| {name} | {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {fmt(v['auroc'])} |"
                )
    matrix = ROOT / "docs" / "matrix.md"  # written by examples/matrix.py, which make bench runs first
    if matrix.is_file():
        lines += [
            "",
            "## The no-images generalisation matrix (docs/matrix.md)",
            "",
            matrix.read_text().strip().replace("\n# ", "\n### ").removeprefix("# "),
        ]
    ablation = ROOT / "docs" / "ablation.md"  # written by examples/ablation.py, which make bench runs first
    if ablation.is_file():
        lines += ["", ablation.read_text().strip().replace("\n# ", "\n### ").replace("# ", "## ", 1)]
    for name, tag in (("benchmarks-scale.md", "scale"), ("benchmarks-images.md", "images")):
        part = ROOT / "docs" / name  # written by examples/bench_scale.py and examples/bench_images.py
        if part.is_file():
            body = part.read_text().strip().replace("\n# ", "\n## ")
            lines += ["", f"<!-- {tag}:start -->", body.removeprefix("# ").removeprefix("## "), f"<!-- {tag}:end -->"]
    notes = ROOT / "docs" / "experiments.md"
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


def rates(r: dict) -> str:
    est = r.get("estimated_noise_rate")
    return f"{r['actual_noise_rate']:.3f} / " + ("-" if est is None else f"{est:.3f}")


def relabels(r: dict) -> str:
    """refine's relabels and the share that are right (target >= 0.95; ✗ below)."""
    if r.get("relabels") is None:
        return "-"
    p = r.get("relabel_precision")
    return f"{r['relabels']} ({fmt(p)}{' ✗' if p is not None and p < 0.95 else ''})"


def image_row(name: str, r: dict) -> str:
    """One IMAGE_ROWS line of the main table (same columns as the others)."""
    image_set, kind, rate = IMAGE_ROWS[name]
    noise = f"{kind} {rate:.0%} ({image_set})"
    if r.get("weak_teacher"):
        return (
            f"| {name} | {noise} | {r['actual_noise_rate']:.3f} | - | {r['outcome']} | - | - | - | - | - | - | - | "
            f"{r['scan_wall_s']:.0f} | {row_seconds(r):.0f} |"
        )
    lf = r["labelfix flags"]
    cl = {k: v for k, v in r.get("cleanlab", {}).items() if "f1" in v}
    floor = max(r["given_accuracy"], r["teacher_accuracy"])
    refined = f"{r['refined_accuracy']:.3f} {'✓' if r['refined_accuracy'] >= floor else '✗'} (floor {floor:.3f})"
    if r["actual_noise_rate"] == 0:
        share, err = lf["flagged"] / r["samples"], 1 - r["teacher_accuracy"]
        limit = min(err, 0.03) if image_set.startswith("digits") else err
        f1 = f"flagged {share:.3f} ({lf['flagged']}) {'✓' if share <= limit + 1e-12 else '✗'} (teacher err {err:.3f})"
        low = min(cl, key=lambda k: cl[k]["flagged"]) if cl else None
        best = f"flagged {cl[low]['flagged'] / r['samples']:.3f} ({low.replace('cleanlab ', '')})" if low else "-"
        pr, ratio = "-", "-"
    else:
        best_name = max(cl, key=lambda k: cl[k]["f1"]) if cl else "-"
        f1 = fmt(lf["f1"])
        best = f"{fmt(r.get('best_cleanlab_f1'))} ({best_name.replace('cleanlab ', '')})"
        pr, ratio = f"{lf['precision']:.3f} / {lf['recall']:.3f}", fmt(r.get("f1_ratio_vs_best_cleanlab"))
    amb = r["ambiguity_wrong_over_right"]
    return (
        f"| {name} | {noise} | {rates(r)} | {pr} | {f1} | {best} | {ratio} | {fmt(lf['auroc'])} | "
        f"{refined} | {fmt(r['teacher_accuracy'])} | {relabels(r)} | {'-' if amb is None or amb != amb else f'{amb:.2f}'} | {r['scan_wall_s']:.0f} | "
        f"{row_seconds(r):.0f} |"
    )


def main() -> None:
    global SHARED
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join([*FMNIST_ROWS, *CIFAR_ROWS, *IMAGE_ROWS]))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/labelfix-bench"))
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--reuse", action="store_true", help="take rows whose bench.json already exists in --work")
    ap.add_argument("--data", type=Path, default=SHARED, help="folder with fashion-mnist.npz and cifar10s-pred-probs/")
    args = ap.parse_args()
    SHARED = args.data
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in FMNIST_ROWS and n not in CIFAR_ROWS and n not in IMAGE_ROWS]
    if unknown:
        sys.exit(f"unknown rows: {unknown}")
    needed = {
        "cifar10s-pred-probs" if n in CIFAR_ROWS else "fashion-mnist.npz"
        for n in names
        if not (n in IMAGE_ROWS and IMAGE_ROWS[n][0].startswith("digits"))
    }
    missing = sorted(n for n in needed if not (SHARED / n).exists())
    if missing:
        sys.exit(f"{SHARED}: missing {', '.join(missing)} (pass --data DIR or set LABELFIX_DATA)")
    from labelfix.files.outputs import atomic_write_bytes, atomic_write_json

    command = (
        "make bench"
        if len(names) == len(FMNIST_ROWS) + len(CIFAR_ROWS) + len(IMAGE_ROWS)
        else " ".join(["python", *sys.argv])
    )
    args.docs.mkdir(parents=True, exist_ok=True)

    def write(results: dict) -> str:
        """Called after every row, so an interrupted run still leaves a true (partial) table."""
        total = sum(row_seconds(r) for r in results.values())
        done = f" ({len(results)} of {len(names)} rows done)" if len(results) < len(names) else ""
        md = markdown(results, command + done, total, args.repeats)
        atomic_write_bytes(args.docs / "benchmarks.md", md.encode())
        atomic_write_json(
            args.docs / "benchmarks.json", {"command": command, "total_s": round(total, 1), "rows": results}
        )
        return md

    results = run_matrix(names, args.repeats, args.work, args.reuse, on_row=write)
    md = write(results)
    if args.docs.resolve() == (ROOT / "docs").resolve():
        # a run of some rows replaces docs/benchmarks.md too, so the README quotes what it says
        # (its command line names the rows)
        quote_in_readme(md)
    print(md)


def quote_in_readme(md: str) -> None:
    """Copy the main table of docs/benchmarks.md into README.md between the bench markers, so
    the README's numbers always come from the generated file."""
    from labelfix.files.outputs import atomic_write_bytes

    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        return
    lines = md.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("| row | noise"))
    table = []
    for ln in lines[first:]:
        if not ln.startswith("|"):
            break
        table.append(ln)
    meta = [ln for ln in lines[:first] if ln.startswith(("- command:", "- date:", "- machine:", "- total time:"))]
    block = "\n".join([start, "Quoted from `docs/benchmarks.md` by `make bench`:", "", *meta, "", *table, end])
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_bytes(readme, (head + block + tail).encode())


if __name__ == "__main__":
    main()
