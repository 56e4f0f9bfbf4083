"""The user's .npy inputs (--pred-probs, --embeddings, bench's label vectors), checked.

Only plain numeric arrays are read: pickles, .npz archives, complex, string and object arrays
are refused with one line naming the file and flag, as are arrays of the wrong shape, NaN or
infinity, and arrays that carry no information (no columns, all zeros).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelfix.core.sparse import chunks, is_sparse, read_rows
from labelfix.errors import InputError
from labelfix.files.paths import check_path_flag, show

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats: never complex, objects, strings


def open_npy(path: Path, flag: str) -> np.ndarray:
    """A plain .npy file as an array (memory-mapped), refusing pickles, archives and non-numbers."""
    path = check_path_flag(path, flag)
    if path.is_dir():
        raise InputError(f"{path}: {flag} is a folder; give the .npy file")
    if not path.is_file():
        raise InputError(f"{path}: {flag} file not found")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):
        raise InputError(f"{path}: {flag} is an .npz archive; save one array with numpy.save")
    if magic != b"\x93NUMPY":
        raise InputError(f"{path}: {flag} is not a readable .npy file (no .npy header; save it with numpy.save)")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "python objects" in str(exc).lower():
            raise InputError(f"{path}: {flag} holds pickled Python objects; labelfix never unpickles") from None
        raise InputError(f"{path}: {flag} is not a readable .npy file ({show(str(exc), 120)})") from None
    except Exception as exc:  # a damaged header: numpy raises several types
        raise InputError(f"{path}: {flag} is not a readable .npy file ({exc.__class__.__name__})") from None
    if arr.dtype.kind not in NUMERIC_KINDS:
        what = "complex" if arr.dtype.kind == "c" else "non-numeric"
        raise InputError(f"{path}: {flag} has {what} values (dtype {arr.dtype}); real numbers are needed")
    return arr


NORMALISED = 1e-5  # |row sum - 1| within which large-C probabilities are used without a copy


def load_npy(path: Path, flag: str, n_rows: int, n_cols: int | None = None) -> np.ndarray:
    """A 2-D real .npy whose rows follow the CSV's rows, checked block by block (finite, not all
    zeros) and returned memory-mapped, in the file's dtype: nothing N x D is read whole here.
    Consumers convert to float32 in blocks (feature_space, check_pred_probs)."""
    arr = open_npy(path, flag)
    path = Path(path)
    if arr.ndim != 2:
        raise InputError(f"{path}: {flag} must be 2-D (rows x columns), got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise InputError(f"{path}: {flag} has {arr.shape[0]} rows but the labels CSV has {n_rows}")
    if arr.shape[1] == 0:
        raise InputError(f"{path}: {flag} has no columns (shape {arr.shape})")
    if n_cols is not None and arr.shape[1] != n_cols:
        hint = " (a class no row is given? list them all with --classes)" if arr.shape[1] > n_cols else ""
        raise InputError(f"{path}: {flag} has {arr.shape[1]} columns but there are {n_cols} classes{hint}")
    nonzero = False
    for s in chunks(*arr.shape):
        block = read_rows(arr, s)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            i = s.start + int(np.flatnonzero(~finite)[0])
            raise InputError(
                f"{path}: {flag} row {i} (counted from 0) has NaN or infinite values (or values beyond float32)"
            )
        nonzero = nonzero or bool(block.any())
    if not nonzero:
        raise InputError(f"{path}: {flag} is all zeros")
    return arr


def check_pred_probs(probs: np.ndarray, path: Path | None, name: str = "--pred-probs") -> np.ndarray:
    """Probabilities checked (no negatives, rows summing to 1 within 1e-3) and renormalised in
    float32, block by block into one new array; errors start with `path: name` (the CLI) or
    `name:` (the Python API, path None).

    Above SPARSE_ABOVE classes a float32 input whose rows are already normalised (within
    NORMALISED) is returned as it is, memory-mapped when it is: N x C is never copied (1M x 1,000
    float32 is 4 GB); the sparse detection reads it in blocks."""
    where = f"{path}: {name}" if path is not None else f"{name}:"
    n, c = probs.shape
    out = None if is_sparse(c) else np.empty((n, c), dtype=np.float32)
    as_is = is_sparse(c) and probs.dtype == np.float32
    for s in chunks(n, c):
        block = read_rows(probs, s)
        neg = np.flatnonzero((block < -1e-6).any(axis=1))
        if len(neg):
            raise InputError(
                f"{where} row {s.start + neg[0]} (counted from 0) has negative values; pass probabilities, not logits"
            )
        sums = block.sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
        if len(bad):
            raise InputError(f"{where} row {s.start + bad[0]} (counted from 0) sums to {sums[bad[0]]:.4f}, not 1")
        as_is = as_is and bool((block >= 0).all() and (np.abs(sums - 1.0) <= NORMALISED).all())
        if out is not None:
            block = np.clip(block, 0, None)
            out[s] = block / block.sum(axis=1, keepdims=True)
    if out is not None or as_is:
        return out if out is not None else probs
    out = np.empty((n, c), dtype=np.float32)
    for s in chunks(n, c):
        block = np.clip(read_rows(probs, s), 0, None)
        out[s] = block / block.sum(axis=1, keepdims=True)
    return out


def load_label_vector(path: Path, flag: str, n_rows: int | None = None, n_classes: int | None = None) -> np.ndarray:
    """A (N,) .npy of integer class indices (bench's --noisy-labels / --true-labels) as int64."""
    arr = open_npy(path, flag)
    path = Path(path)
    if arr.ndim != 1:
        raise InputError(f"{path}: {flag} must be 1-D (one class index per row), got shape {arr.shape}")
    if n_rows is not None and len(arr) != n_rows:
        raise InputError(f"{path}: {flag} has {len(arr)} rows but --pred-probs has {n_rows}")
    values = np.asarray(arr)
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values == np.round(values)).all()):
        raise InputError(f"{path}: {flag} has non-integer values; class indices are needed")
    values = values.astype(np.int64)
    hi = n_classes - 1 if n_classes is not None else None
    bad = np.flatnonzero((values < 0) | (values > hi if hi is not None else False))
    if len(bad):
        limit = f"0..{hi}" if hi is not None else ">= 0"
        raise InputError(f"{path}: {flag} row {bad[0]} (counted from 0): class {values[bad[0]]} is outside {limit}")
    return values
