"""Reading the user's inputs: a labels CSV, an ImageFolder tree, or .npy model outputs.

Every check raises `InputError` with one line naming the file, row, column or flag at fault.
Images are decoded once into a uint8 memmap on disk (N x H x W x C), so later stages stream
them instead of holding decoded images in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import InputError
from labelfix.progress import NullProgress, Progress

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class LabelSet:
    """Rows in dataset order.

    Attributes:
        paths: (N,) identifiers, as in the CSV (relative to the images folder).
        given: (N,) the labels exactly as the user wrote them (strings).
        y: (N,) int64 class index of each given label.
        class_names: C class names; column j of every probability matrix is class_names[j].
        labels_sha256: hash of the labels file (or of the folder listing).
    """

    paths: np.ndarray
    given: np.ndarray
    y: np.ndarray
    class_names: list[str]
    labels_sha256: str

    @property
    def n(self) -> int:
        return len(self.y)


def sha256_json(obj) -> str:
    """sha256 of obj as sorted JSON (non-JSON values by str): a key for configs and inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _label_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _class_order(labels: list[str]) -> list[str]:
    """Integer-like labels sort numerically, others lexicographically."""
    uniq = sorted(set(labels))
    try:
        return sorted(uniq, key=lambda s: int(s))
    except ValueError:
        return uniq


