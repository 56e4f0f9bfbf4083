"""Frozen-teacher feature extraction over image files, one batch of rows at a time: the work of
`labelfix embed`, run in this process (`extract_local`) or on Ray Data workers
(labelfix.models.raydata). Both call the same `probe_batch` and `Embedder`, which decode with
labelfix.files.images' decoder and preprocess with models.batches.Batches exactly as scan's frozen
teacher does (labelfix.models.pretrained), so every path gives scan's features. Batches carry
each row's CSV index ("row") so results are put back in CSV order whatever order they come in."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelfix.config import TeacherConfig
from labelfix.errors import InputError, InternalError
from labelfix.progress import NullProgress, Progress


@dataclass(frozen=True)
class ModelSpec:
    """A frozen teacher as bytes every worker can load (no shared file system, no torch cache).

    Attributes:
        blob: a TorchScript archive or a torchvision state dict (a torchvision `--weights` model
            is saved as its state dict on the driver).
        arch: torchvision architecture of a state dict (None for TorchScript).
        size: side the model's input is resized to; mean, std: its per-channel normalisation.
        sha256: hash of `blob` (of the checkpoint file for `--teacher PATH`).
    """

    blob: bytes
    arch: str | None
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str


def model_spec(cfg: TeacherConfig) -> ModelSpec:
    """The ModelSpec of `cfg.teacher` (a checkpoint path, or a torchvision name with --weights),
    loaded once here so a bad checkpoint fails before any image is read (exit 2 or 3)."""
    from labelfix.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_checkpoint, load_torchvision

    path = Path(cfg.teacher)
    if path.exists():
        _, kind = load_checkpoint(path, cfg.arch, "cpu")
        blob = path.read_bytes()
        arch = cfg.arch if kind == "state_dict" else None
        size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
    else:
        import torch

        model, w = load_torchvision(cfg.teacher, cfg.weights)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        blob, arch = buf.getvalue(), cfg.teacher
        tf = w.transforms()
        size, mean, std = int(getattr(tf, "crop_size", [224])[0]), list(tf.mean), list(tf.std)
    digest = hashlib.sha256(blob).hexdigest()
    return ModelSpec(blob, arch, size, tuple(map(float, mean)), tuple(map(float, std)), digest)


def load_spec_model(blob: bytes, arch: str | None, device: str):
    """The headless model of a ModelSpec's bytes, through pretrained.load_frozen_model (the
    loader scan uses: TorchScript, or a weights-only state dict whose head is stripped)."""
    from labelfix.models.pretrained import load_frozen_model

    fd, tmp = tempfile.mkstemp(prefix="labelfix-teacher-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        model, *_ = load_frozen_model(TeacherConfig(teacher=tmp, arch=arch), device)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return model.to(device).eval()


def _row_error(exc: Exception, path: str, row: int, csv_name: str) -> str:
    """The one-line error of an image that cannot be read (returned as data, see Gathered)."""
    why = " ".join(str(exc).split())
    if isinstance(exc, InputError) and ": unreadable image (row " in why:
        why = why.split("): ", 1)[-1]  # decode_images numbered the row within its batch: renumber
    return f"{path}: unreadable image (row {row + 2} of {csv_name}): {why}"


def probe_batch(batch: dict, csv_name: str = "labels") -> dict:
    """{"row", "width", "height", "error"} of a batch {"row", "path"}: image headers only. A
    file that cannot be opened gets its one-line error in "error" ("" for the others): errors
    travel as data because Ray Data replaces a worker's exception with its own."""
    from PIL import Image

    rows = np.asarray(batch["row"], dtype=np.int64)
    width, height = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
    errors = [""] * len(rows)
    for i, (r, p) in enumerate(zip(rows, batch["path"])):
        try:
            with Image.open(p) as im:
                width[i], height[i] = im.size
        except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
            errors[i] = _row_error(exc, str(p), int(r), csv_name)
    return {"row": rows, "width": width, "height": height, "error": np.array(errors, dtype=object)}


def decode_side(width: np.ndarray, height: np.ndarray, image_size: int) -> int:
    """The side every image is decoded to: `image_size`, or scan's rule (the median longer side
    clamped to 8..64, files.images.choose_image_size) over the whole dataset."""
    from labelfix.files.images import choose_image_size

    return int(image_size or choose_image_size(np.stack([width, height], axis=1)))


