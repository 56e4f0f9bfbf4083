"""The cost model (issue 13): time and peak memory of `labelfix scan --pred-probs --embeddings`
and `labelfix refine` as the number of rows grows, per stage, with the fitted growth exponent;
and cleanlab's Datalab(features=...) label check on one of the same inputs, timed side by side.

    .venv/bin/python examples/bench_scale.py                 # 100k, 300k, 1M rows (C = 10, D = 128)
    .venv/bin/python examples/bench_scale.py --sizes 100000,300000 --classes 10,1000 --dim 256
    .venv/bin/python examples/bench_scale.py --datalab 200000  # also Datalab at 200k x 256

Each run is a separate process under /usr/bin/time -v (peak RSS); stage times come from the run's
summary.json (timings_s) and refine's statistics. The synthetic inputs (clustered embeddings,
probabilities of a weak model, 30% symmetric noise) are written once per size to --work as .npy
memory maps, so generating them never holds more than a chunk. Writes docs/benchmarks-scale.md
and .json (examples/bench.py includes the Markdown in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LABELFIX = [sys.executable, "-m", "labelfix.cli"]
CHUNK = 100_000


def make_inputs(work: Path, n: int, c: int, d: int, noise: float = 0.3, seed: int = 0) -> Path:
    """labels.csv, probs.npy, emb.npy and truth.npy for n rows; reused when present."""
    folder = work / f"n{n}-c{c}-d{d}"
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (c, d)).astype(np.float32) * 2.0
    true = rng.integers(0, c, n)
    given = true.copy()
    flip = rng.random(n) < noise
    given[flip] = (true[flip] + rng.integers(1, c, int(flip.sum()))) % c
    emb = np.lib.format.open_memmap(folder / "emb.npy", "w+", np.float32, (n, d))
    probs = np.lib.format.open_memmap(folder / "probs.npy", "w+", np.float32, (n, c))
    for s in range(0, n, CHUNK):
        t = true[s : s + CHUNK]
        emb[s : s + CHUNK] = centres[t] + rng.normal(0, 1, (len(t), d)).astype(np.float32)
        logits = rng.normal(0, 1.0, (len(t), c)).astype(np.float32)
        logits[np.arange(len(t)), t] += 2.0  # a weak model: right about 60-70% of the time at C = 10
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs[s : s + CHUNK] = e / e.sum(1, keepdims=True)
    emb.flush()
    probs.flush()
    np.save(folder / "truth.npy", true)
    width = len(str(c - 1))
    with open(folder / "labels.csv", "w") as f:
        f.write("path,label\n")
        for s in range(0, n, CHUNK):
            f.write("".join(f"r{i},k{g:0{width}d}\n" for i, g in zip(range(s, s + CHUNK), given[s : s + CHUNK])))
    (folder / "done").write_text("ok\n")
    return folder


def timed(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in GB, the process) of cmd under /usr/bin/time -v."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return wall, (int(m.group(1)) / 1e6 if m else float("nan")), p


def run_size(folder: Path, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), LABELFIX_PROGRESS="none")
    run = folder / "run"
    scan = [*LABELFIX, "scan", "--labels", str(folder / "labels.csv"), "--pred-probs", str(folder / "probs.npy")]
    scan += ["--embeddings", str(folder / "emb.npy"), "--out", str(run), "--json"]
    wall_s, rss_s, p = timed(scan, env)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    summary = json.loads(p.stdout)
    wall_r, rss_r, p = timed([*LABELFIX, "refine", str(run), "--json"], env)
    if p.returncode != 0:
        return {"error": "refine: " + p.stderr.strip().splitlines()[-1]}
    import pyarrow.parquet as pq

    from labelfix.core.metrics import precision_recall_f1

    truth = np.load(folder / "truth.npy")
    t = pq.read_table(run / "scan.parquet", columns=["is_issue", "given_index"])
    flags = t.column("is_issue").to_numpy(zero_copy_only=False)
    wrong = t.column("given_index").to_numpy() != truth
    return {
        "scan_s": round(wall_s, 1),
        "scan_rss_gb": round(rss_s, 2),
        "refine_s": round(wall_r, 1),
        "refine_rss_gb": round(rss_r, 2),
        "stages_s": summary["timings_s"],
        "graph": summary["graph"],
        "flag_f1": round(precision_recall_f1(flags, wrong)["f1"], 4),
    }


def datalab(folder: Path, threads: int) -> dict:
    """cleanlab's Datalab label check with features, in its own process (time and RSS)."""
    code = (
        "import numpy as np, pandas as pd; from cleanlab import Datalab; "
        f"f='{folder}'; y=pd.read_csv(f+'/labels.csv')['label'].to_numpy(); "
        "lab=Datalab(data={'label': y}, label_name='label'); "
        "lab.find_issues(features=np.load(f+'/emb.npy'), pred_probs=np.load(f+'/probs.npy'), issue_types={'label': {}})"
    )
    wall, rss, p = timed([sys.executable, "-c", code], dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return {"datalab_s": round(wall, 1), "datalab_rss_gb": round(rss, 2), "ok": p.returncode == 0}


def exponent(sizes: list[int], times: list[float]) -> float | None:
    ok = [(n, t) for n, t in zip(sizes, times) if t and t > 0]
    if len(ok) < 2:
        return None
    x, y = np.log([n for n, _ in ok]), np.log([t for _, t in ok])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def markdown(results: dict, machine: str, command: str) -> str:
    lines = [
        "## Scale (examples/bench_scale.py)",
        "",
        f"Machine: {machine}. Command: `{command}`. Synthetic inputs: clustered embeddings, a weak "
        "model's probabilities, 30% symmetric noise; each step a separate process.",
        "",
        "| rows | C | D | scan s | scan peak RSS GB | refine s | refine peak RSS GB | graph | recall@k | stages (s) | flag F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results["runs"].items():
        n, c, d = key.split("x")
        if "error" in r:
            lines.append(f"| {n} | {c} | {d} | error: {r['error']} | | | | | | | |")
            continue
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_s"].items() if k != "total")
        lines.append(
            f"| {n} | {c} | {d} | {r['scan_s']} | {r['scan_rss_gb']} | {r['refine_s']} | {r['refine_rss_gb']} | "
            f"{r['graph']['index']} | {r['graph'].get('recall_at_k')} | {stages} | {r['flag_f1']} |"
        )
    for c, e in results.get("exponents", {}).items():
        lines.append(f"\nGrowth exponent of scan + refine time in N (C = {c}): {e}")
    if results.get("datalab"):
        lines.append(f"\nDatalab(features) label check on the same inputs: {results['datalab']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--classes", default="10")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--datalab", type=int, default=0, help="rows of the Datalab comparison (0: none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/labelfix-scale"))
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from labelfix.commands.bench import machine_description

    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"runs": {}, "exponents": {}}
    for c in [int(c) for c in args.classes.split(",")]:
        times = []
        for n in sizes:
            r = run_size(make_inputs(args.work, n, c, args.dim), args.threads)
            results["runs"][f"{n}x{c}x{args.dim}"] = r
            times.append((r.get("scan_s") or 0) + (r.get("refine_s") or 0))
            print(n, c, args.dim, r, flush=True)
        results["exponents"][c] = exponent(sizes, times)
    if args.datalab:
        folder = make_inputs(args.work, args.datalab, 10, args.dim)
        results["datalab"] = {"rows": args.datalab, **datalab(folder, args.threads), **run_size(folder, args.threads)}
    command = "python examples/bench_scale.py " + " ".join(sys.argv[1:])
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "benchmarks-scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.docs / "benchmarks-scale.md").write_text(markdown(results, machine_description(), command))
    print(markdown(results, machine_description(), command))


if __name__ == "__main__":
    main()
