"""Decoding the user's images once into an on-disk array.

Images are decoded into a uint8 memmap on disk (N x H x W x C), so later stages stream them
instead of holding decoded images in memory. Every failure is an `InputError` naming the image
and its CSV row.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelfix.errors import InputError
from labelfix.progress import NullProgress, Progress

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


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


def unreadable_rows(files: list[Path], workers: int | None = None) -> dict[int, str]:
    """{row: reason} of the files that cannot be fully decoded (`scan --skip-unreadable`)."""
    from PIL import Image

    def check(i: int):
        try:
            with Image.open(files[i]) as im:
                im.load()
        except Exception as exc:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError...
            return i, " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return i, None

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        return {i: why for i, why in pool.map(check, range(len(files))) if why is not None}


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
