"""`scan`: the shell around labelfix.core.issues.find_issues.

read inputs -> evidence (the given --pred-probs/--embeddings, or a teacher over the images) ->
kNN graph -> find_issues (arrays in, a typed result out) -> one staged commit of the run files.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labelfix import __version__
from labelfix.config import ScanConfig
from labelfix.core.duplicates import Duplicates, find_duplicates
from labelfix.core.issues import Issues, feature_space, find_issues
from labelfix.environment import library_versions
from labelfix.errors import InputError
from labelfix.files import rundir as rd
from labelfix.files.inputs import (
    LabelSet,
    check_pred_probs,
    decode_images,
    load_npy,
    read_image_folder,
    read_labels_csv,
    resolve_paths,
    sha256_file,
    sha256_json,
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


@dataclass(frozen=True)
class ScanInputs:
    """What the user pointed scan at. Either `images_dir`, or `labels_csv` with `pred_probs`."""

    images_dir: Path | None = None
    labels_csv: Path | None = None
    path_col: str = "path"
    label_col: str = "label"
    classes: list[str] | None = None
    pred_probs: Path | None = None
    embeddings: Path | None = None


@dataclass
class ScanResult:
    out_dir: Path
    summary: dict
    table: dict = field(repr=False)


@dataclass
class Evidence:
    """Probabilities and the rows to build the graph in, with what produced them."""

    probs: np.ndarray
    emb: np.ndarray
    source: str  # "pred_probs", "embeddings" (given) or "teacher"
    hashes: dict
    teacher_stats: dict = field(default_factory=dict)
    image_info: dict | None = None
    images: np.ndarray | None = None  # the decoded (N, H, W, C) uint8 array, for duplicates


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


def check_inputs(inputs: ScanInputs, cfg: ScanConfig) -> None:
    cfg.validate()
    if inputs.pred_probs is None and inputs.embeddings is not None:
        raise InputError("--embeddings needs --pred-probs (or leave both out to use a teacher)")
    if inputs.pred_probs is not None and inputs.labels_csv is None:
        raise InputError("--pred-probs needs --labels CSV (its rows follow the CSV's rows)")
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
    with run.commit("scan", clean=True, keep=(inputs.labels_csv, inputs.pred_probs, inputs.embeddings)) as stage:
        if inputs.pred_probs is not None:
            with timer("read inputs"):
                ev = given_evidence(inputs, labels)
        else:
            ev = teacher_evidence(inputs, cfg, labels, run, stage, device, timer, progress)
        with timer("graph"):
            graph = build_graph(inputs, cfg, ev.emb, len(labels.y), device, progress)
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
        dup = None
        if ev.images is not None:
            with timer("duplicates"):
                dup = find_duplicates(ev.images, labels.y, found.posterior)
            found = with_duplicates(found, dup)
        ev.images = None
        table = scan_table(labels, ev.probs, found, dup)
        summary = scan_summary(inputs, cfg, labels, ev, graph, found, device)
        summary["duplicates"] = dup.report() if dup is not None else {"skipped": "no decoded images (--pred-probs)"}
        meta = {"labelfix_version": __version__, "class_names": labels.class_names, "config": cfg.to_dict()}
        meta["seed"] = cfg.seed
        atomic_save_npy(stage / rd.GRAPH_IDS, graph.ids)
        atomic_save_npy(stage / rd.GRAPH_SIMS, graph.sims)
        if inputs.pred_probs is not None:
            atomic_save_npy(stage / rd.EMBEDDINGS, ev.emb)
        write_parquet(stage / rd.SCAN, table, meta)
        summary["timings_s"] = dict(timer.times, total=round(sum(timer.times.values()), 3))
        atomic_write_json(stage / rd.SUMMARY, summary)
    return ScanResult(Path(out), summary, table)


def given_evidence(inputs: ScanInputs, labels: LabelSet) -> Evidence:
    """--pred-probs (and --embeddings) as the user gave them, checked against the labels."""
    c = len(labels.class_names)
    probs = check_pred_probs(load_npy(inputs.pred_probs, "--pred-probs", labels.n, c), inputs.pred_probs)
    hashes = {"labels_sha256": labels.labels_sha256, "pred_probs_sha256": sha256_file(inputs.pred_probs)}
    features = None
    if inputs.embeddings is not None:
        features = load_npy(inputs.embeddings, "--embeddings", labels.n)
        hashes["embeddings_sha256"] = sha256_file(inputs.embeddings)
    emb, source = feature_space(probs, features)
    if inputs.images_dir is not None:
        resolve_paths(inputs.images_dir, labels, str(inputs.labels_csv))
    return Evidence(probs, emb, source, hashes)


def teacher_evidence(inputs, cfg: ScanConfig, labels: LabelSet, run: RunDir, stage: Path, device, timer, progress):
    """Decode the images into the run's cache and run the teacher, reusing its cached outputs
    when the images, labels, teacher settings, seed, device, precision and threads match."""
    from labelfix.models.teacher import TeacherOutput, run_teacher

    csv_name = str(inputs.labels_csv or inputs.images_dir)
    with timer("decode images"):
        files = resolve_paths(inputs.images_dir, labels, csv_name)
        tmp_img = stage / rd.CACHE / "images.u8.partial"
        arr = decode_images(files, tmp_img, cfg.teacher.image_size, csv_name, progress)
        img_name = f"images-{arr.images_sha256[:16]}-{arr.shape[1]}x{arr.shape[2]}x{arr.shape[3]}.u8"
        tmp_img.rename(stage / rd.CACHE / img_name)
        images = np.memmap(stage / rd.CACHE / img_name, dtype=np.uint8, mode="r", shape=arr.shape)
    key = teacher_cache_key(cfg, arr, labels.y, device)
    cache = f"{rd.CACHE}/teacher-{key}"
    cached = load_teacher_cache(run, cache, labels.n, len(labels.class_names))
    if cached is not None:
        teacher = TeacherOutput(*cached)
        teacher.stats["cache_hit"] = True
    else:
        with timer("teacher"):
            teacher = run_teacher(images, labels.y, len(labels.class_names), cfg.teacher, cfg.seed, device, progress)
        atomic_save_npy(stage / cache / "probs.npy", teacher.probs)
        atomic_save_npy(stage / cache / rd.EMBEDDINGS, teacher.embeddings)
        atomic_write_json(stage / cache / "stats.json", teacher.stats)
        teacher.stats["cache_hit"] = False
    hashes = {"labels_sha256": labels.labels_sha256, "images_sha256": arr.images_sha256}
    info = {"cache": f"{rd.CACHE}/{img_name}", "shape": list(arr.shape)}
    stats = dict(teacher.stats, cache=cache)
    return Evidence(teacher.probs, teacher.embeddings, "teacher", hashes, stats, info, images)


def teacher_cache_key(cfg: ScanConfig, arr, y: np.ndarray, device: str) -> str:
    """Everything that changes the teacher's numbers: a folder moved to another host, or run
    with another thread count, recomputes instead of reusing another setting's outputs."""
    import torch

    from labelfix.runtime import resolve_precision

    return sha256_json(
        {
            "v": __version__,
            "images": arr.images_sha256,
            "shape": arr.shape,
            "y": hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest(),
            "teacher": cfg.teacher.__dict__,
            "seed": cfg.seed,
            "device": device,
            "precision": resolve_precision(device, cfg.teacher.precision),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    )[:20]


def load_teacher_cache(run: RunDir, cache: str, n: int, c: int):
    """(probs, embeddings, stats) from the run's teacher cache, or None when absent or damaged."""
    from labelfix.errors import RunDirError

    try:
        probs = np.array(run.load_array(f"{cache}/probs.npy", n, "f", c))
        emb = np.array(run.load_array(f"{cache}/{rd.EMBEDDINGS}", n, "f"))
        stats = run.load_json(f"{cache}/stats.json", "recomputed")
    except RunDirError:
        return None
    return probs, emb, stats


def build_graph(inputs: ScanInputs, cfg: ScanConfig, emb: np.ndarray, n: int, device: str, progress):
    from labelfix.core.graph import build_knn, build_knn_out_of_fold

    if inputs.pred_probs is None and cfg.teacher.teacher == "auto":
        from labelfix.models.teacher import fold_assignment

        # the auto teacher's features are trained on half the labels: link rows only in the
        # space of the fold model that never saw them (graph.build_knn_out_of_fold)
        folds = fold_assignment(n, cfg.teacher.folds, cfg.seed)
        return build_knn_out_of_fold(emb, folds, cfg.k, device, progress=progress)
    return build_knn(emb, cfg.k, device, progress=progress)


def evidence_source(inputs: ScanInputs, cfg: ScanConfig) -> str:
    if inputs.pred_probs is not None:
        return "the --pred-probs probabilities"
    if cfg.teacher.teacher == "auto":
        return "the auto teacher's out-of-sample probabilities"
    return f"the --teacher {cfg.teacher.teacher} probabilities"


def with_duplicates(found: Issues, dup: Duplicates) -> Issues:
    """Duplicates whose given label differs from their group's consensus become label issues
    that suggest the consensus."""
    import dataclasses

    return dataclasses.replace(
        found, flags=found.flags | dup.wrong, suggested=np.where(dup.wrong, dup.consensus, found.suggested)
    )


def scan_table(labels: LabelSet, probs: np.ndarray, found: Issues, dup: Duplicates | None = None) -> dict:
    """scan.parquet's columns (README: "scan.parquet")."""
    names = np.array(labels.class_names, dtype=object)
    clean = found.clean_prob
    n = len(labels.y)
    return {
        "path": labels.paths.astype(str),
        "given_label": labels.given.astype(str),
        "given_index": labels.y,
        "teacher_probs": probs,
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
    }


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
        "pred_probs": resolved(inputs.pred_probs),
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
        "noise_matrix": {
            "description": "P(true class = column | given class = row): mean posterior of the rows given each class",
            "values": np.round(found.noise_matrix(y), 4),
        },
        "confident_joint": {
            "description": "Confident Learning's calibrated estimate of the teacher probabilities (the noise model's starting T)",
            "noise_rate": round(noise.overall, 4),
            "per_class": np.round(noise.rates, 4),
            "matrix": np.round(noise.matrix, 4),
        },
        "teacher": ev.teacher_stats,
        "teacher_heldout_agreement_with_given": round(float((ev.probs.argmax(1) == y).mean()), 4),
        "teacher_check": found.check,
        "weak_teacher": found.check["weak"],
        "graph": {
            "k": int(graph.ids.shape[1]),
            "index": graph.index_kind,
            "built_from": "pred_probs" if from_probs else "embeddings",
        },
        "warnings": list(found.warnings) + stall_warnings(ev.teacher_stats),
    }
