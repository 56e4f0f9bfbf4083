"""Reading the user's inputs: a labels CSV, an ImageFolder tree, .npy model outputs, flags.

Every check raises `InputError` with one line naming the file, row, column or flag at fault.
Rows are numbered as lines of the CSV file (the header is line 1, so the first sample is row 2).
Images are identified by their resolved path: `img.png`, `./img.png` and an absolute path inside
the images folder are one image, and naming it twice is an error naming both rows.
Decoding images lives in `labelfix.files.images`, the .npy checks in `labelfix.files.npy` (both
re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import InputError
from labelfix.files.images import (  # noqa: F401  (re-exported: callers read images through inputs)
    IMAGE_EXTENSIONS,
    ImageArray,
    choose_image_size,
    decode_images,
)
from labelfix.files.npy import check_pred_probs, load_label_vector, load_npy, open_npy  # noqa: F401
from labelfix.files.paths import check_path_flag, path_problem, show  # noqa: F401

LABEL_MAX = 1000  # characters of a class name; longer is a broken CSV (an unclosed quote)
# The strings pandas (and most CSV tools) read as a missing value by default. labelfix reads
# them literally, but a class called "NA" would turn into a missing label in the user's next
# tool, so such a label is refused unless --classes names it (the user's explicit decision).
NA_STRINGS = frozenset(
    "#N/A,#N/A N/A,#NA,-1.#IND,-1.#QNAN,-NaN,-nan,1.#IND,1.#QNAN,<NA>,N/A,NA,NULL,NaN,None,n/a,nan,null".split(",")
)


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


def read_class_list(value: str | None) -> list[str] | None:
    """--classes: a file with one name per line, or a comma list; at least two distinct names."""
    if value is None:
        return None
    p = Path(value) if path_problem(value) is None else None
    try:
        names = [line.strip() for line in p.read_text().splitlines() if line.strip()] if p and p.is_file() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--classes {value}: cannot be read ({exc.__class__.__name__})") from None
    if names is None:
        names = [s.strip() for s in value.split(",") if s.strip()]
    from collections import Counter

    twice = sorted(n for n, times in Counter(names).items() if times > 1)
    if twice:
        raise InputError(f"--classes: {', '.join(repr(n) for n in twice[:5])} listed more than once")
    if len(names) < 2:
        raise InputError("--classes: needs at least two distinct class names")
    return names


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


def _number(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def check_label_spellings(given, source: str, declared: list[str] | None, row=lambda i: f"row {i + 2}") -> None:
    """Refuse labels that look missing ("NA", "NaN", ...) and one number spelled two ways ("1",
    "1.0"), unless --classes declares them. Merging "1" and "1.0" silently would write a
    labels.refined.csv with both spellings; keeping them apart would split one class in two."""
    declared_set = set(declared or ())
    first: dict[str, int] = {}
    for i, g in enumerate(given):
        first.setdefault(g, i)
    for g, i in first.items():
        if len(g) > LABEL_MAX:
            raise InputError(f"{source}: {row(i)}: label {show(g)} is over {LABEL_MAX} characters (an unclosed quote?)")
        if g in NA_STRINGS and g not in declared_set:
            raise InputError(
                f"{source}: {row(i)}: label {g!r} reads as a missing value in most tools; "
                "rename the class, drop the row, or list it in --classes to keep it as a class name"
            )
    numbers: dict[float, str] = {}
    for g, i in first.items():
        x = _number(g)
        if x is None or g in declared_set:
            continue
        other = numbers.setdefault(x, g)
        if other != g:
            raise InputError(
                f"{source}: labels {other!r} ({row(first[other])}) and {g!r} ({row(i)}) are one number spelled "
                "two ways: write every label of a class the same way (or list both in --classes)"
            )


def _read_csv_frame(csv_path: Path, path_col: str, label_col: str) -> pd.DataFrame:
    problem = path_problem(csv_path)
    if problem:
        raise InputError(f"--labels {show(os.fspath(csv_path))}: {problem}")
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: labels file not found")
    try:
        # every cell a literal string: "NA" stays "NA", "007" stays "007" (decided below)
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as exc:  # pandas raises many types for malformed files
        msg = show(str(exc), 120)
        raise InputError(f"{csv_path}: cannot be read as a UTF-8 CSV ({exc.__class__.__name__}: {msg})") from None
    for flag, col in (("--path-col", path_col), ("--label-col", label_col)):
        if col not in df.columns:
            cols = show(", ".join(map(str, df.columns)), 200)
            raise InputError(f"{csv_path}: no column {col!r} (set {flag}; columns are {cols})")
    if len(df) == 0:
        raise InputError(f"{csv_path}: no rows")
    return df


def _check_paths(csv_path: Path, paths: np.ndarray, path_col: str) -> None:
    """Empty, NUL, over-long and duplicate paths (compared after removing `./` and `a/../`)."""
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p == "":
            raise InputError(f"{csv_path}: row {i + 2}: empty {path_col!r}")
        problem = path_problem(p)
        if problem:
            raise InputError(f"{csv_path}: row {i + 2}: path {show(p)} {problem}")
        key = posixpath.normpath(p)
        j = seen.setdefault(key, i)
        if j != i:
            same = "" if paths[j] == p else f" (as {paths[j]!r})"
            raise InputError(f"{csv_path}: row {i + 2}: path {show(p)} duplicates row {j + 2}{same}")


def read_labels_csv(
    csv_path: Path,
    path_col: str = "path",
    label_col: str = "label",
    classes: list[str] | None = None,
) -> LabelSet:
    """Read and validate a labels CSV (one row per sample)."""
    csv_path = Path(csv_path)
    df = _read_csv_frame(csv_path, path_col, label_col)
    paths = df[path_col].astype(str).str.strip().to_numpy()
    given = np.array([_label_text(v) for v in df[label_col]], dtype=object)
    for i, g in enumerate(given):
        if g == "":
            raise InputError(f"{csv_path}: row {i + 2}: empty {label_col!r}")
    _check_paths(csv_path, paths, path_col)
    check_label_spellings(given, str(csv_path), classes)
    class_names = list(classes) if classes else _class_order(list(given))
    index = {c: j for j, c in enumerate(class_names)}
    y = np.empty(len(given), dtype=np.int64)
    for i, g in enumerate(given):
        j = index.get(g)
        if j is None:
            names = show(", ".join(class_names[:20]), 200)
            raise InputError(f"{csv_path}: row {i + 2}: label {show(g)} names no class (classes: {names})")
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
                f"{source}: class {show(labels.class_names[j])} has one sample ({labels.paths[i]}); "
                "it cannot be checked against others: remove it or add samples"
            )


def read_image_folder(root: Path, class_order: list[str] | None = None) -> LabelSet:
    """ImageFolder layout: ROOT/CLASS_NAME/IMAGE, one subfolder per class. Hidden files and
    folders (names starting with '.': macOS's ._* AppleDouble files, .ipynb_checkpoints) are
    not images of the dataset and are left out."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: no class subfolders (pass --labels CSV or use one folder per class)")
    paths, given = [], []
    for c in classes:
        for f in sorted((root / c).rglob("*")):
            hidden = any(part.startswith(".") for part in f.relative_to(root / c).parts)
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not hidden:
                paths.append(f.relative_to(root).as_posix())
                given.append(c)
    if not paths:
        raise InputError(f"{root}: no images found in the class subfolders")
    check_label_spellings(given, str(root), class_order, row=lambda i: f"folder of {paths[i]}")
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
    """Absolute file paths; refuses paths that escape `root`, files that do not exist, and one
    image named twice (by resolved path: `a.png`, `./a.png`, `/abs/root/a.png`, a symlink to it)."""
    if root is None:
        raise InputError(
            f"{csv_name}: give IMAGES_DIR (the folder its paths are relative to), "
            "or --pred-probs with out-of-sample model probabilities"
        )
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: images folder not found")
    out: list[Path] = []
    seen: dict[Path, int] = {}
    for i, p in enumerate(labels.paths):
        problem = path_problem(p)
        if problem:
            raise InputError(f"{csv_name}: row {i + 2}: path {show(p)} {problem}")
        try:
            full = (root / p).resolve()
            is_file = full.is_file()
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name the file system refuses
            raise InputError(f"{csv_name}: row {i + 2}: path {show(p)} cannot be resolved ({exc})") from None
        if not full.is_relative_to(root):
            raise InputError(f"{csv_name}: row {i + 2}: path {show(p)} escapes the images folder {root}")
        if not is_file:
            what = "a folder, not an image file" if full.is_dir() else "image not found"
            raise InputError(f"{full}: {what} (row {i + 2} of {csv_name})")
        j = seen.setdefault(full, i)
        if j != i:
            raise InputError(
                f"{csv_name}: rows {j + 2} and {i + 2} name the same image {full} "
                f"(as {show(labels.paths[j])} and {show(p)}): keep one row"
            )
        out.append(full)
    return out
