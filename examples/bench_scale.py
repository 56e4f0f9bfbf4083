"""The cost model: time and peak memory of `labelfix scan --pred-probs --embeddings`
and `labelfix refine` as the number of rows grows, per stage, with the fitted growth exponent;
and cleanlab's Datalab(features=...) label check on one of the same inputs, timed side by side.

    .venv/bin/python examples/bench_scale.py     # 100k, 300k, 1M rows at C x D = 10 x 128 and 1000 x 256
    .venv/bin/python examples/bench_scale.py --sizes 100000,300000 --shapes 10x128
    .venv/bin/python examples/bench_scale.py --datalab 200000  # also Datalab at 200k x 256 (C = 10)

Each run is a separate process under /usr/bin/time -v (peak RSS); stage times come from the run's
summary.json (timings_s) and refine's statistics. The synthetic inputs (clustered embeddings,
probabilities of a weak model, 30% symmetric noise) are written once per size to --work as .npy
memory maps, so generating them never holds more than a chunk. Results merge into
docs/benchmarks-scale.json by row count and shape (a partial run keeps the others, each row with
its commit and date), and docs/benchmarks-scale.md is written from all of them (examples/bench.py
includes it in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LABELFIX = [sys.executable, "-m", "labelfix.cli"]
CHUNK = 100_000


SUBCLUSTERS = 20  # modes per class
SPECTRA = ("powerlaw", "isotropic")


def make_inputs(work: Path, n: int, c: int, d: int, spectrum: str = "powerlaw", noise: float = 0.3, seed: int = 0):
    """labels.csv, probs.npy, emb.npy and truth.npy for n rows; reused when present.

    Embeddings: a class centre plus one of SUBCLUSTERS modes of the class plus noise. "powerlaw":
    the modes and the noise have variance 1/i along dimension i (scaled to a total of D), the
    roughly 1/n eigenspectrum of deep networks' representations (Stringer et al., Nature 2019;
    Agrawal et al., NeurIPS 2022), so the rows lie near a low-dimensional subspace as real
    embeddings do. "isotropic": unit noise in every dimension and no modes, a worst case for any
    inverted-file or graph index (neighbours nearly equidistant)."""
    folder = work / f"n{n}-c{c}-d{d}-{spectrum}"
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (c, d)).astype(np.float32) * 2.0
    scale = np.ones(d, dtype=np.float32)
    modes = np.zeros((c, 1, d), dtype=np.float32)
    if spectrum == "powerlaw":
        spec = 1.0 / np.arange(1, d + 1)
        scale = np.sqrt(spec / spec.sum() * d).astype(np.float32)
        modes = (rng.normal(0, 1, (c, SUBCLUSTERS, d)) * scale).astype(np.float32)
    true = rng.integers(0, c, n)
    mode = rng.integers(0, modes.shape[1], n)
    given = true.copy()
    flip = rng.random(n) < noise
    given[flip] = (true[flip] + rng.integers(1, c, int(flip.sum()))) % c
    emb = np.lib.format.open_memmap(folder / "emb.npy", "w+", np.float32, (n, d))
    probs = np.lib.format.open_memmap(folder / "probs.npy", "w+", np.float32, (n, c))
    for s in range(0, n, CHUNK):
        t = true[s : s + CHUNK]
        noise_rows = rng.normal(0, 1, (len(t), d)).astype(np.float32) * scale
        emb[s : s + CHUNK] = centres[t] + modes[t, mode[s : s + CHUNK]] + noise_rows
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


def datalab(folder: Path, threads: int, with_probs: bool = False) -> dict:
    """cleanlab's Datalab label check, in its own process (time, peak RSS, flag F1): on the
    embeddings alone (`Datalab(features=...)`, which fits its own kNN model: the check users
    complain about), or with the same probabilities labelfix gets (`with_probs`)."""
    out = folder / f"datalab-flags-{'probs' if with_probs else 'features'}.npy"
    code = (
        "import numpy as np, pandas as pd; from cleanlab import Datalab; "
        f"f='{folder}'; y=pd.read_csv(f+'/labels.csv')['label'].to_numpy(); "
        "lab=Datalab(data={'label': y}, label_name='label'); "
        "lab.find_issues(features=np.load(f+'/emb.npy'), "
        + ("pred_probs=np.load(f+'/probs.npy'), " if with_probs else "")
        + "issue_types={'label': {}}); "
        f"np.save('{out}', lab.get_issues('label')['is_label_issue'].to_numpy())"
    )
    wall, rss, p = timed([sys.executable, "-c", code], dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if p.returncode != 0:  # e.g. cleanlab without its datalab extra: `make bench-scale` installs .[bench]
        lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith(("\t", " "))]
        return {"datalab_error": lines[-1] if lines else f"exit {p.returncode}"}
    import pandas as pd

    from labelfix.core.metrics import precision_recall_f1

    given = pd.read_csv(folder / "labels.csv")["label"].str[1:].astype(int).to_numpy()
    f1 = precision_recall_f1(np.load(out), given != np.load(folder / "truth.npy"))["f1"]
    return {"datalab_s": round(wall, 1), "datalab_rss_gb": round(rss, 2), "datalab_f1": round(f1, 4)}


def exponent(sizes: list[int], times: list[float]) -> float | None:
    ok = [(n, t) for n, t in zip(sizes, times) if t and t > 0]
    if len(ok) < 2:
        return None
    x, y = np.log([n for n, _ in ok]), np.log([t for _, t in ok])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def exponents(runs: dict) -> dict:
    """{"C x D": growth exponent of scan + refine time in N} over the stored rows of each shape."""
    by_shape: dict = {}
    for key, r in runs.items():
        n, c, rest = key.split("x")
        if "error" not in r:
            by_shape.setdefault(f"{c}x{rest}", []).append((int(n), r["scan_s"] + r["refine_s"]))
    return {k: exponent(*zip(*sorted(v))) for k, v in by_shape.items() if len(v) >= 2}


def markdown(results: dict) -> str:
    lines = [
        "## Scale (examples/bench_scale.py)",
        "",
        "Commands that measured these rows: " + ", ".join(f"`{c}`" for c in results.get("commands", [])) + ". "
        "Synthetic inputs (make_inputs): class centres, modes and noise (the embeddings column names the spectrum), a weak model's probabilities, "
        "30% symmetric noise; scan (`--pred-probs --embeddings`) and refine each a separate process under "
        "/usr/bin/time -v (peak RSS). Each row names the commit and machine it was measured on.",
        "",
        "| rows | C | D | embeddings | scan s | scan peak RSS GB | refine s | refine peak RSS GB | scan + refine min "
        "| graph | recall@k | scan stages (s) | flag F1 | commit | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def order(kv):
        dims, spectrum = kv[0].split(":")
        return spectrum, [int(v) for v in dims.split("x")][::-1]

    for key, r in sorted(results["runs"].items(), key=order):
        dims, spectrum = key.split(":")
        n, c, d = dims.split("x")
        head = f"| {int(n):,} | {c} | {d} | {spectrum} |"
        if "error" in r:
            lines.append(f"{head} error: {r['error']} | | | | | | | | {r.get('commit')} | |")
            continue
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_s"].items() if k != "total")
        total = (r["scan_s"] + r["refine_s"]) / 60
        lines.append(
            f"{head} {r['scan_s']} | {r['scan_rss_gb']} | {r['refine_s']} | {r['refine_rss_gb']} | "
            f"{total:.1f} | {r['graph']['index']} | {r['graph'].get('recall_at_k') or 'exact'} | {stages} | {r['flag_f1']} | "
            f"{r.get('commit')} | {r.get('machine')} |"
        )
    lines.append("")
    for shape, e in results.get("exponents", {}).items():
        lines.append(f"- Growth exponent of scan + refine time in N (C x D:embeddings = {shape}), log-log fit: {e}")
    dl = results.get("datalab")
    if dl and "datalab_error" in dl:
        lines.append(f"- cleanlab Datalab on {dl['rows']:,} x {dl['dim']} failed: {dl['datalab_error']}")
    elif dl and "scan_s" in dl:
        wp = dl.get("with_probs", {})
        lines += [
            f"- cleanlab Datalab(features=...) label check (its own kNN model on the embeddings) on the same "
            f"{dl['rows']:,} x {dl['dim']} input (C = 10, {dl['spectrum']} embeddings): {dl['datalab_s']} s, peak RSS "
            f"{dl['datalab_rss_gb']} GB, flag F1 {dl.get('datalab_f1')}; labelfix scan (--pred-probs --embeddings) "
            f"{dl['scan_s']} s, peak RSS {dl['scan_rss_gb']} GB, flag F1 {dl['flag_f1']}: labelfix "
            f"{dl['datalab_s'] / dl['scan_s']:.1f}x faster (same run, commit {dl.get('commit')}).",
        ]
        if "datalab_s" in wp:
            lines.append(
                f"- For reference, Datalab given the same probabilities too (features=..., pred_probs=...: "
                f"Confident Learning on the probabilities, no model to fit): {wp['datalab_s']} s, flag F1 "
                f"{wp.get('datalab_f1')}."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--shapes", default="10x128,1000x256", help="classes x dimensions, comma-separated")
    ap.add_argument("--spectrum", choices=SPECTRA, default="powerlaw", help="embedding structure (make_inputs)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2))
    ap.add_argument("--datalab", type=int, default=0, help="rows of the Datalab comparison at D = 256 (0: none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/labelfix-scale"))
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from labelfix.commands.bench import machine_description

    sizes = [int(s) for s in args.sizes.split(",") if s]
    store = args.docs / "benchmarks-scale.json"
    results: dict = json.loads(store.read_text()) if store.is_file() else {}
    results.setdefault("runs", {})
    stamp = {"commit": commit(), "date": time.strftime("%Y-%m-%d"), "machine": machine_description()}
    for shape in [s for s in args.shapes.split(",") if s]:
        c, d = (int(v) for v in shape.split("x"))
        for n in sizes:
            r = run_size(make_inputs(args.work, n, c, d, args.spectrum), args.threads)
            results["runs"][f"{n}x{c}x{d}:{args.spectrum}"] = {**r, **stamp}
            print(n, c, d, r, flush=True)
    if args.datalab:
        folder = make_inputs(args.work, args.datalab, 10, 256, args.spectrum)
        results["datalab"] = {"rows": args.datalab, "dim": 256, "spectrum": args.spectrum}
        results["datalab"].update(datalab(folder, args.threads))
        results["datalab"]["with_probs"] = datalab(folder, args.threads, with_probs=True)
        results["datalab"].update(run_size(folder, args.threads), **stamp)
    results["exponents"] = exponents(results["runs"])
    command = shlex.join(["python", "examples/bench_scale.py", *sys.argv[1:]])
    if sizes and args.shapes or args.datalab:  # a run that measured something: its command is listed
        results["commands"] = list(dict.fromkeys([*results.get("commands", []), command]))
    args.docs.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    (args.docs / "benchmarks-scale.md").write_text(md)
    if args.docs.resolve() == (ROOT / "docs").resolve():
        quote_in_readme(md)
    print(md)


def quote_in_readme(md: str) -> None:
    """docs/benchmarks-scale.md into docs/benchmarks.md and README.md between the scale markers,
    so their scale numbers always come from the generated file."""
    body = md.split("\n", 2)[2].strip()  # without the title
    replace_block(ROOT / "README.md", "Quoted from `docs/benchmarks-scale.md` by `make bench-scale`:\n\n" + body)
    replace_block(ROOT / "docs" / "benchmarks.md", md.strip().removeprefix("## "), append=True)


def replace_block(path: Path, body: str, append: bool = False) -> None:
    """The text between <!-- scale:start --> and <!-- scale:end --> in `path` becomes `body`;
    without the markers nothing changes, or with `append` the block is added at the end."""
    if not path.is_file():
        return
    text, start, end = path.read_text(), "<!-- scale:start -->", "<!-- scale:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        path.write_text(head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1])
    elif append:
        path.write_text(text.rstrip() + "\n\n" + start + "\n" + body + "\n" + end + "\n")


def commit() -> str:
    p = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return p.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
