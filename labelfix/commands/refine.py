"""`refine`: the shell around labelfix.core.refine.refine_arrays.

Reads the scan run (labelfix.files.rundir.RunDir validates every file), adds the student view
that `distill` left when it passed the mutual-round guard, and commits refined.parquet,
labels.refined.csv and the updated summary.json together.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from labelfix import __version__
from labelfix.commands.scan import parquet_columns
from labelfix.core.graph import KnnGraph, build_knn
from labelfix.core.refine import (
    WEAK_NO_RELABEL,
    RefineConfig,
    Refined,
    ambiguity,
    js_divergence,
    refine_arrays,
    sharpen,
)
from labelfix.core.sparse import SOFT_COLUMNS, TOP_COLUMNS, TopM, is_sparse
from labelfix.errors import RunDirError
from labelfix.files import rundir as rd
from labelfix.files.inputs import sha256_file
from labelfix.files.outputs import atomic_write_bytes, atomic_write_json, list_column, write_parquet
from labelfix.files.rundir import RunDir
from labelfix.progress import NullProgress, Progress

__all__ = ["RefineConfig", "refine", "load_run", "ambiguity", "js_divergence", "sharpen"]

# Kept for callers of 0.2: the names now live in labelfix.files.rundir.
REFINED_FILE, REFINED_CSV, STUDENT_EMB, STUDENT_PROBS = rd.REFINED, rd.REFINED_CSV, rd.STUDENT_EMB, rd.STUDENT_PROBS


def load_run(run_dir: Path) -> tuple:
    """(summary, scan table, its metadata, graph, teacher embeddings) of a scan run, validated."""
    run = RunDir(run_dir)
    summary = run.load_summary()
    df, meta = run.load_scan(summary)
    g = run.load_graph(summary)
    return summary, df, meta, KnnGraph(g.ids, g.sims, g.index_kind), run.load_embeddings(summary)


def student_view(run: RunDir, n: int, c: int, k: int, mutual: bool, progress) -> tuple[dict, dict, dict]:
    """The student's probabilities and graph for a mutual round, when distill left a view that
    passed its guard. Returns (extra experts, extra graphs, statistics)."""
    view = run.written(rd.STUDENT_EMB) and run.written(rd.STUDENT_PROBS)
    guard, warning = None, None
    if view and mutual:
        from labelfix.commands.distill import recorded_guard

        guard, warning = recorded_guard(run.path)
    used = view and mutual and warning is None
    stats = {
        "mutual_rounds": bool(used),
        "student_view": "none"
        if not view
        else "used"
        if used
        else "ignored (--no-mutual)"
        if not mutual
        else "skipped (guard)",
        "mutual_guard": guard,
        "warnings": [warning] if warning else [],
    }
    if not used:
        return {}, {}, stats
    s_emb = np.asarray(run.load_array(rd.STUDENT_EMB, n, "f"))
    s_probs = np.asarray(run.load_array(rd.STUDENT_PROBS, n, "f", c))
    s_graph = build_knn(s_emb, k, progress=progress)
    return {"student probabilities": s_probs}, {"student": (s_graph.ids, s_graph.sims)}, stats


def refine(
    run_dir: Path, cfg: RefineConfig | None = None, progress: Progress | None = None, mutual: bool = True
) -> dict:
    """Write refined.parquet and labels.refined.csv into `run_dir`; update summary.json.

    A student view left by distill is used (mutual rounds) only when the comparison distill
    recorded in student.json says the student was at least as good as the teacher on held-out
    rows (`labelfix.commands.distill.mutual_guard`); otherwise the refinement is teacher-only
    and a warning goes into the statistics. `mutual=False` (CLI `--no-mutual`) ignores any
    student view: the outputs are then those of a refine before distill. Returns the refine
    statistics (also stored under summary["refine"]). All three files change together or not
    at all."""
    cfg = cfg or RefineConfig()
    cfg.validate()
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    run = RunDir(run_dir)
    summary = run.load_summary()
    df, meta = run.load_scan(summary)
    graph = run.load_graph(summary)
    names = list(summary["class_names"])
    y = df["given_index"].to_numpy().astype(np.int64)
    probs = teacher_probs(df, len(names), int(graph.ids.shape[1]))
    k = cfg.k or int(graph.ids.shape[1])
    extra, more_graphs, stats = student_view(run, len(y), len(names), k, mutual, progress)
    if summary.get("weak_teacher"):  # scan kept evidence at chance (--allow-weak-teacher)
        cfg = replace(cfg, allow_relabel=False)
        stats["warnings"] = [*stats["warnings"], WEAK_NO_RELABEL]
    with progress.task("refine: noise posterior", total=1) as task:
        res = refine_arrays(
            y,
            probs,
            graph.ids,
            graph.sims,
            independent_graph=summary["graph"].get("built_from") != "pred_probs",
            cfg=cfg,
            seed=int(summary.get("seed", 0)),
            extra=extra,
            more_graphs=more_graphs,
            known_fits=(summary.get("detection") or {}).get("pool_fits"),
        )
        task.advance()
    names_arr = np.array(names, dtype=object)
    csv_bytes = refined_csv(summary, df, names_arr[res.label], res.action, cfg.drop_review)
    stats = refine_stats(cfg, res, y, names, stats)
    with run.commit("refine") as stage:
        table = parquet_columns(refined_table(df, y, names_arr, res))
        write_parquet(stage / rd.REFINED, table, dict(meta, refine=asdict(cfg)))
        atomic_write_bytes(stage / rd.REFINED_CSV, csv_bytes)
        write_review_files(stage, refined_frame(df, names_arr, res), df, names)
        stats["time_s"] = round(time.perf_counter() - t0, 3)
        summary["refine"] = stats
        atomic_write_json(stage / rd.SUMMARY, summary)
    return stats


def _int_rows(df, name: str) -> np.ndarray:
    return np.stack(df[name].to_numpy()).astype(np.int32)


def teacher_probs(df, c: int, k: int | None = None):
    """scan.parquet's teacher probabilities: (N, C) float32 up to SPARSE_ABOVE classes; above,
    a TopM of its top-m columns (np.asarray(...) densifies it: N x C), with the values at the
    given label and at the graph neighbours' labels that refine's detection needs."""
    if not is_sparse(c):
        return list_column(df, "teacher_probs")
    cls, probs, given, near = TOP_COLUMNS
    near = list_column(df, near)
    if k is not None and near.shape[1] != k:
        raise RunDirError(
            f"{near.shape[1]} teacher_neighbour_probs per row in scan.parquet, graph k {k}; run labelfix scan again"
        )
    return TopM(_int_rows(df, cls), list_column(df, probs), c, df[given].to_numpy().astype(np.float32), near)


def soft_labels(ref, c: int) -> np.ndarray:
    """refined.parquet's soft labels as (N, C) float32 (densified from the top-m lists above
    SPARSE_ABOVE classes: the mass outside a row's list spread evenly)."""
    if not is_sparse(c):
        return list_column(ref, "soft_label")
    cls, probs = SOFT_COLUMNS
    return TopM(_int_rows(ref, cls), list_column(ref, probs), c).to_dense()


