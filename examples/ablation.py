"""Ablation of detection's stages: each one on and off, on real human noise and synthetic rows of
the no-images matrix (examples/matrix.py builds the rows), scored against cleanlab's best filter
on the same inputs.

    OMP_NUM_THREADS=1 .venv/bin/python examples/ablation.py            # the default rows (~3 min)
    .venv/bin/python examples/ablation.py --rows 'h-r18|syn10'          # rows whose name matches

Each variant runs labelfix.core.detect.detect with labelfix.core.detect.Stages (the product's
default, and one stage changed at a time), on the graph scan builds (k = 20; on the square roots
of the probabilities for rows without embeddings, on the embeddings otherwise). Reported per row:
flag F1 / the best cleanlab filter's F1 (Datalab(features) included where the row has
embeddings), the estimated / actual noise rate, and the accuracy of the refined label (the
posterior's argmax) against the floor max(given accuracy, argmax accuracy).

Writes docs/ablation.md and docs/ablation.json (docs/ablation-partial.* with --rows).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

ROWS = [
    "h-r18",
    "h-eb1",
    "h-r50",
    "h-twins",
    "h-swin",
    "h-r50-animals",
    "h-ens3-catdog",
    "h-twins-restore75",
    "h-r50-n2831-weak",
    "h-twins-n2831-weak",
    "cifar-given-r18",
    "cifar-given-swin",
    "c-r18-sym0",
    "c-r18-sym40",
    "c-eb1-pair40",
    "c-twins-human30-lt10",
    "c-r18-sym20-k2",
    "syn10-comparable-sym30",
    "syn10-degraded-sym30",
    "syn10-embstrong-pair20",
    "syn50-comparable-sym30",
]


def variants():
    from labelfix.core.detect import Stages

    return {
        "labelfix": Stages(),
        "label weight off": Stages(label_weight=False),
        "graph vote off": Stages(graph_vote=False),
        "small-loss anchors": Stages(anchors="small-loss"),
        "propagation": Stages(propagation=True),
        "small-loss + propagation": Stages(anchors="small-loss", propagation=True),
    }


def run_row(name: str, data: Path) -> dict:
    import matrix as catalogue

    from labelfix.benchmarks.matrix import cleanlab_all
    from labelfix.core.detect import detect
    from labelfix.core.graph import build_knn
    from labelfix.core.issues import feature_space

    row = catalogue.build(name, data)
    y, true = np.asarray(row.noisy, dtype=np.int64), np.asarray(row.true, dtype=np.int64)
    probs = np.asarray(row.probs, dtype=np.float32)
    truth = y != true
    emb, source = feature_space(probs, row.emb)
    graph = build_knn(emb, 20)
    cl = cleanlab_all(y, probs, row.emb, truth)
    scored = {k: v["f1"] for k, v in cl.items() if v.get("f1") is not None}
    best = max(scored, key=scored.get) if scored else None
    floor = max(float((~truth).mean()), float((probs.argmax(1) == true).mean()))
    out = {
        "name": name,
        "actual_noise_rate": round(float(truth.mean()), 4),
        "best_cleanlab": best,
        "best_cleanlab_f1": scored.get(best),
        "floor": round(floor, 4),
        "variants": {},
    }
    for vname, stages in variants().items():
        t = time.perf_counter()
        det = detect(probs, y, graph.ids, graph.sims, source == "embeddings", stages=stages)
        tp = int((det.flags & truth).sum())
        f1 = 2 * tp / max(int(det.flags.sum()) + int(truth.sum()), 1) if truth.any() else None
        refined = float((det.posterior.argmax(1) == true).mean())
        out["variants"][vname] = {
            "f1": None if f1 is None else round(f1, 4),
            "flagged": int(det.flags.sum()),
            "ratio": None if f1 is None or not out["best_cleanlab_f1"] else round(f1 / out["best_cleanlab_f1"], 3),
            "estimated_noise_rate": round(float(det.p_wrong.mean()), 4),
            "refined_accuracy": round(refined, 4),
            "refined_ok": refined >= floor - 1e-9,
            "label_weight": round(det.label_weight, 3),
            "seconds": round(time.perf_counter() - t, 2),
        }
    return out


def summary(results: list[dict]) -> dict:
    out = {}
    for vname in variants():
        ratios = [r["variants"][vname]["ratio"] for r in results if r["variants"][vname]["ratio"] is not None]
        human = [
            r["variants"][vname]["ratio"]
            for r in results
            if r["name"].startswith("h-") and r["variants"][vname]["ratio"] is not None
        ]
        out[vname] = {
            "mean_ratio": round(float(np.mean(ratios)), 4) if ratios else None,
            "worst_ratio": min(ratios) if ratios else None,
            "human_mean_ratio": round(float(np.mean(human)), 4) if human else None,
            "rows_below_1": sum(r < 1.0 for r in ratios),
            "refined_below_floor": sum(not r["variants"][vname]["refined_ok"] for r in results),
        }
    return out


def markdown(results: list[dict], command: str) -> str:
    from labelfix.files.outputs import atomic_write_bytes  # noqa: F401  (import check only)

    names = list(variants())
    s = summary(results)
    lines = [
        "# Ablation of detection's stages",
        "",
        "Generated by `examples/ablation.py`; do not edit by hand. Each variant changes one stage of "
        "`labelfix.core.detect.Stages` from labelfix's default; rows come from the no-images matrix "
        "(`examples/matrix.py`, `h-*`: real human noise, CIFAR-10N). Cells: flag F1 / best cleanlab filter's F1 "
        "on the same inputs (✗ below 1), then the estimated noise rate; ↓ marks a refined-label accuracy below "
        "max(given, argmax).",
        "",
        f"- command: `{command}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        "| variant | mean ratio | worst ratio | mean ratio, human-noise rows | rows < 1 | refined below floor |",
        "|---|---|---|---|---|---|",
    ]
    for v in names:
        x = s[v]
        lines.append(
            f"| {v} | {x['mean_ratio']} | {x['worst_ratio']} | {x['human_mean_ratio']} | {x['rows_below_1']} | "
            f"{x['refined_below_floor']} |"
        )
    lines += ["", "| row | actual rate | " + " | ".join(names) + " |", "|---|---" + "|---" * len(names) + "|"]
    for r in results:
        cells = []
        for v in names:
            x = r["variants"][v]
            ratio = "-" if x["ratio"] is None else f"{x['ratio']:.3f}" + (" ✗" if x["ratio"] < 1 else "")
            cells.append(f"{ratio}, est {x['estimated_noise_rate']:.3f}" + ("" if x["refined_ok"] else " ↓"))
        lines.append(f"| {r['name']} | {r['actual_noise_rate']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", help="regex matched against row names (default: the ablation's rows)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    names = [n for n in ROWS if not args.rows or re.search(args.rows, n)]
    from labelfix.files.outputs import atomic_write_bytes, atomic_write_json

    stem = "ablation" if not args.rows else "ablation-partial"
    command = " ".join(["python examples/ablation.py", *(argv if argv is not None else sys.argv[1:])])
    results = []
    for n in names:
        t = time.perf_counter()
        results.append(run_row(n, args.data))
        v = results[-1]["variants"]
        print(
            f"{n}: " + ", ".join(f"{k} {x['ratio']}" for k, x in v.items()) + f" ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        md = markdown(results, command)
        atomic_write_json(
            args.docs / f"{stem}.json", {"command": command, "summary": summary(results), "rows": results}
        )
        atomic_write_bytes(args.docs / f"{stem}.md", md.encode())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
