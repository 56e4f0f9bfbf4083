"""`scan`: the shell around labelfix.core.issues.find_issues.

read inputs -> evidence (the given --pred-probs/--embeddings, or a teacher over the images) ->
kNN graph -> find_issues (arrays in, a typed result out) -> one staged commit of the run files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix import __version__
from labelfix.commands.evidence import Evidence, build_graph, evidence_source, given_evidence, teacher_evidence
from labelfix.config import ScanConfig
from labelfix.core.duplicates import Duplicates, find_duplicates, pixel_hashes
from labelfix.core.issues import Issues, find_issues
from labelfix.environment import library_versions
from labelfix.errors import InputError
from labelfix.files import rundir as rd
from labelfix.files.baseline import BaselineDiff, diff_against, read_baseline
from labelfix.files.inputs import (
    LabelSet,
    read_image_folder,
    read_labels_csv,
)
from labelfix.files.outputs import atomic_save_npy, atomic_write_json, write_parquet
from labelfix.files.rundir import RunDir
from labelfix.progress import NullProgress, Progress

# Kept for callers of 0.2: the names now live in labelfix.files.rundir.
SCAN_FILE, SUMMARY_FILE, GRAPH_IDS, GRAPH_SIMS, EMBEDDINGS_FILE = (
    rd.SCAN,
    rd.SUMMARY,
    rd.GRAPH_IDS,
    rd.GRAPH_SIMS,
    rd.EMBEDDINGS,
)


MATRIX_IN_JSON = 50  # classes up to which C x C matrices are written into summary.json in full
MATRIX_TOP = 100  # largest off-diagonal entries kept in the JSON above that


@dataclass(frozen=True)
class ScanInputs:
    """What the user pointed scan at. Either `images_dir`, or `labels_csv` with `pred_probs`."""

    images_dir: Path | None = None
    labels_csv: Path | None = None
    path_col: str = "path"
    label_col: str = "label"
    classes: list[str] | None = None
    pred_probs: Path | tuple[Path, ...] | None = None  # several: one file per model, averaged
    embeddings: Path | None = None
    baseline: Path | None = None  # an earlier run (or its scan.parquet): new/fixed/unchanged issues
    skip_unreadable: bool = False  # leave out images that cannot be decoded (else exit 2 naming one)

    @property
    def prob_files(self) -> tuple[Path, ...]:
        """The --pred-probs files, one per model (empty without --pred-probs)."""
        if self.pred_probs is None:
            return ()
        if isinstance(self.pred_probs, (str, Path)):
            return (Path(self.pred_probs),)
        return tuple(Path(p) for p in self.pred_probs)


@dataclass
class ScanResult:
    out_dir: Path
    summary: dict
    table: dict = field(repr=False)
    baseline: BaselineDiff | None = None


class _Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = round(timer.times.get(name, 0.0) + time.perf_counter() - self.t, 3)

        return _T()


def load_labels(inputs: ScanInputs) -> LabelSet:
    if inputs.labels_csv is not None:
        return read_labels_csv(inputs.labels_csv, inputs.path_col, inputs.label_col, inputs.classes)
    if inputs.images_dir is None:
        raise InputError("give IMAGES_DIR, or --labels CSV with --pred-probs")
    if not Path(inputs.images_dir).is_dir():
        raise InputError(f"{inputs.images_dir}: images folder not found")
    return read_image_folder(inputs.images_dir, inputs.classes)


def skip_unreadable(inputs: ScanInputs, labels: LabelSet) -> tuple[LabelSet, list[dict]]:
    """With --skip-unreadable, the rows whose image cannot be decoded leave the scan (listed in
    summary.json as skipped_unreadable); without it, the first one is an error naming it."""
    if not inputs.skip_unreadable or inputs.pred_probs is not None:
        return labels, []
    from labelfix.files.images import unreadable_rows
    from labelfix.files.inputs import resolve_paths

    files = resolve_paths(inputs.images_dir, labels, str(inputs.labels_csv or inputs.images_dir))
    bad = unreadable_rows(files)
    if not bad:
        return labels, []
    keep = np.ones(labels.n, dtype=bool)
    keep[list(bad)] = False
    if not keep.any():
        raise InputError(f"{inputs.images_dir}: no image could be decoded ({files[0]}: {bad[0]})")
    skipped = [{"path": str(labels.paths[i]), "row": i + 2, "reason": why} for i, why in sorted(bad.items())]
    subset = LabelSet(labels.paths[keep], labels.given[keep], labels.y[keep], labels.class_names, labels.labels_sha256)
    return subset, skipped


def check_inputs(inputs: ScanInputs, cfg: ScanConfig) -> None:
    cfg.validate()
    if inputs.pred_probs is None and inputs.embeddings is not None:
        raise InputError("--embeddings needs --pred-probs (or leave both out to use a teacher)")
    if inputs.pred_probs is not None and inputs.labels_csv is None:
        raise InputError("--pred-probs needs --labels CSV (its rows follow the CSV's rows)")
    t = cfg.teacher
    unused = [f for f, v in (("--teacher", t.teacher != "auto"), ("--weights", t.weights), ("--arch", t.arch)) if v]
    if inputs.pred_probs is not None and unused:
        raise InputError(f"{'/'.join(unused)}: no teacher runs with --pred-probs (its probabilities are the evidence)")
    if inputs.pred_probs is None and inputs.images_dir is None:
        raise InputError("give IMAGES_DIR (the folder the CSV's paths are relative to), or --pred-probs")
    if inputs.pred_probs is None:
        from labelfix.models.teacher import validate_teacher

        validate_teacher(cfg.teacher)


def scan(inputs: ScanInputs, cfg: ScanConfig, out: Path, progress: Progress | None = None) -> ScanResult:
    """Embed (or read model outputs), build the kNN graph, estimate noise, flag issues.

    Writes `scan.parquet`, `summary.json`, the graph and the embedding cache into `out`,
    all or nothing (labelfix.files.rundir.RunDir.commit).
    """
    from labelfix.runtime import resolve_device, seed_everything

    progress = progress or NullProgress()
    check_inputs(inputs, cfg)
    timer, run = _Timer(), RunDir(out)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    with timer("read inputs"):
        labels = load_labels(inputs)
        labels, skipped = skip_unreadable(inputs, labels)
        cfg.check_rows(labels.n, teacher=inputs.pred_probs is None)
        base = read_baseline(inputs.baseline) if inputs.baseline is not None else None
    with run.commit("scan", clean=True, keep=(inputs.labels_csv, *inputs.prob_files, inputs.embeddings)) as stage:
        if inputs.pred_probs is not None:
            with timer("read inputs"):
                ev = given_evidence(inputs, labels, cfg.seed)
        else:
            ev = teacher_evidence(inputs, cfg, labels, run, stage, device, timer, progress)
        with timer("graph"):
            graph = build_graph(inputs, cfg, ev.emb, len(labels.y), device, progress)
        if inputs.pred_probs is not None:  # saved now and let go: N x D is not needed past the graph
            atomic_save_npy(stage / rd.EMBEDDINGS, ev.emb)
            ev.emb = None
        with timer("detection"):
            found = find_issues(
                labels.y,
                ev.probs,
                graph,
                graph_from_probs=ev.source == "pred_probs",
                source=evidence_source(inputs, cfg),
                with_features=inputs.embeddings is not None,
                allow_weak=cfg.allow_weak_teacher,
                gamma=cfg.gamma,
                seed=cfg.seed,
            )
        dup, hashes = None, ev.row_hashes  # decoded pixels below, else the files (--pred-probs)
        if ev.images is not None:
            with timer("duplicates"):
                hashes = pixel_hashes(ev.images)
                dup = find_duplicates(ev.images, labels.y, found.dense_posterior(), hashes)
            found = with_duplicates(found, dup)
        ev.images = None
        table = scan_table(labels, ev.probs, found, dup, hashes)
        summary = scan_summary(inputs, cfg, labels, ev, graph, found, device)
        summary["skipped_unreadable"] = skipped
        summary["duplicates"] = dup.report() if dup is not None else {"skipped": "no decoded images (--pred-probs)"}
        diff = None
        if base is not None:
            diff = diff_against(pd.DataFrame({k: v for k, v in table.items() if np.ndim(v) == 1}), *base)
            summary["baseline"] = diff.report()
            summary["warnings"] += diff.warnings
        meta = {"labelfix_version": __version__, "class_names": labels.class_names, "config": cfg.to_dict()}
        meta["seed"] = cfg.seed
        if found.teacher_top is not None:  # above SPARSE_ABOVE classes: top-m lists (README)
            meta["top_m"] = int(found.teacher_top.classes.shape[1])
        atomic_save_npy(stage / rd.GRAPH_IDS, graph.ids)
        atomic_save_npy(stage / rd.NOISE_MATRIX, found.noise_matrix(labels.y).astype(np.float32))
        atomic_save_npy(stage / rd.CONFIDENT_JOINT, found.noise.matrix.astype(np.float32))
        atomic_save_npy(stage / rd.GRAPH_SIMS, graph.sims)
        write_parquet(stage / rd.SCAN, parquet_columns(table), meta)
        summary["timings_s"] = dict(timer.times, total=round(sum(timer.times.values()), 3))
        atomic_write_json(stage / rd.SUMMARY, summary)
    return ScanResult(Path(out), summary, table, diff)


def with_duplicates(found: Issues, dup: Duplicates) -> Issues:
    """Duplicates whose given label differs from their group's consensus become label issues
    that suggest the consensus."""
    import dataclasses

    return dataclasses.replace(
        found, flags=found.flags | dup.wrong, suggested=np.where(dup.wrong, dup.consensus, found.suggested)
    )


def parquet_columns(table: dict) -> dict:
    """Integer (N, m) columns as Parquet lists of int32 (write_parquet stores 2-D arrays as float32 lists)."""
    import pyarrow as pa

    out = {}
    for name, col in table.items():
        if isinstance(col, np.ndarray) and col.ndim == 2 and col.dtype.kind in "iu":
            offsets = pa.array(np.arange(len(col) + 1, dtype=np.int32) * col.shape[1])
            col = pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(col, dtype=np.int32).ravel()))
        out[name] = col
    return out


def teacher_columns(probs: np.ndarray, found: Issues) -> dict:
    """teacher_probs (N x C) up to SPARSE_ABOVE classes; above, the top-m classes and their
    probabilities (most probable first), the probability of the given label and of each graph
    neighbour's given label (graph_ids.npy's columns): what refine's detection reads."""
    top = found.teacher_top
    if top is None:
        return {"teacher_probs": probs}
    from labelfix.core.sparse import TOP_COLUMNS

    return dict(zip(TOP_COLUMNS, (top.classes, top.probs, top.given, top.neighbours)))