def soft_columns(res: Refined) -> dict:
    if isinstance(res.soft, TopM):
        return dict(zip(SOFT_COLUMNS, (res.soft.classes, res.soft.probs)))
    return {"soft_label": res.soft}


def refined_frame(df, names: np.ndarray, res: Refined):
    import pandas as pd

    return pd.DataFrame(
        {
            "path": df["path"].to_numpy().astype(str),
            "given_label": df["given_label"].to_numpy().astype(str),
            "refined_label": names[res.refined].astype(str),
            "ambiguity": res.ambiguity,
            "action": res.action,
        }
    )


def write_review_files(stage: Path, refined, scan, names: list[str]) -> None:
    """review.csv and the Label Studio tasks and config (labelfix.files.review)."""
    from labelfix.files.review import label_studio_config, label_studio_tasks, review_rows

    rows = review_rows(refined, scan)
    atomic_write_bytes(stage / rd.REVIEW_CSV, rows.to_csv(index=False).encode())
    atomic_write_json(stage / rd.LABEL_STUDIO, label_studio_tasks(rows, __version__), indent=None)
    atomic_write_bytes(stage / rd.LABEL_STUDIO_CONFIG, label_studio_config(names).encode())


def refined_table(df, y: np.ndarray, names: np.ndarray, res: Refined) -> dict:
    """refined.parquet's columns (README: "refined.parquet")."""
    return {
        "path": df["path"].to_numpy().astype(str),
        "given_label": df["given_label"].to_numpy().astype(str),
        "given_index": y,
        "refined_label": names[res.refined].astype(str),
        "refined_index": res.refined,
        **soft_columns(res),
        "ambiguity": res.ambiguity,
        "label_quality": res.quality,
        "clean_prob": res.clean_prob,
        "is_issue": res.flags,
        "action": res.action,
        "weight": res.weight,
    }


