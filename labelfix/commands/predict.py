"""`predict`: classify a folder of images with a student written by `distill`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from labelfix import __version__
from labelfix.errors import InputError
from labelfix.files.outputs import write_parquet
from labelfix.models.student import load_student, student_batches, student_outputs
from labelfix.progress import NullProgress, Progress
from labelfix.runtime import Runtime, ensure_runtime

PREDICTIONS_FILE = "predictions.parquet"


def predict(
    images_dir: Path,
    model_path: Path,
    out_dir: Path,
    labels_csv: Path | None = None,
    path_col: str = "path",
    label_col: str = "label",
    device: str = "auto",
    progress: Progress | None = None,
    *,
    runtime: Runtime | None = None,
) -> dict:
    """Write predictions.parquet into `out_dir`; with labels, also the accuracy. Returns a small
    report. `runtime` (else one resolved from `device`) says where; the precision is the one the
    student was trained with (student.json), or float32 where the device lacks native bfloat16."""
    progress = progress or NullProgress()
    runtime = ensure_runtime(runtime, device)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: a file, not a folder")
    model, meta = load_student(model_path, runtime.device)
    names = meta["class_names"]
    files, rel, labels = _inputs(Path(images_dir), labels_csv, path_col, label_col, names)
    with tempfile.TemporaryDirectory() as tmp:
        from labelfix.files.inputs import decode_images

        arr = decode_images(files, Path(tmp) / "images.u8", meta["image_size"], str(labels_csv or images_dir), progress)
        images = arr.open()
        if images.shape[3] != meta["channels"] and meta["channels"] == 1:
            images = np.asarray(images).mean(axis=3, keepdims=True).astype(np.uint8)
        batches = student_batches(images, meta["input_size"], runtime.device, meta["mean"], meta["std"])
        precision = meta.get("precision", "fp32")
        if precision == "bf16" and not runtime.native_bf16:
            precision = "fp32"
        probs, _ = student_outputs(model, batches, np.arange(len(files)), progress=progress, precision=precision)
        del images, batches
    pred = probs.argmax(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(
        out_dir / PREDICTIONS_FILE,
        {
            "path": np.array(rel, dtype=str),
            "predicted_label": np.array(names, dtype=object)[pred].astype(str),
            "confidence": probs.max(1).astype(np.float32),
            "probs": probs.astype(np.float32),
        },
        {"labelfix_version": __version__, "class_names": names, "model": str(Path(model_path).resolve())},
    )
    report = {"images": len(files), "out": str(out_dir / PREDICTIONS_FILE)}
    if labels is not None:
        report["accuracy"] = round(float((pred == labels.y).mean()), 4)
    return report


def _inputs(images_dir: Path, labels_csv, path_col: str, label_col: str, names: list) -> tuple:
    """(image files, their paths as reported, labels or None)."""
    from labelfix.files.inputs import IMAGE_EXTENSIONS, read_labels_csv, resolve_paths

    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: images folder not found")
    if labels_csv is not None:
        labels = read_labels_csv(labels_csv, path_col, label_col, names)
        return resolve_paths(images_dir, labels, str(labels_csv)), list(labels.paths), labels
    files = sorted(f for f in images_dir.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"{images_dir}: no images found")
    return files, [f.relative_to(images_dir).as_posix() for f in files], None
