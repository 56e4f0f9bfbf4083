"""`refine`: refined soft labels, ambiguity and actions from a scan run (algorithm.md 5-9).

Reads the scan's table and graph and recomputes scan's noise posterior (labelfix.core.detect); when
`distill` has left a student view (`student_embeddings.npy`, `student_probs.npy`) that passed the
mutual-round guard, the student's probabilities and its own graph's neighbour vote join the pool
of experts (the mutual round). The soft label is the posterior over the true class.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from labelfix import __version__
from labelfix.commands.scan import EMBEDDINGS_FILE, GRAPH_IDS, GRAPH_SIMS, SCAN_FILE, SUMMARY_FILE
from labelfix.core.detect import detect
from labelfix.core.graph import KnnGraph, build_knn
from labelfix.core.scoring import label_quality
from labelfix.errors import InputError, RunDirError
from labelfix.files.outputs import (
    atomic_write_bytes,
    atomic_write_json,
    check_version,
    list_column,
    read_parquet,
    write_parquet,
)
from labelfix.progress import NullProgress, Progress

REFINED_FILE = "refined.parquet"
REFINED_CSV = "labels.refined.csv"
STUDENT_EMB = "student_embeddings.npy"
STUDENT_PROBS = "student_probs.npy"


@dataclass(frozen=True)
class RefineConfig:
    """Attributes:
    rounds: refit rounds of the noise posterior on an embedding graph (scan uses 3; the same
        number here gives scan's flags exactly when there is no student view).
    sharpen_at: rows of the soft label whose maximum reaches this are sharpened.
    temperature: sharpening temperature (p^(1/T), renormalised).
    relabel_max_ambiguity: a flagged sample is relabelled only below this ambiguity...
    relabel_min_confidence: ...and when its refined label's probability reaches this; else review.
    drop_review: leave `review` rows out of labels.refined.csv (default: keep them unchanged).
    """

    rounds: int = 3
    sharpen_at: float = 0.9
    temperature: float = 0.5
    relabel_max_ambiguity: float = 0.5
    relabel_min_confidence: float = 0.5
    drop_review: bool = False
    k: int = 20
    gamma: float = 3.0

    def validate(self) -> None:
        if self.rounds < 1:
            raise InputError(f"--rounds must be >= 1 (got {self.rounds})")
        if not 0.0 < self.temperature <= 1.0:
            raise InputError(f"--temperature must be in (0, 1] (got {self.temperature})")
        if not 0.0 <= self.relabel_min_confidence <= 1.0:
            raise InputError(f"--min-confidence must be in [0, 1] (got {self.relabel_min_confidence})")
        if not 0.0 <= self.relabel_max_ambiguity <= 1.0:
            raise InputError(f"--max-ambiguity must be in [0, 1] (got {self.relabel_max_ambiguity})")


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    mid = 0.5 * (p + q)
    return np.clip(_entropy(mid) - 0.5 * _entropy(p) - 0.5 * _entropy(q), 0.0, None)


def sharpen(posterior: np.ndarray, sharpen_at: float, temperature: float) -> np.ndarray:
    """The posterior over the true class, rows with max >= sharpen_at sharpened (p^(1/T)); rows sum to 1."""
    r = np.array(posterior, dtype=np.float64, copy=True)
    sharp = r.max(axis=1) >= sharpen_at
    if sharp.any():
        s = r[sharp] ** (1.0 / temperature)
        r[sharp] = s / s.sum(axis=1, keepdims=True)
    return (r / r.sum(axis=1, keepdims=True)).astype(np.float32)


def ambiguity(soft: np.ndarray, p_lp: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """0.5 H(r)/log C + 0.5 JS(graph || p)/log 2, in [0, 1]: how unsure the refined soft label r
    is, plus how much the graph's view (`p_lp`: its neighbour vote) and the evidence `probs`
    disagree."""
    c = soft.shape[1]
    a = 0.5 * _entropy(soft) / np.log(c) + 0.5 * js_divergence(p_lp, probs) / np.log(2)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def load_run(run_dir: Path) -> tuple:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: run directory not found")
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise RunDirError(f"{summary_path}: missing (run labelfix scan first)")
    summary = json.loads(summary_path.read_text())
    check_version(summary.get("labelfix_version"), summary_path)
    df, meta = read_parquet(run_dir / SCAN_FILE)
    for name in (GRAPH_IDS, GRAPH_SIMS):
        if not (run_dir / name).is_file():
            raise RunDirError(f"{run_dir / name}: missing (run labelfix scan again)")
    emb_path = run_dir / EMBEDDINGS_FILE
    if not emb_path.is_file() and summary.get("teacher", {}).get("cache"):
        emb_path = run_dir / summary["teacher"]["cache"] / EMBEDDINGS_FILE
    if not emb_path.is_file():
        raise RunDirError(f"{emb_path}: teacher embeddings missing (run labelfix scan again)")
    graph = KnnGraph(np.load(run_dir / GRAPH_IDS), np.load(run_dir / GRAPH_SIMS), summary["graph"]["index"])
    if len(graph.ids) != len(df):
        raise RunDirError(f"{run_dir / GRAPH_IDS}: {len(graph.ids)} rows but {SCAN_FILE} has {len(df)}")
    return summary, df, meta, graph, np.load(emb_path, mmap_mode="r")


def refine(
    run_dir: Path, cfg: RefineConfig | None = None, progress: Progress | None = None, mutual: bool = True
) -> dict:
    """Write refined.parquet and labels.refined.csv into `run_dir`; update summary.json.

    A student view left by distill is used (mutual rounds) only when the comparison distill
    recorded in student.json says the student was at least as good as the teacher on held-out
    rows (`labelfix.commands.distill.mutual_guard`); otherwise the refinement is teacher-only and a warning
    goes into the statistics. `mutual=False` (CLI `--no-mutual`) ignores any student view: the
    outputs are then those of a refine before distill. Returns the refine statistics (also
    stored under summary["refine"]).
    """
    cfg = cfg or RefineConfig()
    cfg.validate()
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    summary, df, meta, graph, emb = load_run(run_dir)
    names = list(summary["class_names"])
    y = df["given_index"].to_numpy().astype(np.int64)
    probs = list_column(df, "teacher_probs")
    clean = df["clean_prob"].to_numpy().astype(np.float64)
    graph_from_probs = summary["graph"].get("built_from") == "pred_probs"

    view = (run_dir / STUDENT_EMB).is_file() and (run_dir / STUDENT_PROBS).is_file()
    guard, guard_warning = None, None
    if view and mutual:
        from labelfix.commands.distill import recorded_guard

        guard, guard_warning = recorded_guard(run_dir)
    student = view and mutual and guard_warning is None
    extra, more_graphs = {}, {}
    if student:
        s_emb = np.load(run_dir / STUDENT_EMB)
        if len(s_emb) != len(y):
            raise RunDirError(f"{run_dir / STUDENT_EMB}: {len(s_emb)} rows, expected {len(y)}")
        s_graph = build_knn(s_emb, int(graph.ids.shape[1]), progress=progress)
        more_graphs["student"] = (s_graph.ids, s_graph.sims)
        extra["student probabilities"] = np.load(run_dir / STUDENT_PROBS)
        if extra["student probabilities"].shape != probs.shape:
            raise RunDirError(
                f"{run_dir / STUDENT_PROBS}: shape {extra['student probabilities'].shape}, expected {probs.shape}"
            )

    seed = int(summary.get("seed", 0))
    with progress.task("refine: noise posterior", total=1) as task:
        # Teacher-only, this is exactly scan's detection (same inputs, seed and rounds); with a
        # student, its probabilities and its graph's vote join the pool, and the likelihood fit
        # gives them the weight the data supports (zero for a useless student).
        det = detect(
            probs,
            y,
            graph.ids,
            graph.sims,
            not graph_from_probs,
            extra=extra,
            gamma=cfg.gamma,
            seed=seed,
            rounds=cfg.rounds,
            more_graphs=more_graphs,
        )
        task.advance()
    clean = (1.0 - det.p_wrong).astype(np.float64)
    soft = sharpen(det.posterior, cfg.sharpen_at, cfg.temperature)
    # disagreement of the graph with the evidence actually trusted (the fitted pool), so a
    # weak model that the pool outweighs does not make every row ambiguous
    amb = ambiguity(soft, det.vote, det.evidence)
    quality = label_quality(det.evidence, y)
    flags = det.flags
    refined = soft.argmax(axis=1)
    confident = soft.max(axis=1) >= cfg.relabel_min_confidence
    changed = refined != y
    action = np.full(len(y), "keep", dtype=object)
    is_relabel = changed & (amb < cfg.relabel_max_ambiguity) & confident
    action[is_relabel] = "relabel"
    action[(changed | flags) & ~is_relabel] = "review"
    weight = np.where(action == "review", 0.0, 1.0 - amb).astype(np.float32)
    refined_label = np.where(action == "relabel", refined, y)

    names_arr = np.array(names, dtype=object)
    table = {
        "path": df["path"].to_numpy().astype(str),
        "given_label": df["given_label"].to_numpy().astype(str),
        "given_index": y,
        "refined_label": names_arr[refined].astype(str),
        "refined_index": refined.astype(np.int64),
        "soft_label": soft,
        "ambiguity": amb,
        "label_quality": quality,
        "clean_prob": clean.astype(np.float32),
        "is_issue": flags,
        "action": action.astype(str),
        "weight": weight,
    }
    stats = {
        "labelfix_version": __version__,
        "config": asdict(cfg),
        "mutual_rounds": bool(student),
        "detection": det.report(),
        "student_view": "none"
        if not view
        else "used"
        if student
        else "ignored (--no-mutual)"
        if not mutual
        else "skipped (guard)",
        "mutual_guard": guard,
        "warnings": [guard_warning] if guard_warning else [],
        "counts": {a: int((action == a).sum()) for a in ("keep", "relabel", "review")},
        "refined_differs_from_given": int(changed.sum()),
        "mean_ambiguity": round(float(amb.mean()), 4),
        "per_class": [
            {
                "class": names[k],
                "n": int((y == k).sum()),
                "relabelled_from": int(((action == "relabel") & (y == k)).sum()),
                "relabelled_to": int(((action == "relabel") & (refined_label == k) & (y != k)).sum()),
                "review": int(((action == "review") & (y == k)).sum()),
            }
            for k in range(len(names))
        ],
    }
    new_meta = dict(meta, refine=asdict(cfg))
    write_parquet(run_dir / REFINED_FILE, table, new_meta)
    _write_refined_csv(run_dir, summary, df, names_arr[refined_label], action, cfg.drop_review)
    stats["time_s"] = round(time.perf_counter() - t0, 3)
    summary["refine"] = stats
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return stats


def _write_refined_csv(
    run_dir: Path, summary: dict, df, labels: np.ndarray, action: np.ndarray, drop_review: bool
) -> None:
    """The user's CSV with labels replaced where action is relabel (same columns and order)."""
    import pandas as pd

    inp = summary["inputs"]
    src = inp.get("labels_csv")
    if src and Path(src).is_file():
        user = pd.read_csv(src, dtype=str, keep_default_na=False)
        if len(user) != len(df) or (user[inp["path_col"]].str.strip().to_numpy() != df["path"].to_numpy()).any():
            raise RunDirError(f"{src}: changed since the scan (rows differ); run labelfix scan again")
        col = inp["label_col"]
        user[col] = np.where(action == "relabel", labels, user[col].to_numpy())
    else:
        user = pd.DataFrame({"path": df["path"].to_numpy(), "label": labels})
    if drop_review:
        user = user[action != "review"]
    atomic_write_bytes(run_dir / REFINED_CSV, user.to_csv(index=False).encode())
