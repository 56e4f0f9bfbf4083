"""Files of a run directory: schemas, metadata and atomic writes.

Every file is written to a temporary name in the same folder and renamed into place, so a
reader never sees half a file. `staged_run` makes a whole run all-or-nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from labelfix import __version__
from labelfix.errors import InternalError, OutputError, RunDirError
from labelfix.files.paths import check_path_flag

META_KEY = b"labelfix"
STAGING_PREFIX = ".staging-"
TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Write through `write(tmp_name)` into a temporary file beside `path`, give it the mode a
    plain open() would (0666 less the umask: mkstemp's 0600 hid outputs from teammates), then
    rename it into place. The temporary name carries the PID, so an orphan is recognisable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _non_finite_at(obj, where: str = "") -> str | None:
    """The key path of the first NaN or infinity in obj, or None."""
    if isinstance(obj, (float, np.floating)):
        return None if math.isfinite(obj) else where or "the top level"
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fc":
        bad = np.argwhere(~np.isfinite(obj))
        return f"{where}[{', '.join(map(str, bad[0]))}]" if len(bad) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite_at(value, f"{where}.{key}" if isinstance(obj, dict) else f"{where}[{key}]")
        if found:
            return found
    return None


def to_json(obj, indent: int | None = 2) -> str:
    """Strict JSON: NaN and infinity are refused (json.dumps writes them as bare NaN, which no
    JSON parser reads) with an InternalError naming the key; labelfix writes null for "none".
    indent None: one line, by json's C encoder (an indent runs its pure-Python one, about 5x
    slower: for files of one record per row)."""
    try:
        return json.dumps(obj, indent=indent, default=_json_default, sort_keys=False, allow_nan=False)
    except ValueError:
        where = _non_finite_at(obj)
        if where is None:
            raise
        raise InternalError(f"refusing to write NaN or infinity at {where.lstrip('.')}: not JSON") from None


def atomic_write_json(path: Path, obj, indent: int | None = 2) -> None:
    try:
        text = to_json(obj, indent)
    except InternalError as exc:
        raise InternalError(f"{path}: {exc}") from None
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    _write_atomically(path, write)


def write_parquet(path: Path, columns: dict, meta: dict) -> None:
    """Write a table whose list columns hold float32 vectors; `meta` goes in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, col in columns.items():
        if isinstance(col, np.ndarray) and col.ndim == 2:
            flat = pa.array(np.ascontiguousarray(col, dtype=np.float32).ravel(), type=pa.float32())
            offsets = pa.array(np.arange(0, col.size + 1, col.shape[1], dtype=np.int32))
            arrays[name] = pa.ListArray.from_arrays(offsets, flat)
        else:
            arrays[name] = pa.array(col)
    table = pa.table(arrays)
    table = table.replace_schema_metadata({META_KEY: to_json(meta).encode()})
    _write_atomically(Path(path), lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_parquet(path: Path):
    """(DataFrame, labelfix metadata) of a labelfix Parquet file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: missing (run the earlier labelfix step first)")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise RunDirError(f"{path}: not written by labelfix (no labelfix metadata)")
    meta = json.loads(raw)
    check_version(meta.get("labelfix_version"), path)
    return table.to_pandas(), meta


def check_version(version: str | None, path: Path) -> None:
    if version is None:
        raise RunDirError(f"{path}: no labelfix version recorded")
    if version.split(".")[:2] != __version__.split(".")[:2]:
        raise RunDirError(f"{path}: written by labelfix {version}; this is {__version__}: run scan again")


def list_column(df, name: str) -> np.ndarray:
    return np.stack(df[name].to_numpy()).astype(np.float32)


@contextmanager
def staged_run(out: Path, stale: tuple[str, ...] = (), protect: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a staging folder inside `out`; on success move its files into `out`, on failure
    remove it (and `out` itself if this call created it), so bad input leaves nothing behind.

    `stale`: relative paths of files an earlier run wrote into `out` that the new outputs make
    wrong. Removed on success only, only when `out` already held a labelfix run (its
    summary.json names a labelfix version), never when the new run wrote the name itself or when
    it is one of the `protect` paths (this run's inputs); folders left empty go too.
    Staging folders that killed processes left in `out` are removed first."""
    out = Path(out)
    created = not out.exists()
    was_run = _is_labelfix_run(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    try:
        stage = Path(tempfile.mkdtemp(dir=out, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    except BaseException:
        _remove_if_created(out, created)
        raise
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_created(out, created)
        raise
    written = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()}
    for src in sorted(stage.rglob("*")):
        if src.is_file():
            dst = out / src.relative_to(stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(stage, ignore_errors=True)
    if was_run:
        _remove_stale(out, stale, written, protect)


def _remove_if_created(out: Path, created: bool) -> None:
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _remove_stale(out: Path, stale: tuple[str, ...], written: set[str], protect: tuple[Path, ...]) -> None:
    keep = {Path(p).resolve() for p in protect if p is not None}
    for name in stale:
        target = out / name
        if name in written or not target.is_file() or target.resolve() in keep:
            continue
        target.unlink(missing_ok=True)
        parent = target.parent
        while parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _is_labelfix_run(out: Path) -> bool:
    try:
        return "labelfix_version" in json.loads((out / "summary.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------
# What killed processes leave behind


def _process_start(pid: int) -> float | None:
    """Start time (seconds since the epoch) of a live process, where /proc tells it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, owned by another user
        return True
    return True


def _orphaned(path: Path, pid: int | None) -> bool:
    """True when the process that made `path` is gone: its PID is not running, or the process
    now holding that PID started after `path` was last changed (the PID was reused). A name
    without a PID (labelfix 0.2 and earlier) counts as orphaned once it is older than this process."""
    try:
        mtime = path.lstat().st_mtime
    except OSError:
        return False
    if pid is None:
        started = _process_start(os.getpid())
        return started is not None and mtime < started - 2
    if pid == os.getpid():
        return False
    if not _pid_alive(pid):
        return True
    started = _process_start(pid)
    return started is not None and started > mtime + 2


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove what killed labelfix processes left in `out` (and `out/checkpoints`): staging
    folders `.staging-PID-*` and temporary files `.NAME.PID.*.tmp`. Returns what was removed.
    Every command that writes into a folder calls this first (SIGKILL runs no clean-up)."""
    out = Path(out)
    removed = []
    for folder in (out, out / "checkpoints"):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
                head = name[len(STAGING_PREFIX) :].split("-", 1)[0]
                pid = int(head) if head.isdigit() and "-" in name[len(STAGING_PREFIX) :] else None
                if _orphaned(entry, pid):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            elif name.startswith(".") and name.endswith(TMP_SUFFIX) and entry.is_file():
                parts = name[: -len(TMP_SUFFIX)].rsplit(".", 2)
                if len(parts) == 3 and parts[1].isdigit() and _orphaned(entry, int(parts[1])):
                    entry.unlink(missing_ok=True)
                    removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------------
# Checking an output folder before a command spends time


def check_output_dir(path: Path | None, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work: a path the system
    cannot hold (NUL, over-long), an existing file, or a folder (or its nearest existing parent)
    where nothing can be created (_probe_nearest)."""
    if path is None:
        return
    path = check_path_flag(path, flag)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {flag} exists and is not a directory")
    _probe_nearest(path, path.absolute(), flag)


def _probe_nearest(path: Path, start: Path, flag: str) -> None:
    """Refuse `path` unless an entry can be created in `start` or its nearest existing parent
    (read-only, full, no permission): probed by creating and removing an empty folder, which also
    works for root on a read-only file system."""
    parent = start
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: {flag} cannot be created ({parent} is a file)")
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".labelfix-probe-"))
    except OSError as exc:
        raise OutputError(f"{path}: {flag} cannot be written ({exc.strerror or exc.__class__.__name__})") from None


def check_output_file(path: Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work (`--summary-md`, `report
    --out`): an existing folder, a parent that is a file, or a folder where nothing can be
    created."""
    if path is None:
        return
    path = check_path_flag(path, flag)
    if path.is_dir():
        raise OutputError(f"{path}: {flag} is a directory; give a file name")
    _probe_nearest(path, path.absolute().parent, flag)


@contextmanager
def leave_no_trace(folder: Path, restore: tuple[str, ...] = ()) -> Iterator[Path]:
    """On any failure in the block, remove every file and folder it created under `folder` (and
    `folder` itself if it created it) and put back the files named in `restore` (small files
    the block may overwrite, read before it starts)."""
    folder = Path(folder)
    created = not folder.exists()
    before = set() if created else set(folder.rglob("*"))
    saved = {name: (folder / name).read_bytes() for name in restore if (folder / name).is_file()}
    try:
        yield folder
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            if p not in before:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        for name in restore:
            if name in saved:
                atomic_write_bytes(folder / name, saved[name])
            else:
                (folder / name).unlink(missing_ok=True)
        raise
