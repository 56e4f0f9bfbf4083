"""`labelfix embed`: a frozen teacher's features and cross-fitted probabilities, written for
`labelfix scan --labels CSV --pred-probs OUT/probs.npy --embeddings OUT/embeddings.npy`.

The same numbers as scan's frozen-teacher path (labelfix.models.pretrained.frozen_teacher): the
images are decoded and preprocessed the same way, features come from the headless model, and a
K-fold cross-fitted linear head (models.crossfit) gives each row probabilities from a head that
never saw its label. Feature extraction runs in this process, or with `--ray ADDRESS` as a Ray
Data pipeline across a cluster's workers (models.raydata); the head always runs here, on the
features gathered in CSV order, so both paths give the same probabilities from the same features.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from labelfix import __version__
from labelfix.config import TeacherConfig, check_seed
from labelfix.errors import InputError
from labelfix.files.inputs import LabelSet, resolve_paths, sha256_file
from labelfix.files.outputs import atomic_save_npy, atomic_write_bytes, atomic_write_json, staged_run
from labelfix.progress import NullProgress, Progress
from labelfix.runtime import DEVICES

# LABELS: written for an ImageFolder input (scan --pred-probs reads a CSV); not "labels.csv",
# which may be the user's own file in the same folder
EMBEDDINGS, PROBS, META, LABELS = "embeddings.npy", "probs.npy", "embed.json", "embed_labels.csv"


@dataclass(frozen=True)
class EmbedInputs:
    """IMAGES_DIR, and a labels CSV whose paths are relative to it (else an ImageFolder tree)."""

    images_dir: Path
    labels_csv: Path | None = None
    path_col: str = "path"
    label_col: str = "label"
    classes: list[str] | None = None


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of `embed`. teacher, weights, arch, folds, image_size, batch_size, precision,
    device and seed mean what they mean for scan's frozen teacher. ray: None (this process) or
    a cluster address (auto, local, ray://HOST:PORT, HOST:PORT); workers: Ray workers (0: one
    per CPU of the cluster, or per GPU when they compute on CUDA)."""

    teacher: str
    weights: str | None = None
    arch: str | None = None
    folds: int = 2
    image_size: int = 0
    batch_size: int = 256
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    ray: str | None = None
    workers: int = 0

    def teacher_config(self) -> TeacherConfig:
        fields = ("teacher", "weights", "arch", "folds", "image_size", "batch_size", "precision")
        return TeacherConfig(**{f: getattr(self, f) for f in fields})

    def validate(self) -> None:
        from labelfix.models.pretrained import validate_teacher

        if self.teacher == "auto":
            raise InputError(
                "--teacher: embed runs a frozen teacher (a checkpoint path, with --arch for a state dict, or a "
                "torchvision architecture with --weights); the auto teacher trains on the labels: use scan"
            )
        tc = self.teacher_config()
        tc.validate()
        validate_teacher(tc)
        check_seed(self.seed)
        if self.device not in DEVICES:
            raise InputError(f"--device must be auto, cpu or cuda (got {self.device!r})")
        if self.workers < 0:
            raise InputError(f"--workers must be >= 0 (got {self.workers})")
        if self.workers and self.ray is None:
            raise InputError("--workers needs --ray (without it embed runs in this process)")
        if self.ray is not None:
            from labelfix.models.raydata import import_ray

            import_ray()  # the one-line install hint before any model or image is loaded


@dataclass
class EmbedResult:
    out_dir: Path
    embeddings: np.ndarray
    probs: np.ndarray
    meta: dict


def check_embed_out(out: Path) -> None:
    """embed's files are not a run directory's: refuse to write them into one (scan's own
    embeddings.npy there is listed in its manifest and would be replaced)."""
    from labelfix.files.rundir import MANIFEST

    if (Path(out) / MANIFEST).exists():
        raise InputError(f"--out {out}: holds a labelfix run (scan's run directory); write embed's outputs elsewhere")


def load_embed_labels(inputs: EmbedInputs) -> LabelSet:
    from labelfix.commands.scan import ScanInputs, load_labels

    if inputs.images_dir is None:
        raise InputError("give IMAGES_DIR (the folder of the images; a --labels CSV's paths are relative to it)")
    scan_inputs = ScanInputs(inputs.images_dir, inputs.labels_csv, inputs.path_col, inputs.label_col, inputs.classes)
    return load_labels(scan_inputs)