def scan_table(
    labels: LabelSet, probs: np.ndarray, found: Issues, dup: Duplicates | None = None, hashes: list | None = None
) -> dict:
    """scan.parquet's columns (README: "scan.parquet")."""
    names = np.array(labels.class_names, dtype=object)
    clean = found.clean_prob
    n = len(labels.y)
    content = [h.hex() for h in hashes] if hashes is not None else [""] * n
    return {
        "path": labels.paths.astype(str),
        "given_label": labels.given.astype(str),
        "given_index": labels.y,
        **teacher_columns(probs, found),
        "clean_prob": clean,
        "is_issue": found.flags,
        "issue_score": found.p_wrong,
        "label_quality": found.quality,
        "suggested_label": names[found.suggested].astype(str),
        "suggested_index": found.suggested,
        "partition": np.where(clean >= 0.5, "clean", "noisy"),
        "in_small_loss": found.small_loss,
        "duplicate_group": dup.group if dup is not None else np.full(n, -1, dtype=np.int64),
        "duplicate_conflict": dup.conflict if dup is not None else np.zeros(n, dtype=bool),
        "content_sha256": np.array(content, dtype=object).astype(str),
    }


def matrix_record(m: np.ndarray, file: str, description: str) -> dict:
    """A C x C matrix for summary.json: in full up to MATRIX_IN_JSON classes; above, only its
    largest off-diagonal entries (the whole matrix is in `file`, written beside it), so
    summary.json stays small whatever C is."""
    c = len(m)
    rec = {"description": description, "file": file} if description else {"file": file}
    if c <= MATRIX_IN_JSON:
        rec["values"] = np.round(m, 4)
        return rec
    off = np.where(np.eye(c, dtype=bool), -np.inf, m)
    top = np.argsort(off, axis=None)[::-1][:MATRIX_TOP]
    rows, cols = np.unravel_index(top, m.shape)
    rec["values"] = None
    rec["largest_off_diagonal"] = [[int(i), int(j), round(float(m[i, j]), 4)] for i, j in zip(rows, cols)]
    return rec


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def stall_warnings(teacher_stats: dict) -> list[str]:
    return [
        f"teacher fold {fold['fold'] + 1} stalled (its training agreement with its labels stayed near the "
        "majority-class share): see teacher.folds in summary.json"
        for fold in teacher_stats.get("folds", [])
        if fold.get("stalled")
    ]


