"""Where scan's evidence comes from: the user's --pred-probs/--embeddings, or a teacher over the
images (decoded into the run's cache, its outputs cached by everything that changes them), and the
kNN graph built over it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labelfix import __version__
from labelfix.config import ScanConfig
from labelfix.core.issues import feature_space
from labelfix.errors import InputError
from labelfix.files import rundir as rd
from labelfix.files.inputs import (
    LabelSet,
    check_pred_probs,
    decode_images,
    load_npy,
    resolve_paths,
    sha256_file,
    sha256_json,
)
from labelfix.files.outputs import atomic_save_npy, atomic_write_json
from labelfix.files.rundir import RunDir

if TYPE_CHECKING:
    from labelfix.commands.scan import ScanInputs


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
    row_hashes: list[bytes] | None = None  # --pred-probs with IMAGES_DIR: SHA-256 of each image file


def given_evidence(inputs: ScanInputs, labels: LabelSet, seed: int = 0) -> Evidence:
    """--pred-probs (and --embeddings) as the user gave them, checked against the labels."""
    c = len(labels.class_names)
    files = inputs.prob_files
    probs = check_pred_probs(load_npy(files[0], "--pred-probs", labels.n, c), files[0])
    check_column_order(probs, labels, files[0])
    hashes = {"labels_sha256": labels.labels_sha256}
    if len(files) == 1:
        hashes["pred_probs_sha256"] = sha256_file(files[0])
    else:
        probs, weights = ensemble_probs(probs, files[1:], labels, seed)
        hashes["pred_probs_sha256"] = [sha256_file(f) for f in files]
        hashes["pred_probs_pool_weights"] = [round(w, 3) for w in weights]
    features = None
    if inputs.embeddings is not None:
        features = load_npy(inputs.embeddings, "--embeddings", labels.n)
        hashes["embeddings_sha256"] = sha256_file(inputs.embeddings)
    emb, source = feature_space(probs, features)
    row_hashes = None
    if inputs.images_dir is not None:  # nothing is decoded, but the files' hashes let --baseline follow renames
        files = resolve_paths(inputs.images_dir, labels, str(inputs.labels_csv))
        row_hashes = file_hashes(files)
    return Evidence(probs, emb, source, hashes, row_hashes=row_hashes)


def ensemble_probs(first, more: tuple[Path, ...], labels: LabelSet, seed: int = 0) -> tuple[np.ndarray, tuple]:
    """Several models' probabilities (the first already loaded), each file checked as one
    --pred-probs is, made one (N, C) float32 array by labelfix.core.detect.pool_models (their
    fitted pool, or the model whose posteriors expect the best F1). In memory: N x C x 4 bytes a
    model."""
    from labelfix.core.detect import pool_models

    c = len(labels.class_names)
    models = [np.asarray(first, dtype=np.float32)]
    for path in more:
        p = check_pred_probs(load_npy(path, "--pred-probs", labels.n, c), path)
        check_column_order(p, labels, path)
        models.append(np.asarray(p, dtype=np.float32))
    return pool_models(models, labels.y, seed)


def check_column_order(probs, labels: LabelSet, path: Path) -> None:
    """Bad input (exit 2) when --pred-probs' columns evidently follow another class order than
    labelfix's (labelfix.models.agreement.column_order_check), naming the order that fits."""
    from labelfix.models.agreement import column_order_check, row_argmax

    names = labels.class_names
    found = column_order_check(row_argmax(probs), labels.y, len(names))
    if found is None:
        return
    fits = [names[k] for k in found["column_class"]]
    shown = ",".join(fits) if len(fits) <= 12 else ",".join(fits[:12]) + ",..."
    raise InputError(
        f"{path}: --pred-probs columns do not follow the class order ({', '.join(names[:6])}"
        f"{', ...' if len(names) > 6 else ''}; --classes if given, else numbers by value and names sorted as text): "
        f"the given labels agree with the columns' argmax on {found['agreement']:.1%} of rows as they are, "
        f"on {found['reordered_agreement']:.1%} with the columns read as {shown}; "
        "pass --classes with the class of each column, in column order"
    )


def file_hashes(files: list[Path]) -> list[bytes]:
    """SHA-256 of each file's bytes, read in parallel."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    def one(path: Path) -> bytes:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.digest()

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, files))


def teacher_evidence(inputs, cfg: ScanConfig, labels: LabelSet, run: RunDir, stage: Path, device, timer, progress):
    """Decode the images into the run's cache and run the teacher, reusing its cached outputs
    when the images, labels, teacher settings, seed, device, precision and threads match."""
    from labelfix.models.teacher import TeacherOutput, run_teacher
    from labelfix.runtime import resolve_runtime

    runtime = resolve_runtime(device, cfg.teacher.precision)  # once for the teacher, and its cache key

    csv_name = str(inputs.labels_csv or inputs.images_dir)
    with timer("decode images"):
        files = resolve_paths(inputs.images_dir, labels, csv_name)
        tmp_img = stage / rd.CACHE / "images.u8.partial"
        arr = decode_images(files, tmp_img, cfg.teacher.image_size, csv_name, progress)
        img_name = f"images-{arr.images_sha256[:16]}-{arr.shape[1]}x{arr.shape[2]}x{arr.shape[3]}.u8"
        tmp_img.rename(stage / rd.CACHE / img_name)
        images = np.memmap(stage / rd.CACHE / img_name, dtype=np.uint8, mode="r", shape=arr.shape)
    key = teacher_cache_key(cfg, arr, labels.y, runtime)
    cache = f"{rd.CACHE}/teacher-{key}"
    cached = load_teacher_cache(run, cache, labels.n, len(labels.class_names))
    if cached is not None:
        teacher = TeacherOutput(*cached)
        teacher.stats["cache_hit"] = True
    else:
        with timer("teacher"):
            c = len(labels.class_names)
            teacher = run_teacher(images, labels.y, c, cfg.teacher, cfg.seed, progress=progress, runtime=runtime)
        atomic_save_npy(stage / cache / "probs.npy", teacher.probs)
        atomic_save_npy(stage / cache / rd.EMBEDDINGS, teacher.embeddings)
        atomic_write_json(stage / cache / "stats.json", teacher.stats)
        teacher.stats["cache_hit"] = False
    hashes = {"labels_sha256": labels.labels_sha256, "images_sha256": arr.images_sha256}
    info = {"cache": f"{rd.CACHE}/{img_name}", "shape": list(arr.shape)}
    stats = dict(teacher.stats, cache=cache)
    return Evidence(teacher.probs, teacher.embeddings, "teacher", hashes, stats, info, images)


def teacher_cache_key(cfg: ScanConfig, arr, y: np.ndarray, runtime) -> str:
    """Everything that changes the teacher's numbers (Runtime.cache_key: device, precision,
    thread count, torch version): a folder moved to another host, or run with another thread
    count, recomputes instead of reusing another setting's outputs."""
    return sha256_json(
        {
            "v": __version__,
            "images": arr.images_sha256,
            "shape": arr.shape,
            "y": hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest(),
            "teacher": cfg.teacher.__dict__,
            "seed": cfg.seed,
            **runtime.cache_key(),
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