def read_labels_csv(
    csv_path: Path,
    path_col: str = "path",
    label_col: str = "label",
    classes: list[str] | None = None,
) -> LabelSet:
    """Read and validate a labels CSV (one row per sample)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: labels file not found")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for malformed files
        raise InputError(f"{csv_path}: cannot be read as CSV ({exc.__class__.__name__}: {exc})") from None
    for flag, col in (("--path-col", path_col), ("--label-col", label_col)):
        if col not in df.columns:
            raise InputError(
                f"{csv_path}: no column {col!r} (set {flag}; columns are {', '.join(map(str, df.columns))})"
            )
    if len(df) == 0:
        raise InputError(f"{csv_path}: no rows")
    paths = df[path_col].astype(str).str.strip().to_numpy()
    given = np.array([_label_text(v) for v in df[label_col]], dtype=object)
    for i, (p, g) in enumerate(zip(paths, given)):
        if p == "":
            raise InputError(f"{csv_path}: row {i + 2}: empty {path_col!r}")
        if g == "":
            raise InputError(f"{csv_path}: row {i + 2}: empty {label_col!r}")
    dup = pd.Series(paths).duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(paths == paths[i])[0])
        raise InputError(f"{csv_path}: row {i + 2}: path {paths[i]!r} duplicates row {first + 2}")
    class_names = list(classes) if classes else _class_order(list(given))
    index = {c: j for j, c in enumerate(class_names)}
    y = np.empty(len(given), dtype=np.int64)
    for i, g in enumerate(given):
        j = index.get(g)
        if j is None:
            raise InputError(
                f"{csv_path}: row {i + 2}: label {g!r} names no class (classes: {', '.join(class_names[:20])})"
            )
        y[i] = j
    out = LabelSet(paths, given, y, class_names, sha256_file(csv_path))
    check_class_sizes(out, str(csv_path))
    return out


def check_class_sizes(labels: LabelSet, source: str) -> None:
    counts = np.bincount(labels.y, minlength=len(labels.class_names))
    if (counts > 0).sum() < 2:
        raise InputError(f"{source}: at least two classes are needed (found {(counts > 0).sum()})")
    for j, c in enumerate(counts):
        if c == 1:
            i = int(np.flatnonzero(labels.y == j)[0])
            raise InputError(
                f"{source}: class {labels.class_names[j]!r} has one sample ({labels.paths[i]}); "
                "it cannot be checked against others: remove it or add samples"
            )


def read_image_folder(root: Path, class_order: list[str] | None = None) -> LabelSet:
    """ImageFolder layout: ROOT/CLASS_NAME/IMAGE, one subfolder per class."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: no class subfolders (pass --labels CSV or use one folder per class)")
    paths, given = [], []
    for c in classes:
        for f in sorted((root / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(f.relative_to(root).as_posix())
                given.append(c)
    if not paths:
        raise InputError(f"{root}: no images found in the class subfolders")
    listing = hashlib.sha256("\n".join(f"{p}\t{g}" for p, g in zip(paths, given)).encode()).hexdigest()
    class_names = list(class_order) if class_order else _class_order(given)
    unknown = sorted(set(given) - set(class_names))
    if unknown:
        raise InputError(f"{root}: class folder {unknown[0]!r} is not in --classes ({', '.join(class_names[:20])})")
    index = {c: j for j, c in enumerate(class_names)}
    out = LabelSet(
        np.array(paths, dtype=object),
        np.array(given, dtype=object),
        np.array([index[g] for g in given], dtype=np.int64),
        class_names,
        listing,
    )
    check_class_sizes(out, str(root))
    return out


def resolve_paths(root: Path, labels: LabelSet, csv_name: str) -> list[Path]:
    """Absolute file paths; refuses paths that escape `root` and files that do not exist."""
    if root is None:
        raise InputError(
            f"{csv_name}: give IMAGES_DIR (the folder its paths are relative to), "
            "or --pred-probs with out-of-sample model probabilities"
        )
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: images folder not found")
    out = []
    for i, p in enumerate(labels.paths):
        full = (root / p).resolve()
        if not full.is_relative_to(root):
            raise InputError(f"{csv_name}: row {i + 2}: path {p!r} escapes the images folder {root}")
        if not full.is_file():
            raise InputError(f"{full}: image not found (row {i + 2} of {csv_name})")
        out.append(full)
    return out


def load_npy(path: Path, flag: str, n_rows: int, n_cols: int | None = None) -> np.ndarray:
    """Load a 2-D float .npy whose rows follow the CSV's rows."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {flag} file not found")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:
        raise InputError(f"{path}: {flag} is not a readable .npy file ({exc})") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: {flag} must be 2-D (rows x columns), got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise InputError(f"{path}: {flag} has {arr.shape[0]} rows but the labels CSV has {n_rows}")
    if n_cols is not None and arr.shape[1] != n_cols:
        raise InputError(f"{path}: {flag} has {arr.shape[1]} columns but there are {n_cols} classes")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InputError(f"{path}: {flag} row {i} has NaN or infinite values")
    return arr


def check_pred_probs(probs: np.ndarray, path: Path) -> np.ndarray:
    if (probs < -1e-6).any():
        raise InputError(f"{path}: --pred-probs has negative values; pass probabilities, not logits")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
    if len(bad):
        raise InputError(f"{path}: --pred-probs row {bad[0]} sums to {sums[bad[0]]:.4f}, not 1")
    probs = np.clip(probs, 0, None)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Image decoding into an on-disk array


@dataclass(frozen=True)
class ImageArray:
    """Decoded images as a uint8 memmap of shape (N, H, W, C), and their content hash."""

    path: Path
    shape: tuple[int, int, int, int]
    images_sha256: str

    def open(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)


def _is_scalar_mode(mode: str) -> bool:
    """32-bit int, float and every 16-bit layout (I;16, I;16B, I;16L, I;16N...)."""
    return mode in ("I", "F") or mode.startswith("I;16")


def _probe(path: Path, row: int, csv_name: str) -> tuple[int, int, bool]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            gray = im.mode in ("1", "L", "LA") or _is_scalar_mode(im.mode)
    except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise InputError(f"{path}: unreadable image (row {row + 2} of {csv_name}): {exc}") from None
    return w, h, gray


def _decode(path: Path, size: int, channels: int) -> tuple[np.ndarray, str]:
    from PIL import Image

    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        if _is_scalar_mode(im.mode):
            arr = np.asarray(im, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
            im = Image.fromarray(arr.astype(np.uint8), "L")
        if im.mode == "P":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA"):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba)
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, digest


def choose_image_size(sizes: np.ndarray) -> int:
    """Median longer side, clamped to [8, 64] (the auto teacher is a small ResNet)."""
    side = int(np.median(sizes.max(axis=1)))
    return int(min(64, max(8, side)))


def decode_images(
    files: list[Path],
    out_path: Path,
    image_size: int = 0,
    csv_name: str = "labels",
    progress: Progress | None = None,
    workers: int | None = None,
) -> ImageArray:
    """Decode every image into a (N, S, S, C) uint8 memmap at `out_path`.

    Grayscale datasets keep one channel; anything with colour, alpha or a palette becomes RGB
    (alpha composited over white). `image_size` 0 picks the median side clamped to [8, 64].
    """
    progress = progress or NullProgress()
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        probes = list(pool.map(lambda a: _probe(a[1], a[0], csv_name), enumerate(files)))
    sizes = np.array([(w, h) for w, h, _ in probes])
    channels = 1 if all(g for _, _, g in probes) else 3
    size = image_size or choose_image_size(sizes)
    n = len(files)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mm = np.memmap(out_path, dtype=np.uint8, mode="w+", shape=(n, size, size, channels))
    digests = [""] * n

    def work(i: int) -> None:
        try:
            arr, digest = _decode(files[i], size, channels)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{files[i]}: unreadable image (row {i + 2} of {csv_name}): {exc}") from None
        mm[i] = arr
        digests[i] = digest

    with progress.task("decode images", total=n) as task, ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(work, range(n)):
            task.advance()
    mm.flush()
    h = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return ImageArray(out_path, (n, size, size, channels), h)