class Embedder:
    """Decode a batch {"row", "path"} and run the frozen model: {"row", "feat" (n, D) float32,
    "sha256" (each file's hash), "channels", "error", "runtime" ("device/precision/threads")}.
    Holds the model, so Ray runs it as an actor (loaded once per worker); `extract_local` calls
    it in this process. Images are decoded by files.images.decode_images, scan's decoder; a
    batch of grayscale images keeps one channel and as_rgb repeats it, the same pixels as
    scan's three-channel decoding of a dataset with colour images in it."""

    def __init__(self, blob, arch, size, mean, std, side, device, precision, batch_size, csv_name, threads=4):
        from labelfix.models.pretrained import frozen_runtime
        from labelfix.runtime import resolve_runtime

        self.rt = frozen_runtime(resolve_runtime(device, precision))
        self.model = load_spec_model(self._bytes(blob), arch, self.rt.device)
        self.size, self.mean, self.std = size, list(mean), list(std)
        self.side, self.batch_size, self.csv_name = side, batch_size, csv_name
        self.threads = max(1, int(threads))  # decoding threads (the results do not depend on them)

    @staticmethod
    def _bytes(blob):
        return blob

    def _decode_files(self, paths: list[str]) -> np.ndarray:
        from labelfix.files.images import decode_images

        fd, tmp = tempfile.mkstemp(prefix="labelfix-decode-", suffix=".u8")
        os.close(fd)
        try:
            arr = decode_images(  # threads: a Ray actor is already one of many workers
                [Path(p) for p in paths], Path(tmp), self.side, self.csv_name, workers=self.threads, parallel="threads"
            )
            return np.array(arr.open())
        finally:
            Path(tmp).unlink(missing_ok=True)

    def decode(self, rows: np.ndarray, paths: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
        """(images, file hashes, errors): an unreadable file decodes as zeros with its error."""
        with ThreadPoolExecutor(self.threads) as pool:
            digests = list(pool.map(lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest(), paths))
        try:
            return self._decode_files(paths), digests, [""] * len(paths)
        except (InputError, OSError):
            pass
        errors = [""] * len(paths)  # find the broken files one by one (only on this failure path)
        for i, p in enumerate(paths):
            try:
                self._decode_files([p])
            except (InputError, OSError) as exc:
                errors[i] = _row_error(exc, p, int(rows[i]), self.csv_name)
        good = [i for i, e in enumerate(errors) if not e]
        arr = self._decode_files([paths[i] for i in good]) if good else np.zeros((0, self.side, self.side, 1), np.uint8)
        images = np.zeros((len(paths),) + arr.shape[1:], dtype=np.uint8)
        images[good] = arr
        return images, digests, errors

    def __call__(self, batch: dict) -> dict:
        import torch

        from labelfix.models.batches import Batches, as_rgb, infer

        rows = np.asarray(batch["row"], dtype=np.int64)
        images, digests, errors = self.decode(rows, [str(p) for p in batch["path"]])
        batches = Batches(as_rgb(images), self.rt.device, size=self.size, mean=self.mean, std=self.std)
        outs = infer(
            lambda x: self.model(x).float().flatten(1),
            batches,
            np.arange(len(rows)),
            self.batch_size,
            None,
            self.rt.precision,
        )
        feats = torch.cat(outs).cpu().numpy().astype(np.float32, copy=False)
        runtime = f"{self.rt.device}/{self.rt.precision}/{self.rt.threads}"
        return {
            "row": rows,
            "feat": feats,
            "sha256": np.array(digests, dtype=object),
            "channels": np.full(len(rows), images.shape[3], dtype=np.int64),
            "error": np.array(errors, dtype=object),
            "runtime": np.array([runtime] * len(rows), dtype=object),
        }


class Gathered:
    """Per-row results put back in CSV order: `add` each batch as it arrives (any order, from
    any worker; the first row with an "error" raises it, so a broken image stops the run at
    once); `check` that every row came exactly once."""

    def __init__(self, n: int):
        self.n = n
        self.count = np.zeros(n, dtype=np.int64)
        self.columns: dict[str, np.ndarray] = {}
        self.runtimes: set[str] = set()

    def add(self, batch: dict) -> int:
        rows = np.asarray(batch["row"], dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise InternalError(f"a worker returned row {int(rows.max())} of {self.n}")
        np.add.at(self.count, rows, 1)
        for name, values in batch.items():
            if name == "row":
                continue
            if name == "error":
                bad = [str(e) for e in values if e]
                if bad:
                    raise InputError(bad[0])
                continue
            if name == "runtime":
                self.runtimes.update(map(str, values))
                continue
            values = np.asarray(values)
            if values.dtype.kind in "OUS":  # strings (file hashes)
                values = values.astype(object)
            if name not in self.columns:
                self.columns[name] = np.empty((self.n,) + values.shape[1:], dtype=values.dtype)
            self.columns[name][rows] = values
        return len(rows)

    def check(self) -> "Gathered":
        bad = np.flatnonzero(self.count != 1)
        if len(bad):
            i = int(bad[0])
            raise InternalError(f"row {i + 2} came back {int(self.count[i])} times from the workers (expected once)")
        return self


def batch_rows(n: int, size: int):
    for s in range(0, n, size):
        yield np.arange(s, min(n, s + size), dtype=np.int64)


def extract_local(paths: list[str], spec: ModelSpec, opts: dict, progress: Progress | None = None) -> dict:
    """Probe, decode and embed every image in this process. `opts`: image_size, device,
    precision, batch_size, csv_name. Returns {"feats", "sha256", "side", "channels", "runtimes"}."""
    progress = progress or NullProgress()
    n, bs, csv_name = len(paths), opts["batch_size"], opts["csv_name"]
    probe = Gathered(n)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, progress.task("probe images", total=n) as task:
        chunks = [{"row": r, "path": [paths[i] for i in r]} for r in batch_rows(n, 256)]
        for out in pool.map(lambda b: probe_batch(b, csv_name), chunks):
            task.advance(probe.add(out))
    c = probe.check().columns
    side = decode_side(c["width"], c["height"], opts["image_size"])
    embedder = Embedder(
        spec.blob, spec.arch, spec.size, spec.mean, spec.std, side,
        opts["device"], opts["precision"], bs, csv_name, min(8, os.cpu_count() or 1),
    )  # fmt: skip
    got = Gathered(n)
    with progress.task("embed (frozen teacher)", total=n) as task:
        for rows in batch_rows(n, bs):
            task.advance(got.add(embedder({"row": rows, "path": [paths[i] for i in rows]})))
    got.check()
    cols = got.columns
    return {
        "feats": cols["feat"],
        "sha256": cols["sha256"],
        "side": side,
        "channels": int(cols["channels"].max()),
        "runtimes": got.runtimes,
    }