def refine_stats(cfg: RefineConfig, res: Refined, y: np.ndarray, names: list[str], view_stats: dict) -> dict:
    action, label = res.action, res.label
    return {
        "labelfix_version": __version__,
        "config": asdict(cfg),
        "mutual_rounds": view_stats["mutual_rounds"],
        "detection": res.detection.report(),
        "student_view": view_stats["student_view"],
        "mutual_guard": view_stats["mutual_guard"],
        "warnings": view_stats["warnings"],
        "counts": {a: int((action == a).sum()) for a in ("keep", "relabel", "review")},
        "refined_differs_from_given": int((res.refined != y).sum()),
        "mean_ambiguity": round(float(res.ambiguity.mean()), 4),
        "per_class": [
            {
                "class": names[k],
                "n": int((y == k).sum()),
                "relabelled_from": int(((action == "relabel") & (y == k)).sum()),
                "relabelled_to": int(((action == "relabel") & (label == k) & (y != k)).sum()),
                "review": int(((action == "review") & (y == k)).sum()),
            }
            for k in range(len(names))
        ],
    }


def refined_csv(summary: dict, df, labels: np.ndarray, action: np.ndarray, drop_review: bool) -> bytes:
    """The user's CSV with labels replaced where action is relabel (same columns and order).
    Checked before anything is written: a CSV that changed since the scan is exit 4."""
    import pandas as pd

    inp = summary["inputs"]
    src = inp.get("labels_csv")
    if src:
        if not Path(src).is_file():
            raise RunDirError(
                f"{src}: the labels CSV the scan read is gone (labels.refined.csv is that file, relabelled); put it back or run labelfix scan again"
            )
        if inp.get("labels_sha256") and sha256_file(Path(src)) != inp["labels_sha256"]:
            raise RunDirError(f"{src}: changed since the scan (its SHA-256 differs); run labelfix scan again")
        user = pd.read_csv(src, dtype=str, keep_default_na=False)
        path_col, col = inp.get("path_col", "path"), inp.get("label_col", "label")
        if path_col not in user.columns or col not in user.columns:
            raise RunDirError(f"{src}: columns {path_col!r}/{col!r} gone since the scan; run labelfix scan again")
        # rows scan left out (--skip-unreadable) stay in the CSV as they are
        skipped = {int(x["row"]) - 2 for x in summary.get("skipped_unreadable") or []}
        scanned = np.array([i not in skipped for i in range(len(user))], dtype=bool)
        paths = user[path_col].str.strip().to_numpy()[scanned]
        if len(paths) != len(df) or (paths != df["path"].to_numpy()).any():
            raise RunDirError(f"{src}: changed since the scan (rows differ); run labelfix scan again")
        new = user[col].to_numpy().copy()
        new[scanned] = np.where(action == "relabel", labels, new[scanned])
        user[col] = new
        review = np.zeros(len(user), dtype=bool)
        review[scanned] = action == "review"
    else:
        user = pd.DataFrame({"path": df["path"].to_numpy(), "label": labels})
        review = action == "review"
    if drop_review:
        user = user[~review]
    return user.to_csv(index=False).encode()
