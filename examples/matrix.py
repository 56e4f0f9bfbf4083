"""The no-images generalisation matrix: a fast, broad set of rows to judge a change
to labelfix's method against cleanlab, with no images and no teacher training.

    OMP_NUM_THREADS=1 .venv/bin/python examples/matrix.py            # all 53 rows (about 8 min, 1 core)
    OMP_NUM_THREADS=1 .venv/bin/python examples/matrix.py --quick    # 8 representative rows (about 1 min)
    .venv/bin/python examples/matrix.py --rows 'human|k[235]-'       # rows whose name matches (regex)

Rows (each: out-of-sample probabilities N x C, optional embeddings N x D, noisy and true labels;
everything seeded):

* `h-<model>`: REAL HUMAN LABEL NOISE. ../shared/data/cifar10n-aggre-pred-probs: CIFAR-10N's
  aggregate labels (9.0% wrong) with the probabilities of a model cross-fitted on those same
  labels (so it has partly learned people's mistakes), all 50,000 rows. `h-ens5`: the five
  models at once (one --pred-probs each; cleanlab gets their mean); `h-ens3-catdog`: three. Variants:
  `-n12k` a stratified 12,000-row subset, `-restore<p>` p% of the wrong labels set back to the
  truth (a label set cleaner than the one the model learned from), `-animals` / `-vehicles` /
  `-catdog` the rows whose true and given classes are in that subset (probabilities restricted
  and renormalised), `-n2831-weak` a 2,831-row subset with a weaker model (log-probabilities
  plus Gaussian noise).

* `cifar-given-<model>`: ../shared/data/cifar10s-pred-probs, the published 20%-noisy labels with
  each of the five models' probabilities (all 50,000 rows).
* `c-<model>-<noise><rate>[-lt<r>][-k<C>][-s<seed>]`: the same probability files with NEW label
  noise injected from the true labels into a 12,000-row stratified subset (or a long-tailed
  subset, `lt10`: class sizes decaying geometrically 10:1 from 2,500; or a 2-5 class subset,
  `k3`: samples of those true classes, probabilities restricted to their columns and
  renormalised). Noise: `sym` (uniform over other classes), `pair` (k -> k+1), `rpair` (a fixed
  seeded random pairing of the classes), `human` (flips drawn from another model's confusion
  matrix P(pred | true), off-diagonal renormalised: labelfix.core.noise.confusion_noise).
  NOTE: the model's probabilities are kept as fixed evidence. They come from models trained (5-fold)
  on the published noisy labels, not on the re-injected ones, so they did not memorise the new
  wrong labels: these rows are kinder to every method than a user's model trained on its own
  noisy labels would be. They still compare labelfix and cleanlab on identical inputs.
* `syn<C>-<kind>-<noise><rate>`: synthetic clustered embeddings (10 classes x 12,000 rows or 50 x
  15,000; 128 dims, 3 sub-clusters per
  class) and probabilities from a weak linear probe (logistic regression, 2-fold cross-fitting,
  trained on the noisy labels) on a degraded view (a low-dimensional random projection plus
  noise). `embstrong`: embeddings the stronger signal; `probstrong`: probabilities stronger;
  `comparable`; `weak`: both weak; `degraded`: the probe sees a projection of the embeddings
  themselves (`uselessprobs`: so degraded that the probe is right on ~29% of rows). Strengths
  are in the table (teacher acc = probe argmax; emb kNN = leave-one-out 10-NN accuracy of the
  embeddings against the truth).

Besides flag F1 each row reports the estimated against the actual noise rate, the refined
labels' accuracy against max(given, argmax) and the relabel precision (the share of refine's
`relabel` actions, which labels.refined.csv applies without a person, that are right).

Each row runs labelfix as a user would (labelfix.commands.scan.scan with ScanInputs(labels_csv=...,
pred_probs=..., embeddings=...) then labelfix.commands.refine.refine, in a work folder), and on the SAME
inputs every cleanlab.filter.find_label_issues filter_by, plus Datalab(features=) where the row
has embeddings. A LabelfixError (for example a refusal to trust a weak teacher) is recorded as
the row's outcome. Targets: flag F1 >= the best cleanlab variant on every row (ratio >= 1.00,
mean >= 1.03; on the human-noise rows mean >= 1.02); refined-label accuracy >= max(given-label
accuracy, teacher argmax accuracy) on every row; relabel precision >= 0.95; the noise estimate
within 20% of the actual rate on the human-noise rows.

Writes docs/matrix.md and docs/matrix.json for the full matrix, docs/matrix-partial.* when
--rows or --quick selects part of it (so a quick check never overwrites the committed baseline).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SUBSET = 12_000


def _catalogue() -> dict[str, tuple[str, dict]]:
    """name -> (builder, keyword arguments). Order = table order."""
    rows: dict[str, tuple[str, dict]] = {}
    # real human label noise (CIFAR-10N aggregate), models trained on those same labels
    for m in ("r18", "eb1", "r50", "twins", "swin"):
        rows[f"h-{m}"] = ("human", dict(models=[m]))
    rows["h-ens5"] = ("human", dict(models=["r18", "eb1", "r50", "twins", "swin"]))
    rows["h-r18-n12k"] = ("human", dict(models=["r18"], n=SUBSET))
    rows["h-swin-n12k-s1"] = ("human", dict(models=["swin"], n=SUBSET, seed=1))
    rows["h-eb1-restore50"] = ("human", dict(models=["eb1"], restore=0.5))
    rows["h-twins-restore75"] = ("human", dict(models=["twins"], restore=0.75))
    rows["h-r50-animals"] = ("human", dict(models=["r50"], classes=[2, 3, 4, 5, 6, 7]))
    rows["h-swin-vehicles"] = ("human", dict(models=["swin"], classes=[0, 1, 8, 9]))
    rows["h-ens3-catdog"] = ("human", dict(models=["r18", "r50", "twins"], classes=[3, 5]))
    # small sets with a weaker model (its log-probabilities perturbed): 2,831 rows as a small
    # hand-checked set might have
    rows["h-r50-n2831-weak"] = ("human", dict(models=["r50"], n=2831, degrade=1.5, seed=2))
    rows["h-twins-n2831-weak"] = ("human", dict(models=["twins"], n=2831, degrade=2.5, seed=3))
    for m in ("r18", "eb1", "r50", "twins", "swin"):
        rows[f"cifar-given-{m}"] = ("cifar", dict(model=m, noise="given"))

    def c(model, noise, rate, seed=0, **kw):
        short = {"symmetric": "sym", "pair": "pair", "random-pair": "rpair", "human": "human"}[noise]
        name = f"c-{model}-{short}{round(rate * 100)}"
        if kw.get("imbalance"):
            name += f"-lt{kw['imbalance']:g}"
        if kw.get("classes"):
            name += f"-k{len(kw['classes'])}"
        if seed:
            name += f"-s{seed}"
        if "imbalance" not in kw and "classes" not in kw:
            kw["n"] = SUBSET
        rows[name] = ("cifar", dict(model=model, noise=noise, rate=rate, seed=seed, **kw))

    # symmetric: 0 / 20 / 40 / 60 %, weak .. strong models
    c("r18", "symmetric", 0.0)
    c("swin", "symmetric", 0.0)
    for m in ("eb1", "r50", "swin"):
        c(m, "symmetric", 0.2)
    c("r18", "symmetric", 0.4)
    c("r18", "symmetric", 0.4, seed=1)
    c("twins", "symmetric", 0.4)
    for m in ("eb1", "r50", "swin"):
        c(m, "symmetric", 0.6)
    # asymmetric: pair flip k -> k+1, and a fixed random pairing
    c("r18", "pair", 0.2)
    c("twins", "pair", 0.2)
    for m in ("eb1", "r50", "swin"):
        c(m, "pair", 0.4)
    c("r50", "random-pair", 0.2)
    c("swin", "random-pair", 0.2)
    c("r18", "random-pair", 0.4)
    c("twins", "random-pair", 0.4)
    # human-like: another model's confusion matrix
    c("r18", "human", 0.2, confusion_model="eb1")
    c("swin", "human", 0.2, confusion_model="r50")
    c("eb1", "human", 0.4, confusion_model="r18")
    c("eb1", "human", 0.4, seed=1, confusion_model="r18")
    c("twins", "human", 0.4, confusion_model="swin")
    c("r50", "human", 0.4, confusion_model="twins")
    # long-tailed
    c("r18", "symmetric", 0.2, imbalance=10)
    c("twins", "human", 0.3, imbalance=10, confusion_model="r18")
    c("eb1", "pair", 0.2, imbalance=10)
    c("r50", "symmetric", 0.4, imbalance=100)
    # 2-5 classes
    c("r18", "symmetric", 0.2, classes=[3, 5])  # cat, dog
    c("r50", "symmetric", 0.3, classes=[0, 8])  # airplane, ship
    c("eb1", "symmetric", 0.4, classes=[3, 4, 5])  # cat, deer, dog
    c("swin", "pair", 0.2, classes=[0, 1, 2, 3, 4])
    c("twins", "human", 0.3, classes=[2, 3, 4, 5, 6], confusion_model="r18")  # the animals

    def s(name, **kw):
        rows[name] = ("synthetic", kw)

    # 10 classes, 12,000 x 128. emb_noise 2.5 / 3.5 / 4: 10-NN accuracy ~0.99 / 0.88 / 0.78;
    # probe 16d sigma 0.4 / 8d sigma 0.6 / 8d sigma 1.0: ~0.99 / 0.87 / 0.72 (30% symmetric).
    ten = dict(n=12_000, num_classes=10)
    s("syn10-comparable-sym30", **ten, emb_noise=3.5, probe_dim=8, probe_noise=0.6, noise="symmetric", rate=0.3)
    s(
        "syn10-comparable-sym30-s1",
        **ten,
        emb_noise=3.5,
        probe_dim=8,
        probe_noise=0.6,
        noise="symmetric",
        rate=0.3,
        seed=1,
    )
    s("syn10-embstrong-sym30", **ten, emb_noise=2.5, probe_dim=8, probe_noise=1.0, noise="symmetric", rate=0.3)
    s("syn10-probstrong-sym30", **ten, emb_noise=4.0, probe_dim=16, probe_noise=0.4, noise="symmetric", rate=0.3)
    s("syn10-weak-sym40", **ten, emb_noise=4.0, probe_dim=8, probe_noise=1.0, noise="symmetric", rate=0.4)
    # the probe sees a projection of the embeddings themselves (6 sub-clusters per class):
    # 32 dims ~0.61 probe accuracy (embeddings ~0.94); 8 dims ~0.29, a teacher near useless
    s(
        "syn10-degraded-sym30",
        **ten,
        emb_noise=3.0,
        probe_dim=32,
        probe_noise=0.5,
        probe_from="embeddings",
        subclusters=6,
        noise="symmetric",
        rate=0.3,
    )
    s(
        "syn10-uselessprobs-sym30",
        **ten,
        emb_noise=3.0,
        probe_dim=8,
        probe_noise=0.5,
        probe_from="embeddings",
        subclusters=6,
        noise="symmetric",
        rate=0.3,
    )
    s("syn10-comparable-pair20", **ten, emb_noise=3.5, probe_dim=8, probe_noise=0.6, noise="pair", rate=0.2)
    s("syn10-embstrong-pair20", **ten, emb_noise=2.5, probe_dim=8, probe_noise=1.0, noise="pair", rate=0.2)
    s("syn10-probstrong-rpair20", **ten, emb_noise=4.0, probe_dim=16, probe_noise=0.4, noise="random-pair", rate=0.2)
    # plausible mistakes (each flipped sample lies nearest the class it is given), learned by the
    # probe trained on them: the synthetic kind of CIFAR-10N's human noise
    s("syn10-comparable-plausible20", **ten, emb_noise=3.5, probe_dim=8, probe_noise=0.6, noise="plausible", rate=0.2)
    s("syn10-probstrong-plausible10", **ten, emb_noise=4.0, probe_dim=16, probe_noise=0.4, noise="plausible", rate=0.1)
    # 50 classes, 15,000 x 128 (300 per class)
    fifty = dict(n=15_000, num_classes=50)
    s("syn50-comparable-sym30", **fifty, emb_noise=3.0, probe_dim=16, probe_noise=0.8, noise="symmetric", rate=0.3)
    s("syn50-embstrong-pair20", **fifty, emb_noise=2.5, probe_dim=12, probe_noise=1.0, noise="pair", rate=0.2)
    s("syn50-probstrong-sym30", **fifty, emb_noise=3.5, probe_dim=24, probe_noise=0.6, noise="symmetric", rate=0.3)
    return rows


ROWS = _catalogue()
QUICK = [
    "h-r18",
    "h-swin",
    "cifar-given-r18",
    "c-r18-sym40",
    "c-eb1-pair40",
    "c-swin-human20",
    "c-twins-human30-lt10",
    "c-eb1-sym40-k3",
    "syn10-comparable-sym30",
    "syn10-probstrong-rpair20",
]


def build(name: str, data: Path):
    from labelfix.benchmarks.matrix import cifar_row, human_row, synthetic_row

    kind, kw = ROWS[name]
    if kind == "human":
        return human_row(data, name, **kw)
    if kind == "cifar":
        return cifar_row(data, name, **kw)
    return synthetic_row(name, **kw)


def run_one(name: str, data: Path, work: Path, keep: bool) -> dict:
    from labelfix.benchmarks.matrix import safe_evaluate

    os.environ["OMP_NUM_THREADS"] = "1"
    row_dir = work / name
    res = safe_evaluate(partial(build, name, data), name, row_dir)
    if not keep:
        shutil.rmtree(row_dir, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(v, nd=3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _group_ratio(results: list[dict], group: str) -> dict:
    ratios = [r["ratio"] for r in results if r.get("group") == group and r.get("ratio") is not None]
    if not ratios:
        return {}
    return {"rows": len(ratios), "worst_ratio": min(ratios), "mean_ratio": round(sum(ratios) / len(ratios), 4)}


def headline(results: list[dict]) -> dict:
    ratios = [(r["ratio"], r["name"]) for r in results if r.get("ratio") is not None]
    floor_argmax = [r["name"] for r in results if r.get("refined_argmax_ok") is False]
    floor_csv = [r["name"] for r in results if r.get("refined_csv_ok") is False]
    return {
        "rows": len(results),
        "rows_with_ratio": len(ratios),
        "worst_ratio": min(ratios)[0] if ratios else None,
        "worst_row": min(ratios)[1] if ratios else None,
        "mean_ratio": round(sum(r for r, _ in ratios) / len(ratios), 4) if ratios else None,
        "ratio_below_1": sorted(n for r, n in ratios if r < 1.0),
        "refined_argmax_below_floor": floor_argmax,
        "refined_csv_below_floor": floor_csv,
        "relabel_precision_below_095": [
            r["name"] for r in results if r.get("relabel_precision") is not None and r["relabel_precision"] < 0.95
        ],
        "noise_estimate_off_by_20pct": [r["name"] for r in results if (noise_error(r) or 0.0) > 0.2],
        "human_rows": _group_ratio(results, "human"),
        "labelfix_errors": [r["name"] for r in results if r.get("labelfix_error")],
        "crashed": [r["name"] for r in results if r.get("crash")],
        "seconds": round(sum(r.get("row_s") or 0.0 for r in results), 1),
    }


def headline_text(h: dict) -> str:
    return (
        f"{h['rows']} rows ({h['rows_with_ratio']} with a ratio) in {h['seconds'] / 60:.1f} min: worst ratio "
        f"{_fmt(h['worst_ratio'])} ({h['worst_row']}), mean ratio {_fmt(h['mean_ratio'])}, "
        f"{len(h['ratio_below_1'])} rows with ratio < 1, {len(h['refined_argmax_below_floor'])} rows with refined argmax "
        f"< floor, {len(h['refined_csv_below_floor'])} with labels.refined.csv < floor, "
        f"{len(h['relabel_precision_below_095'])} with relabel precision < 0.95, "
        f"{len(h['noise_estimate_off_by_20pct'])} with the noise estimate off by > 20%, "
        + (
            f"real human noise rows: worst ratio {_fmt(h['human_rows']['worst_ratio'])}, mean {_fmt(h['human_rows']['mean_ratio'])}, "
            if h.get("human_rows")
            else ""
        )
        + f"{len(h['labelfix_errors'])} labelfix errors, {len(h['crashed'])} crashed"
    )


def _noise(r: dict) -> str:
    if r.get("rate") is None:
        return str(r.get("noise", "-"))
    extra = []
    if r.get("imbalance"):
        extra.append(f"lt {r['imbalance']:g}:1")
    if r.get("class_subset"):
        extra.append(f"{len(r['class_subset'])} cls")
    return f"{r['noise']} {r['rate']:.0%}" + (f" ({', '.join(extra)})" if extra else "")


def _relabels(r: dict) -> str:
    n = (r.get("refined_actions") or {}).get("relabel")
    if n is None:
        return "-"
    p = r.get("relabel_precision")
    return f"{n} ({_fmt(p)}{' ✗' if p is not None and p < 0.95 else ''})"


def noise_error(r: dict) -> float | None:
    """|estimated - actual| / actual noise rate (None where the row has no wrong labels)."""
    a, e = r.get("actual_noise_rate"), r.get("estimated_noise_rate")
    return None if not a or e is None else abs(e - a) / a


def best_cell(r: dict) -> str:
    if not r["actual_noise_rate"]:
        return f"fewest flags {r.get('cleanlab_min_flagged', '-')}"
    return f"{_fmt(r.get('best_cleanlab_f1'))} ({r.get('best_cleanlab', '-')})"


def table(results: list[dict]) -> list[str]:
    lines = [
        "| row | noise | n | C | model | actual / est. rate | labelfix P / R | labelfix F1 | best cleanlab F1 (variant) | ratio "
        "| given acc | teacher acc | emb kNN | refined argmax / csv acc | >= floor | relabels (precision) | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("crash"):
            lines.append(f"| {r['name']} | CRASH: {r['crash'][:120]} |" + " |" * 14)
            continue
        lf = r.get("labelfix")
        if r.get("labelfix_error"):
            e = r["labelfix_error"]
            lf_cells = f"error {e['type']} (exit {e['exit_code']}) | -"
        elif not r["actual_noise_rate"]:  # no wrong labels: F1 is undefined, count the false flags
            lf_cells = f"flags {lf['flagged']} | -"
        else:
            lf_cells = f"{_fmt(lf['precision'])} / {_fmt(lf['recall'])} | {_fmt(lf['f1'])}"
        ok = []
        for k in ("refined_argmax_ok", "refined_csv_ok"):
            ok.append("-" if r.get(k) is None else ("✓" if r[k] else "✗"))
        ratio = r.get("ratio")
        ratio_s = _fmt(ratio) + (" ✗" if ratio is not None and ratio < 1 else "")
        lines.append(
            f"| {r['name']} | {_noise(r)} | {r['n']} | {r['classes']} | {r.get('model', '-')} | "
            f"{_fmt(r['actual_noise_rate'])} / {_fmt(r.get('estimated_noise_rate'))} | {lf_cells} | "
            f"{best_cell(r)} | {ratio_s} | {_fmt(r['given_accuracy'])} | "
            f"{_fmt(r['teacher_accuracy'])} | {_fmt(r.get('emb_knn_accuracy'))} | "
            f"{_fmt(r.get('refined_argmax_accuracy'))} / {_fmt(r.get('refined_csv_accuracy'))} | {' / '.join(ok)} | "
            f"{_relabels(r)} | {_fmt(r.get('row_s'), 0)} |"
        )
    return lines


def variant_table(results: list[dict]) -> list[str]:
    from labelfix.benchmarks.matrix import CLEANLAB_FILTERS

    cols = [*CLEANLAB_FILTERS, "Datalab(features)"]
    lines = ["| row | labelfix | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in results:
        cl = r.get("cleanlab", {})
        cells = []
        for k in cols:
            v = cl.get(k)
            cells.append("-" if v is None else ("err" if "error" in v else _fmt(v["f1"])))
        lines.append(f"| {r['name']} | {_fmt((r.get('labelfix') or {}).get('f1'))} | " + " | ".join(cells) + " |")
    return lines


def machine() -> str:
    from labelfix.commands.bench import machine_description

    return f"{machine_description()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"


def versions() -> str:
    import cleanlab
    import sklearn

    from labelfix import __version__

    return f"labelfix {__version__}, cleanlab {cleanlab.__version__}, scikit-learn {sklearn.__version__}, Python {platform.python_version()}"


def commit() -> str:
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def markdown(results: list[dict], h: dict, command: str, head: str, total: int) -> str:
    done = "" if len(results) == total else f" ({len(results)} of {total} rows done)"
    lines = [
        "# Generalisation matrix (no images)",
        "",
        "Generated by `examples/matrix.py`; do not edit by hand. What the rows are: the script's docstring.",
        "",
        f"- command: `{command}`{done}",
        f"- code: {head}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {machine()}",
        f"- versions: {versions()}",
        "",
        f"**{headline_text(h)}**",
        "",
        "Ratio = labelfix flag F1 / best cleanlab variant's F1 on the same inputs (target >= 1.00 on every row, mean "
        ">= 1.03; no ratio where the row has no wrong labels). Floor = max(given-label accuracy, teacher argmax "
        "accuracy); `>= floor` for refined.parquet's `refined_index` / labels.refined.csv's labels (the given label "
        "except where refine's action is `relabel`). Rows with no wrong labels show how many labels were flagged "
        "(labelfix, and the cleanlab variant that flagged fewest). teacher acc = "
        "argmax of the row's probabilities vs the truth; emb kNN = leave-one-out 10-NN accuracy of the embeddings. "
        "labels.refined.csv changes only the `relabel` rows, which must be right 95% of the time (relabel precision, "
        "✗ below), so its accuracy is reported against the floor but is not held to it: the rows a person should "
        "see are `review`.",
        "",
        *table(results),
        "",
        "## Flag F1 of every variant",
        "",
        *variant_table(results),
    ]
    errs = [r for r in results if r.get("labelfix_error") or r.get("crash")]
    if errs:
        lines += ["", "## Errors", ""]
        for r in errs:
            e = r.get("labelfix_error") or {"type": "crash", "message": r["crash"]}
            lines.append(f"- {r['name']}: {e['type']}: {e['message']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", help="regex (or substring) matched against row names")
    ap.add_argument("--quick", action="store_true", help=f"the {len(QUICK)} representative rows: {', '.join(QUICK)}")
    ap.add_argument("--jobs", type=int, default=1, help="rows run in parallel (processes; default 1)")
    ap.add_argument(
        "--out",
        type=Path,
        help="keep each row's work files (CSV, .npy, run folder) under DIR (default: a temp dir, removed)",
    )
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder holding cifar10s-pred-probs/ (default ../shared/data)"
    )
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="where matrix.md / matrix.json go")
    ap.add_argument("--list", action="store_true", help="print the row names and exit")
    args = ap.parse_args(argv)

    names = list(QUICK) if args.quick else list(ROWS)
    if args.rows:
        pat = re.compile(args.rows)
        names = [n for n in names if pat.search(n)]
    if args.list:
        print("\n".join(names))
        return 0
    if not names:
        print(f"no row matches {args.rows!r} (see --list)", file=sys.stderr)
        return 2
    if any(ROWS[n][0] == "cifar" for n in names) and not (args.data / "cifar10s-pred-probs").is_dir():
        print(f"{args.data}: missing cifar10s-pred-probs/ (pass --data DIR)", file=sys.stderr)
        return 2

    from labelfix.files.outputs import atomic_write_bytes, atomic_write_json

    full = names == list(ROWS)
    stem = "matrix" if full else "matrix-partial"
    command = " ".join(["python examples/matrix.py", *(argv if argv is not None else sys.argv[1:])])
    head = commit()
    work = args.out if args.out else Path(tempfile.mkdtemp(prefix="labelfix-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}

    def write() -> None:
        ordered = [results[n] for n in names if n in results]
        h = headline(ordered)
        atomic_write_json(
            args.docs / f"{stem}.json", {"command": command, "code": head, "headline": h, "rows": ordered}
        )
        atomic_write_bytes(args.docs / f"{stem}.md", markdown(ordered, h, command, head, len(names)).encode())

    def report(res: dict) -> None:
        results[res["name"]] = res
        if res.get("crash"):
            msg = f"CRASH {res['crash']}"
        else:
            lf = res.get("labelfix") or {}
            msg = (
                f"labelfix F1 {_fmt(lf.get('f1'))} vs {_fmt(res.get('best_cleanlab_f1'))} ({res.get('best_cleanlab')}) "
                f"ratio {_fmt(res.get('ratio'))}; refined {_fmt(res.get('refined_argmax_accuracy'))} / "
                f"{_fmt(res.get('refined_csv_accuracy'))} floor {_fmt(res.get('floor'))}"
            )
            if res.get("labelfix_error"):
                msg += f"; labelfix {res['labelfix_error']['type']}: {res['labelfix_error']['message'][:100]}"
        print(f"[{len(results)}/{len(names)}] {res['name']}: {msg} ({res.get('row_s')} s)", flush=True)
        write()

    try:
        if args.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.jobs) as pool:
                futures = [pool.submit(run_one, n, args.data, work, args.out is not None) for n in names]
                for f in futures:
                    report(f.result())
        else:
            for n in names:
                report(run_one(n, args.data, work, args.out is not None))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    ordered = [results[n] for n in names]
    h = headline(ordered)
    print()
    print("\n".join(table(ordered)))
    print()
    print(headline_text(h))
    print(f"written: {args.docs / (stem + '.md')}, {args.docs / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
