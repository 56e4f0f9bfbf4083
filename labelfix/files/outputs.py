"""Files of a run directory: schemas, metadata and atomic writes.

Every file is written to a temporary name in the same folder and renamed into place, so a
reader never sees half a file. `staged_run` makes a whole run all-or-nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from labelfix import __version__
from labelfix.errors import RunDirError

META_KEY = b"labelfix"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, default=_json_default, sort_keys=False)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    it is one of the `protect` paths (this run's inputs); folders left empty go too."""
    out = Path(out)
    created = not out.exists()
    was_run = _is_labelfix_run(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise
    written = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()}
    for src in sorted(stage.rglob("*")):
        if src.is_file():
            dst = out / src.relative_to(stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(stage, ignore_errors=True)
    if not was_run:
        return
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
