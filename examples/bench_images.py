"""The image path at scale: images/s of decoding a folder of image files into the
on-disk array, of training the auto teacher from that array, and of inference from it, on CPU.

    .venv/bin/python examples/bench_images.py            # 100,000 28 px PNGs (15-20 min on 2 cores)
    .venv/bin/python examples/bench_images.py --quick    # a 600-image smoke run (under a minute)

The images are Fashion-MNIST (/work/shared/data/fashion-mnist.npz, or --npz; images and labels)
written as PNG files under --work, once (reused while present); past its 70,000 images they
repeat mirrored, so every file (and digest) is distinct. Measured, each the median of --repeats:

* decode: `files.images.decode_images` with worker processes, with threads (the path before
  the earlier path) and, once, in this process; plus the start-up cost of the workers (16 files).
* train: `models.train.fit` steps of the auto teacher (its net, batch size, learning rate, no
  augmentation as at 100k) on --train-steps batches of rows drawn from the whole array, with the
  prefetcher reading the next batches in a background thread and without it (`Batches.ahead` 0).
* infer: `models.batches.infer` of the teacher's features and probabilities on --infer-rows
  rows drawn from the whole array, with and without the prefetcher.

Training and inference are timed on a bounded number of rows (an epoch of 100k images takes
~15 min on 2 cores); images/s is what scales.

The table goes to stdout and to docs/benchmarks-images.md (or --out), with the machine (lscpu's
model name, cores), torch's threads and the load average before and after (another job sharing
the cores shows there; --note adds a line).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NPZ = Path("/work/shared/data/fashion-mnist.npz")


def write_pngs(args) -> int:
    """Worker: PNG files for rows start..stop (row i is image i mod 70k, mirrored past it)."""
    npz, folder, start, stop = args
    from PIL import Image

    images = np.load(npz)["images"]
    for i in range(start, stop):
        path = folder / f"{i:06d}.png"
        if not path.exists():
            a = images[i % len(images)]
            Image.fromarray(a if i < len(images) else a[:, ::-1]).save(path)
    return stop - start


def compose(npz: Path, work: Path, n: int, workers: int) -> tuple[list[Path], np.ndarray, str]:
    """(files, labels, how): n PNGs under work/png-n, written in parallel once."""
    folder = work / f"png-{n}"
    done = folder / "done"
    t0 = time.perf_counter()
    how = "the PNGs were reused from an earlier run"
    if not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        step = 2_000
        jobs = [(npz, folder, s, min(n, s + step)) for s in range(0, n, step)]
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(write_pngs, jobs):
                pass
        done.write_text(str(n))
        how = f"writing the PNGs took {time.perf_counter() - t0:.0f} s"
    labels = np.load(npz)["labels"].astype(np.int64)
    y = labels[np.arange(n) % len(labels)]
    return [folder / f"{i:06d}.png" for i in range(n)], y, how


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """(median seconds, all seconds) of `repeats` calls of fn()."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def bench_decode(files, work: Path, workers: int, repeats: int) -> tuple[list[dict], np.ndarray]:
    """Rows of the decode table, and the decoded array (a memmap)."""
    from labelfix.files.images import PROCESS_MIN_FILES, decode_images

    rows, arrays = [], {}
    for mode, w, reps in (("processes", workers, repeats), ("threads", workers, repeats), ("inline", 1, 1)):

        def run(mode=mode, w=w):
            arrays[mode] = decode_images(files, work / f"images.{mode}.u8", workers=w, parallel=mode)

        med, times = timed(run, reps)
        rows.append(
            {"what": f"decode, {mode} ({w} worker{'s' if w > 1 else ''})", "n": len(files), "s": med, "times": times}
        )
    digests = {a.images_sha256 for a in arrays.values()}
    if len(digests) != 1 or len({a.path.read_bytes() for a in arrays.values()}) != 1:
        raise SystemExit(f"decode modes disagree: {digests}")
    few = files[:16]
    start, _ = timed(lambda: decode_images(few, work / "few.u8", workers=workers, parallel="processes"), 5)
    inline, _ = timed(lambda: decode_images(few, work / "few.u8", workers=1), 5)
    rows.append({"what": "worker start-up (16 files, processes minus in-process)", "s": start - inline})
    per_file = {r["what"].split(",")[1].split()[0]: r["s"] / r["n"] for r in rows if r.get("n")}
    gain = per_file["threads"] - per_file["processes"]  # seconds a file saved by processes
    even = f"{(start - inline) / gain:,.0f} files" if gain > 0 else "none (processes were not faster)"
    rows.append({"what": f"(break-even against threads: {even}; auto uses processes from {PROCESS_MIN_FILES:,})"})
    for mode in ("threads", "inline"):
        arrays[mode].path.unlink()
    return rows, arrays["processes"].open()