def _inputs_record(inputs: ScanInputs, hashes: dict) -> dict:
    def resolved(p):
        return str(Path(p).resolve()) if p else None

    return {
        "images_dir": resolved(inputs.images_dir),
        "labels_csv": resolved(inputs.labels_csv),
        "path_col": inputs.path_col,
        "label_col": inputs.label_col,
        "pred_probs": resolved(inputs.pred_probs)
        if len(inputs.prob_files) <= 1
        else [resolved(p) for p in inputs.prob_files],
        "embeddings": resolved(inputs.embeddings),
        **hashes,
    }


def _per_class(labels: LabelSet, found: Issues) -> list[dict]:
    y, c = labels.y, len(labels.class_names)
    counts = np.bincount(y, minlength=c)
    return [
        {
            "class": labels.class_names[k],
            "n": int(counts[k]),
            "issues": int(found.flags[y == k].sum()),
            "estimated_noise_rate": round(float(found.p_wrong[y == k].mean()) if counts[k] else 0.0, 4),
        }
        for k in range(c)
    ]


def scan_summary(inputs: ScanInputs, cfg: ScanConfig, labels: LabelSet, ev: Evidence, graph, found, device) -> dict:
    """summary.json (README: "summary.json"); timings are added by the caller."""
    y, noise = labels.y, found.noise
    from_probs = found.graph_from_probs
    return {
        "labelfix_version": __version__,
        "command": "scan",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": cfg.seed,
        "device": device,
        # numbers move with the thread count (float sums): it is recorded and in the cache key
        "threads": _threads(),
        "versions": library_versions(),
        "config": cfg.to_dict(),
        "inputs": _inputs_record(inputs, ev.hashes),
        "images": ev.image_info,
        "class_names": labels.class_names,
        "counts": {
            "samples": int(labels.n),
            "classes": len(labels.class_names),
            "issues": int(found.flags.sum()),
            "clean_partition": int((found.clean_prob >= 0.5).sum()),
            "small_loss": int(found.small_loss.sum()),
        },
        # The expected share of wrong labels under the fitted noise model (mean P(wrong)).
        "estimated_noise_rate": round(float(found.p_wrong.mean()), 4),
        "flagged_share": round(float(found.flags.mean()), 4),
        "per_class": _per_class(labels, found),
        "evidence": "teacher probabilities and their own neighbour graph"
        if from_probs
        else "teacher probabilities and the embedding graph's neighbour vote",
        "detection": found.detection.report(),
        "noise_matrix": matrix_record(
            found.noise_matrix(y),
            rd.NOISE_MATRIX,
            "P(true class = column | given class = row): mean posterior of the rows given each class",
        ),
        "confident_joint": {
            "description": "Confident Learning's calibrated estimate of the teacher probabilities (the noise model's starting T)",
            "noise_rate": round(noise.overall, 4),
            "per_class": np.round(noise.rates, 4),
            **matrix_record(noise.matrix, rd.CONFIDENT_JOINT, ""),
        },
        "teacher": ev.teacher_stats,
        "teacher_heldout_agreement_with_given": found.check["agreement"],  # the weak-teacher test's argmax pass
        "teacher_check": found.check,
        "weak_teacher": found.check["weak"],
        "graph": {
            "k": int(graph.ids.shape[1]),
            "index": graph.index_kind,
            # recall@k of an approximate index against exact search on a sample (None: exact)
            "recall_at_k": graph.recall,
            "built_from": "pred_probs" if from_probs else "embeddings",
        },
        "warnings": list(found.warnings) + stall_warnings(ev.teacher_stats),
    }
