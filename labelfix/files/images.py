"""Decoding the user's images once into an on-disk array.

Images are decoded into a uint8 memmap on disk (N x H x W x C), so later stages stream them
instead of holding decoded images in memory. Every failure is an `InputError` naming the image
and its CSV row.

Two passes, each over contiguous chunks of rows: a probe of the headers (sizes, grayscale or
not: they fix the side and the channels), then the decode, where each chunk is written straight
into its rows of the memmap and only the files' sha256 digests come back. Chunks run in this
process (`workers` 1), in threads (small inputs) or in worker processes (see `ProcessWorkers`).
The bytes written and `images_sha256` do not depend on which, nor on the number of workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelfix.errors import InputError
from labelfix.progress import NullProgress, Progress

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# Inputs with fewer files than this are decoded in threads, not worker processes. Starting two
# workers (fresh interpreters importing numpy, then PIL) took 0.31-0.35 s on 2 busy cores. On idle
# cores two processes decode small images at about twice the rate of one (~2,700 28 px PNGs/s),
# while threads gain little (PIL holds the GIL for much of a small decode): ~0.15 ms saved a file,
# paid back from ~2,000 files. docs/benchmarks-images.md has the measurements (on a shared machine
# whose break-even against threads moved between 1,170 and 17,347 files from run to run).
PROCESS_MIN_FILES = 2_000
PARALLEL_MODES = ("auto", "inline", "threads", "processes")


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


def _unreadable(path, row: int, csv_name: str, exc: Exception) -> str:
    return f"{path}: unreadable image (row {row + 2} of {csv_name}): {exc}"


def _probe(path: Path) -> tuple[int, int, bool]:
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        gray = im.mode in ("1", "L", "LA") or _is_scalar_mode(im.mode)
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


def _load_problem(path: Path) -> str | None:
    """Why the file cannot be fully decoded (one line), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError...
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    return None


def run_chunk(task: dict) -> dict:
    """One chunk of rows `task["start"]`.. of `task["paths"]`. "check": {"bad": [[row, why],
    ...]} of the files that cannot be fully decoded. "probe" and "decode" stop at the chunk's
    first unreadable file ({"error": its one-line message}); "probe" gives {"probes": [[w, h,
    gray], ...]}, "decode" writes the rows into the memmap at `task["out"]` (shape
    `task["shape"]`, opened "r+" at the chunk's offset) and gives {"digests": [...]}. Takes
    and returns JSON-able values only: worker processes read the task from their stdin."""
    import warnings

    from PIL import Image

    # PIL warns on stderr from 89M pixels on (an image that big is decoded, as documented) and
    # refuses from 179M (DecompressionBombError: the row's unreadable-image error)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    paths, start, csv_name = task["paths"], task["start"], task["csv_name"]
    if task["kind"] == "check":
        whys = [(start + j, _load_problem(Path(p))) for j, p in enumerate(paths)]
        return {"bad": [[row, why] for row, why in whys if why is not None], "error": None}
    out, error = [], None
    mm = None
    if task["kind"] == "decode" and paths:
        _, s, _, c = task["shape"]
        mm = np.memmap(task["out"], dtype=np.uint8, mode="r+", offset=start * s * s * c, shape=(len(paths), s, s, c))
    for j, p in enumerate(paths):
        try:
            if mm is None:
                out.append(list(_probe(Path(p))))
            else:
                mm[j], digest = _decode(Path(p), task["shape"][1], task["shape"][3])
                out.append(digest)
        except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
            error = _unreadable(Path(p), start + j, csv_name, exc)
            break
    if mm is not None:
        mm.flush()
        del mm
    return {"probes" if task["kind"] == "probe" else "digests": out, "error": error}