def train_and_infer(images, y, train_idx, infer_idx, ahead: int) -> dict:
    """{"train": (seconds, seconds in batch reads), "infer": (...)}: the auto teacher's net
    trained on `train_idx` for one epoch, then its inference on `infer_idx`, reading `ahead`
    batches ahead. Batch reads are timed where they run (the loop, or the prefetch thread)."""
    import torch

    from labelfix.config import TeacherConfig
    from labelfix.models.batches import infer
    from labelfix.models.nets import build_small_resnet, features_and_probs
    from labelfix.models.teacher import teacher_batches
    from labelfix.models.train import HardLabelLoss, TrainPlan, fit
    from labelfix.runtime import resolve_runtime

    cfg, rt = TeacherConfig(), resolve_runtime("cpu", "fp32")
    batches = teacher_batches(images, rt.device)
    batches.ahead = ahead
    reads, plain = [], batches.get

    def timed_get(rows):
        t = time.perf_counter()
        x = plain(rows)
        reads.append(time.perf_counter() - t)
        return x

    batches.get = timed_get  # Batches.stream reads through it
    torch.manual_seed(0)
    model = build_small_resnet(images.shape[3], 10, cfg.width)
    objective = HardLabelLoss(y, 10, rt.device, lambda e: "ce", cfg)
    plan = TrainPlan(epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, seed=0)
    t = time.perf_counter()
    fit(model, batches, train_idx, objective, plan, rt)
    out = {"train": (time.perf_counter() - t, sum(reads))}
    reads.clear()
    t = time.perf_counter()
    infer(lambda x: features_and_probs(model, x), batches, infer_idx, cfg.batch_size * 2)
    out["infer"] = (time.perf_counter() - t, sum(reads))
    return out


def bench_model(images, y, steps: int, infer_rows: int, repeats: int) -> list[dict]:
    """Rows of the train and infer table, with the prefetcher (ahead 2) and without (0), the
    two alternating (after an untimed warm-up) so load changes hit both."""
    import torch

    from labelfix.config import TeacherConfig

    bs, width = TeacherConfig().batch_size, TeacherConfig().width
    n = len(y)
    rng = np.random.default_rng(0)
    train_idx = np.sort(rng.choice(n, size=min(n, steps * bs), replace=False))
    infer_idx = np.sort(rng.choice(n, size=min(n, infer_rows), replace=False))
    few = np.arange(min(n, 2 * bs))
    train_and_infer(images, y, few, few, 2)  # warm-up: torch's first calls
    runs = {2: [], 0: []}
    for r in range(repeats):
        for ahead in (2, 0) if r % 2 == 0 else (0, 2):
            runs[ahead].append(train_and_infer(images, y, train_idx, infer_idx, ahead))
    seen = max(1, len(train_idx) // bs) * bs
    rows = []
    for what, key, count in (("train steps", "train", seen), ("infer", "infer", len(infer_idx))):
        for ahead in (2, 0):
            t = [run[key][0] for run in runs[ahead]]
            reads = statistics.median(run[key][1] for run in runs[ahead])
            rows.append({"what": f"{what}, prefetch {ahead}", "n": count, "s": statistics.median(t), "times": t})
            rows[-1]["reads"] = reads
    rows.append({"what": f"(torch threads {torch.get_num_threads()}, batch {bs}, width {width}, fp32)"})
    return rows


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def command() -> str:
    """This run's command line, --note's text left out."""
    argv = sys.argv[1:]
    if "--note" in argv:
        i = argv.index("--note")
        argv = argv[:i] + ["--note", "..."] + argv[i + 2 :]
    return " ".join(["python", "examples/bench_images.py", *argv])


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| what | images | seconds (median) | images/s | of which batch reads (s) | all runs (s) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "s" not in r:
            lines.append(f"| {r['what']} | | | | | |")
            continue
        n = r.get("n")
        count, rate = (f"{n:,}", f"{n / r['s']:,.0f}") if n else ("", "")
        reads = f"{r['reads']:.2f}" if "reads" in r else ""
        runs = ", ".join(f"{t:.2f}" for t in r.get("times", []))
        lines.append(f"| {r['what']} | {count} | {r['s']:.2f} | {rate} | {reads} | {runs} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="images (default 100,000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 600 images, 1 repeat, 4 steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=20, help="training steps timed per run")
    ap.add_argument("--infer-rows", type=int, default=10_000, help="rows inferred per run")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding workers")
    ap.add_argument("--npz", type=Path, default=NPZ, help="Fashion-MNIST (keys images, labels)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/labelfix-bench-images"), help="PNGs and arrays")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-images.md")
    ap.add_argument("--note", default="", help="a line for the doc (e.g. what else ran)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats, args.train_steps, args.infer_rows = 600, 1, 2, 600
        args.out = args.work / "benchmarks-images-quick.md"
    load0 = os.getloadavg()[0]
    files, y, composed = compose(args.npz, args.work, args.n, args.workers)
    rows, images = bench_decode(files, args.work, args.workers, args.repeats)
    rows += bench_model(images, y, args.train_steps, args.infer_rows, args.repeats)
    load1 = os.getloadavg()[0]
    lines = [
        "# The image path at scale: images/s on CPU",
        "",
        f"`{command()}`: {args.n:,} Fashion-MNIST PNGs "
        f"(28 x 28 gray), {args.workers} decoding workers, median of {args.repeats}; "
        f"machine: {machine()}; load average {load0:.1f} before, {load1:.1f} after; "
        f"{composed}.",
        *(["", args.note] if args.note else []),
        "",
        *table(rows),
        "",
        "Decode: probe and decode passes together, into the on-disk array (all three give the same bytes "
        "and images_sha256, checked). Worker start-up: what `parallel='processes'` costs over in-process "
        "decoding of 16 files; the break-even is that cost over the time a file saves against threads. "
        "Batch reads: seconds in `Batches.get` (memmap read and normalisation), in the loop without the "
        "prefetcher, in its background thread with it: the most that reading ahead can hide. Train and "
        "infer read from the array decoded above (in the page cache).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