def head_device(device: str) -> str:
    """Where the linear head runs (this process): CUDA when asked for or auto and present here."""
    import torch

    return "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def embed(inputs: EmbedInputs, cfg: EmbedConfig, out: Path, progress: Progress | None = None) -> EmbedResult:
    """Extract features (here or on Ray), fit the cross-fitted head, write the files into `out`."""
    from labelfix.models.crossfit import crossfit_linear_head, l2_normalise
    from labelfix.models.extract import extract_local, model_spec

    progress = progress or NullProgress()
    cfg.validate()
    check_embed_out(out)
    labels = load_embed_labels(inputs)
    cfg.teacher_config().check_rows(labels.n)
    csv_name = str(inputs.labels_csv or inputs.images_dir)
    paths = [str(p) for p in resolve_paths(inputs.images_dir, labels, csv_name)]
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    spec = model_spec(cfg.teacher_config())
    opts = dict(image_size=cfg.image_size, device=cfg.device, precision=cfg.precision, batch_size=cfg.batch_size)
    opts.update(csv_name=csv_name, workers=cfg.workers)
    if cfg.ray is None:
        from labelfix.runtime import resolve_runtime

        got = extract_local(paths, spec, dict(opts, device=resolve_runtime(cfg.device, cfg.precision).device), progress)
    else:
        from labelfix.models.raydata import extract_ray

        got = extract_ray(paths, spec, opts, cfg.ray, progress)
    times["extract"] = round(time.perf_counter() - t0, 3)
    t1 = time.perf_counter()
    feats = got["feats"]
    with progress.task("cross-fitted linear head", total=None):
        probs, head = crossfit_linear_head(
            feats, labels.y, len(labels.class_names), cfg.folds, cfg.seed, head_device(cfg.device)
        )
    times["head"] = round(time.perf_counter() - t1, 3)
    emb = l2_normalise(feats).astype(np.float32)
    meta = embed_meta(cfg, labels, spec, got, head, times, csv_input=inputs.labels_csv is not None)
    write_embed(out, emb, probs, meta, labels if inputs.labels_csv is None else None)
    return EmbedResult(Path(out), emb, probs, meta)


def embed_meta(cfg: EmbedConfig, labels: LabelSet, spec, got: dict, head: dict, times: dict, csv_input: bool) -> dict:
    from labelfix.environment import library_versions

    versions = library_versions()
    try:
        from importlib.metadata import version

        versions["ray"] = version("ray")
    except Exception:  # PackageNotFoundError: ray is an optional extra
        versions["ray"] = None
    images = hashlib.sha256("\n".join(got["sha256"]).encode()).hexdigest()  # as files.images.decode_images
    backend = {"backend": "ray" if cfg.ray is not None else "local", "runtimes": sorted(got["runtimes"])}
    for key in ("address", "workers", "nodes", "device"):
        if key in got:
            backend[key] = got[key]
    return {
        "labelfix_version": __version__,
        "command": "embed",
        "n": labels.n,
        "feature_dim": int(got["feats"].shape[1]),
        "class_names": list(labels.class_names),
        "rows": "in the labels CSV's order" if csv_input else f"in the order of {LABELS} (the ImageFolder listing)",
        "files": {"embeddings": EMBEDDINGS, "probs": PROBS},
        "embeddings": "the frozen teacher's features, L2-normalised rows (what scan's frozen teacher uses)",
        "config": asdict(cfg),
        "decode": {"image_size": got["side"], "channels": got["channels"], "model_input": spec.size},
        "normalise": {"mean": list(spec.mean), "std": list(spec.std)},
        "compute": backend,
        "head": dict(head, device=head_device(cfg.device), seed=cfg.seed),
        "hashes": {"labels_sha256": labels.labels_sha256, "images_sha256": images, "teacher_sha256": spec.sha256},
        "versions": versions,
        "timings_s": times,
    }


def write_embed(out: Path, emb: np.ndarray, probs: np.ndarray, meta: dict, folder_labels: LabelSet | None) -> None:
    """All files staged and moved into `out` together (files.outputs.staged_run); the .npy
    hashes go into embed.json, so summary.json's input hashes of a later scan can be matched.
    `folder_labels`: an ImageFolder's labels, written as a CSV for scan."""
    import pandas as pd

    with staged_run(out) as stage:
        atomic_save_npy(stage / EMBEDDINGS, emb)
        atomic_save_npy(stage / PROBS, probs.astype(np.float32))
        meta["hashes"]["embeddings_sha256"] = sha256_file(stage / EMBEDDINGS)
        meta["hashes"]["probs_sha256"] = sha256_file(stage / PROBS)
        if folder_labels is not None:
            frame = pd.DataFrame({"path": folder_labels.paths, "label": folder_labels.given})
            atomic_write_bytes(stage / LABELS, frame.to_csv(index=False).encode())
            meta["files"]["labels"] = LABELS
        atomic_write_json(stage / META, meta)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_line(result: EmbedResult, images_dir: Path, labels_csv: Path | None) -> str:
    """What the CLI prints: what was computed, where, and the scan command that reads it."""
    m, out = result.meta, result.out_dir
    where = m["compute"]
    on = (
        f"on Ray ({_count(where['workers'], 'worker')}, {_count(where['nodes'], 'node')})"
        if where["backend"] == "ray"
        else "in one process"
    )
    csv = labels_csv if labels_csv is not None else out / LABELS
    took = sum(m["timings_s"].values())
    return (
        f"labelfix: embedded {m['n']} images ({m['feature_dim']}-d features, {len(m['class_names'])} classes) {on} "
        f"in {took:.1f} s; outputs in {out}/ ({EMBEDDINGS}, {PROBS}, {META}); next: labelfix scan {images_dir} "
        f"--labels {csv} --pred-probs {out / PROBS} --embeddings {out / EMBEDDINGS}"
    )