def serve_chunks() -> None:
    """The main loop of a worker process (`ProcessWorkers`): a JSON task a line on stdin, its
    JSON result a line on stdout (an exception becomes {"crash": ...}), until stdin closes."""
    for line in sys.stdin:
        try:
            result = run_chunk(json.loads(line))
        except Exception as exc:
            result = {"crash": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


# A worker is a fresh interpreter that imports only this module and then serves chunks. Not
# multiprocessing: its "spawn" and "forkserver" methods import the caller's main script again in
# every worker (a script calling labelfix.scan(...) without an `if __name__ == "__main__":` guard
# would run again there and fail), and "fork" copies a process whose torch/OpenMP or progress
# threads may hold locks the child then waits on forever (and is no option on Windows or macOS).
WORKER_MAIN = (
    "import json, sys; sys.path[:] = json.loads(sys.stdin.readline()); "
    "from labelfix.files.images import serve_chunks; serve_chunks(); import os; os._exit(0)"
)  # os._exit: every result is sent and every chunk flushed; skipping teardown saves ~0.2 s


class ProcessWorkers:
    """`count` worker processes; `call(task)` (thread-safe, at most `count` callers at once)
    runs `run_chunk(task)` in an idle one. A context manager: leaving it ends them all."""

    def __init__(self, count: int):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.procs, self.errs, self.idle = [], [], queue.Queue()
        try:
            for _ in range(count):
                self.errs.append(tempfile.TemporaryFile())  # a worker's stderr, quoted if it dies
                p = subprocess.Popen(
                    [sys.executable, "-c", WORKER_MAIN],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self.errs[-1],
                    env=env,
                    text=True,
                    encoding="utf-8",
                )
                self.procs.append(p)
                p.stdin.write(json.dumps([str(x) for x in sys.path]) + "\n")
                p.stdin.flush()
                self.idle.put(p)
        except BaseException:
            self.close()
            raise

    def call(self, task: dict) -> dict:
        p = self.idle.get()
        try:
            p.stdin.write(json.dumps(task) + "\n")
            p.stdin.flush()
            line = p.stdout.readline()
        except OSError:  # BrokenPipeError: the worker is gone
            line = ""
        finally:
            self.idle.put(p)  # a dead one too: the next call on it fails at once, none waits
        if not line:
            raise RuntimeError(f"an image decoding worker process exited (code {p.poll()}){self.stderr_tail(p)}")
        result = json.loads(line)
        if "crash" in result:
            raise RuntimeError(f"image decoding worker: {result['crash']}")
        return result

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.close()  # the worker's loop ends at EOF
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
        for f in self.errs:
            f.close()

    def stderr_tail(self, p) -> str:
        """ ": " and the last line the worker `p` wrote to stderr ("" if none)."""
        f = self.errs[self.procs.index(p)]
        f.seek(0)
        lines = f.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
        return f": {lines[-1]}" if lines else ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def chunk_rows(n: int, workers: int) -> int:
    """Rows a chunk: about 16 chunks a worker (balanced, and progress moves), 16 to 2,048 rows."""
    return int(min(2048, max(16, math.ceil(n / (16 * max(1, workers))))))


def choose_parallel(parallel: str, n: int, workers: int) -> str:
    """ "inline" for one worker, else `parallel`, where "auto" is "threads" below
    PROCESS_MIN_FILES files and "processes" from there."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, not {parallel!r}")
    if parallel == "auto":
        frozen = getattr(sys, "frozen", False) or not sys.executable  # no interpreter to start workers with
        return "inline" if workers <= 1 else "threads" if n < PROCESS_MIN_FILES or frozen else "processes"
    return parallel


def run_chunks(tasks: list[dict], mode: str, workers: int, task, pool: ProcessWorkers | None = None) -> list[dict]:
    """`run_chunk` of every task, in order, in `mode` ("inline", "threads", or "processes" on
    `pool`); `task.advance(rows)` as each finishes. The first chunk (in row order) with an
    unreadable file raises its `InputError`, once the chunks before it are done; the chunks
    not yet started are dropped."""
    results = []
    if mode == "inline":
        for t in tasks:
            results.append(_checked(run_chunk(t)))
            task.advance(len(t["paths"]))
        return results
    fn = pool.call if mode == "processes" else run_chunk
    with ThreadPoolExecutor(workers) as ex:
        futures = [ex.submit(fn, t) for t in tasks]
        try:
            for t, f in zip(tasks, futures):
                results.append(_checked(f.result()))
                task.advance(len(t["paths"]))
        finally:
            for f in futures:
                f.cancel()
    return results


def _checked(result: dict) -> dict:
    if result["error"]:
        raise InputError(result["error"])
    return result


def choose_image_size(sizes: np.ndarray) -> int:
    """Median longer side, clamped to [8, 64] (the auto teacher is a small ResNet)."""
    side = int(np.median(sizes.max(axis=1)))
    return int(min(64, max(8, side)))


def unreadable_rows(files: list[Path], workers: int | None = None, parallel: str = "auto") -> dict[int, str]:
    """{row: reason} of the files that cannot be fully decoded (`scan --skip-unreadable`), read
    in parallel as `decode_images` does."""
    workers = int(workers or min(8, os.cpu_count() or 1))
    n = len(files)
    mode = choose_parallel(parallel, n, workers)
    paths, step = [str(f) for f in files], chunk_rows(n, workers)
    tasks = [{"kind": "check", "paths": paths[s : s + step], "start": s, "csv_name": ""} for s in range(0, n, step)]
    spawn = mode == "processes" and n > 0
    with ProcessWorkers(min(workers, len(tasks))) if spawn else contextlib.nullcontext() as pool:
        with NullProgress().task("check images", total=n) as task:
            got = run_chunks(tasks, mode, workers, task, pool)
    return {int(row): why for r in got for row, why in r["bad"]}


def decode_images(
    files: list[Path],
    out_path: Path,
    image_size: int = 0,
    csv_name: str = "labels",
    progress: Progress | None = None,
    workers: int | None = None,
    parallel: str = "auto",
) -> ImageArray:
    """Decode every image into a (N, S, S, C) uint8 memmap at `out_path`.

    Grayscale datasets keep one channel; anything with colour, alpha or a palette becomes RGB
    (alpha composited over white). `image_size` 0 picks the median side clamped to [8, 64].
    `workers` (default: the cores, at most 8) decode in parallel, in threads or worker processes
    by `parallel` (see `choose_parallel`); one worker decodes in this process. Scripts need no
    `__main__` guard: worker processes run only this module.
    """
    progress = progress or NullProgress()
    workers = int(workers or min(8, os.cpu_count() or 1))
    n = len(files)
    mode = choose_parallel(parallel, n, workers)
    paths, step = [str(f) for f in files], chunk_rows(n, workers)
    base = [{"paths": paths[s : s + step], "start": s, "csv_name": csv_name} for s in range(0, n, step)]
    spawn = mode == "processes" and n > 0
    with ProcessWorkers(min(workers, len(base))) if spawn else contextlib.nullcontext() as pool:
        with progress.task("probe images", total=n) as task:
            got = run_chunks([{**t, "kind": "probe"} for t in base], mode, workers, task, pool)
        probes = [p for r in got for p in r["probes"]]
        sizes = np.array([(w, h) for w, h, _ in probes])
        channels = 1 if all(g for _, _, g in probes) else 3
        size = image_size or choose_image_size(sizes)
        shape = (n, size, size, channels)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "wb") as f:  # the array's file, all zeros (sparse) until written
            f.truncate(n * size * size * channels)
        dec = [{**t, "kind": "decode", "out": str(out_path), "shape": shape} for t in base]
        with progress.task("decode images", total=n) as task:
            got = run_chunks(dec, mode, workers, task, pool)
    digests = [d for r in got for d in r["digests"]]
    h = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return ImageArray(out_path, shape, h)
