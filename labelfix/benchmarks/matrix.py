"""The no-images generalisation matrix: rows of (probabilities, optional embeddings,
noisy labels, true labels), each run through labelfix's scan + refine exactly as a user would
(Python API, files in a work folder) and through every cleanlab variant on the same inputs.

Row catalogue, command line and tables live in `examples/matrix.py`; the rows are built in
labelfix.benchmarks.rows; this module runs a row through labelfix and cleanlab and scores it."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np

from labelfix.benchmarks.rows import (  # noqa: F401  (row builders re-exported for callers)
    CIFAR_MODELS,
    Row,
    cifar_row,
    human_row,
    knn_accuracy,
    renormalise,
    restrict_classes,
    stratified_subset,
    synthetic_row,
)
from labelfix.core.metrics import precision_recall_f1

CLEANLAB_FILTERS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)


def _f(x, nd=4):
    return None if x is None else round(float(x), nd)


def _prf(flags: np.ndarray, truth: np.ndarray) -> dict:
    m = precision_recall_f1(flags, truth)
    return {
        "precision": _f(m["precision"]),
        "recall": _f(m["recall"]),
        "f1": _f(m["f1"]),
        "flagged": int(np.sum(flags)),
    }


def cleanlab_all(y: np.ndarray, probs: np.ndarray, emb: np.ndarray | None, truth: np.ndarray) -> dict:
    """Every cleanlab find_label_issues filter on `probs`, and Datalab's features-only label check
    on `emb` when given; each scored against `truth`. A failing variant is recorded, not raised."""
    out: dict = {}
    try:
        from cleanlab.filter import find_label_issues
    except ImportError as exc:
        return {"cleanlab": {"error": f"cleanlab not importable: {exc}"}}
    for fb in CLEANLAB_FILTERS:
        t = time.perf_counter()
        try:
            flags = find_label_issues(y, probs, filter_by=fb, n_jobs=1)
            out[fb] = dict(_prf(flags, truth), seconds=_f(time.perf_counter() - t, 2))
        except Exception as exc:  # noqa: BLE001 - one variant failing is a recorded outcome
            out[fb] = {"error": f"{type(exc).__name__}: {exc}"[:300], "seconds": _f(time.perf_counter() - t, 2)}
    if emb is not None:
        t = time.perf_counter()
        try:
            from cleanlab import Datalab

            lab = Datalab(data={"label": np.asarray(y)}, label_name="label", verbosity=0)
            lab.find_issues(features=np.asarray(emb, dtype=np.float32), issue_types={"label": {}})
            flags = lab.get_issues("label")["is_label_issue"].to_numpy()
            out["Datalab(features)"] = dict(_prf(flags, truth), seconds=_f(time.perf_counter() - t, 2))
        except Exception as exc:  # noqa: BLE001
            out["Datalab(features)"] = {
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "seconds": _f(time.perf_counter() - t, 2),
            }
    return out


def run_labelfix(row: Row, work: Path, seed: int = 0) -> dict:
    """Write the row as a user's files (labels CSV, probabilities .npy, embeddings .npy), then
    labelfix.commands.scan.scan and labelfix.commands.refine.refine into `work/run`. Returns timings and, on a
    LabelfixError (bad input, a weak-teacher refusal...), the error as an outcome."""
    import pandas as pd

    from labelfix.commands.refine import refine
    from labelfix.commands.scan import ScanInputs, scan
    from labelfix.config import ScanConfig
    from labelfix.errors import LabelfixError

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    c = row.probs.shape[1]
    names = row.class_names or [f"c{k:02d}" for k in range(c)]
    pd.DataFrame({"path": [f"row{i:07d}" for i in range(len(row.noisy))], "label": np.array(names)[row.noisy]}).to_csv(
        work / "labels.csv", index=False
    )
    if row.model_probs:
        prob_files: Path | tuple[Path, ...] = tuple(work / f"probs{i}.npy" for i in range(len(row.model_probs)))
        for f, p in zip(prob_files, row.model_probs):
            np.save(f, np.asarray(p))
    else:
        prob_files = work / "probs.npy"
        np.save(prob_files, np.asarray(row.probs))
    emb_path = None
    if row.emb is not None:
        emb_path = work / "emb.npy"
        np.save(emb_path, np.asarray(row.emb))
    run = work / "run"
    out: dict = {"run": str(run), "class_names": names}
    t = time.perf_counter()
    try:
        scan(
            ScanInputs(labels_csv=work / "labels.csv", pred_probs=prob_files, embeddings=emb_path, classes=names),
            ScanConfig(seed=seed),
            run,
        )
        out["scan_s"] = _f(time.perf_counter() - t, 2)
        t = time.perf_counter()
        refine(run)
        out["refine_s"] = _f(time.perf_counter() - t, 2)
    except LabelfixError as exc:
        out["error"] = {
            "type": type(exc).__name__,
            "exit_code": getattr(exc, "exit_code", None),
            "message": str(exc)[:500],
            "stage": "refine" if "scan_s" in out else "scan",
        }
        out.setdefault("scan_s", _f(time.perf_counter() - t, 2))
    return out


def evaluate_row(row: Row, work: Path, seed: int = 0, with_cleanlab: bool = True) -> dict:
    """Run labelfix and cleanlab on `row` and score both against the truth."""
    import pandas as pd

    from labelfix.files.outputs import list_column

    t_row = time.perf_counter()
    y, true = np.asarray(row.noisy, dtype=np.int64), np.asarray(row.true, dtype=np.int64)
    truth = y != true
    probs = np.asarray(row.probs)
    res: dict = {
        "name": row.name,
        **row.info,
        "n": int(len(y)),
        "classes": int(probs.shape[1]),
        "has_embeddings": row.emb is not None,
        "actual_noise_rate": _f(truth.mean()),
        "given_accuracy": _f((~truth).mean()),
        "teacher_accuracy": _f((probs.argmax(1) == true).mean()),
        "teacher_agreement_with_given": _f((probs.argmax(1) == y).mean()),
    }
    res["floor"] = max(res["given_accuracy"], res["teacher_accuracy"])
    if row.emb is not None:
        res["emb_knn_accuracy"] = _f(knn_accuracy(row.emb, true))
    t = time.perf_counter()
    lf = run_labelfix(row, Path(work), seed)
    res["labelfix_s"] = _f(time.perf_counter() - t, 2)
    res["scan_s"], res["refine_s"] = lf.get("scan_s"), lf.get("refine_s")
    if "error" in lf:
        res["labelfix_error"] = lf["error"]
    run = Path(lf["run"])
    if (run / "scan.parquet").is_file() and lf.get("error", {}).get("stage") != "scan":
        import json

        scan_df = pd.read_parquet(run / "scan.parquet")
        summary = json.loads((run / "summary.json").read_text())
        flags = scan_df["is_issue"].to_numpy().astype(bool)
        res["labelfix"] = _prf(flags, truth)
        if truth.any() and not truth.all():
            from labelfix.core.metrics import auroc

            res["labelfix"]["auroc"] = _f(auroc(scan_df["issue_score"].to_numpy(), truth))
        res["estimated_noise_rate"] = summary.get("estimated_noise_rate")
        res["labelfix_warnings"] = summary.get("warnings", [])
        # the probabilities labelfix read back must be the row's (same inputs for both sides)
        res["labelfix_teacher_accuracy"] = _f((list_column(scan_df, "teacher_probs").argmax(1) == true).mean())
        if (run / "refined.parquet").is_file():
            ref = pd.read_parquet(run / "refined.parquet")
            idx = ref["refined_index"].to_numpy()
            res["refined_argmax_accuracy"] = _f((idx == true).mean())
            index = {n: j for j, n in enumerate(lf["class_names"])}
            csv = pd.read_csv(run / "labels.refined.csv", dtype=str, keep_default_na=False)
            csv_y = np.array([index[v] for v in csv["label"]])
            res["refined_csv_accuracy"] = _f((csv_y == true).mean())
            res["refined_actions"] = {a: int((ref["action"] == a).sum()) for a in ("keep", "relabel", "review")}
            relabel = (ref["action"] == "relabel").to_numpy()
            # what labels.refined.csv changes without a person: right how often
            res["relabel_precision"] = _f((idx[relabel] == true[relabel]).mean()) if relabel.any() else None
            res["refined_argmax_ok"] = bool(res["refined_argmax_accuracy"] >= res["floor"])
            res["refined_csv_ok"] = bool(res["refined_csv_accuracy"] >= res["floor"])
    if with_cleanlab:
        t = time.perf_counter()
        res["cleanlab"] = cleanlab_all(y, probs, row.emb, truth)
        res["cleanlab_s"] = _f(time.perf_counter() - t, 2)
        scored = {k: v for k, v in res["cleanlab"].items() if v.get("f1") is not None}
        if scored:
            best = max(scored, key=lambda k: (scored[k]["f1"], k))
            res["best_cleanlab"], res["best_cleanlab_f1"] = best, scored[best]["f1"]
        lf_f1 = res.get("labelfix", {}).get("f1")
        if truth.any() and lf_f1 is not None and res.get("best_cleanlab_f1"):
            res["ratio"] = _f(lf_f1 / res["best_cleanlab_f1"], 3)
        else:
            res["ratio"] = None  # no wrong labels (F1 undefined), a labelfix error, or no cleanlab result
        if scored:
            res["cleanlab_min_flagged"] = min(v["flagged"] for v in scored.values())
    res["row_s"] = _f(time.perf_counter() - t_row, 1)
    return res


def safe_evaluate(build, name: str, work: Path, seed: int = 0) -> dict:
    """Build a row with `build()` and evaluate it; anything unexpected becomes a recorded crash."""
    t = time.perf_counter()
    try:
        row = build()
        t_build = time.perf_counter() - t
        res = evaluate_row(row, work, seed)
        res["build_s"] = _f(t_build, 2)
        return res
    except Exception as exc:  # noqa: BLE001 - the matrix records a crashed row and goes on
        return {
            "name": name,
            "crash": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-2000:],
            "row_s": _f(time.perf_counter() - t, 1),
        }
