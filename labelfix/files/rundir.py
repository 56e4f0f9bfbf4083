"""The run directory: the one owner of its file names, what labelfix wrote there, and how.

- Every file name of a run lives here (no other module spells one).
- `labelfix-manifest.json` lists each file labelfix wrote, with the command that wrote it and its
  size (and SHA-256 for small files). labelfix deletes only files it lists, so a folder that held
  the user's own `student.pt` is never cleaned of it, and a loader refuses a listed file whose
  size changed (truncated or replaced) and a file the manifest does not list (foreign).
- Typed loaders validate what they read; a corrupt, foreign or missing file is a RunDirError
  (exit 4) with a one-line message naming it.
- `RunDir.commit(command)` stages every file of a command in a hidden folder and moves them in
  together, the manifest last; a `.commit-pending` marker makes a commit cut short by a crash
  visible (loaders refuse the run until the command runs again). On any failure the staging
  folder is removed and the run is as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from labelfix import __version__
from labelfix.errors import RunDirError
from labelfix.files.outputs import atomic_write_json, check_version, read_parquet, remove_stale_staging

SUMMARY = "summary.json"
SCAN = "scan.parquet"
GRAPH_IDS = "graph_ids.npy"
GRAPH_SIMS = "graph_sims.npy"
EMBEDDINGS = "embeddings.npy"
REFINED = "refined.parquet"
REFINED_CSV = "labels.refined.csv"
STUDENT_EMB = "student_embeddings.npy"
STUDENT_PROBS = "student_probs.npy"
STUDENT = "student.pt"
STUDENT_META = "student.json"
DISTILL = "distill.json"
CHECKPOINT = "checkpoints/student-last.pt"
CACHE = "cache"
MANIFEST = "labelfix-manifest.json"
PENDING = ".commit-pending"
REPORT = "report.html"
NOISE_MATRIX = "noise_matrix.npy"
CONFIDENT_JOINT = "confident_joint.npy"
REVIEW_CSV = "review.csv"
LABEL_STUDIO = "labelstudio.json"
LABEL_STUDIO_CONFIG = "labelstudio-config.xml"

COMMANDS = ("scan", "refine", "distill", "predict")
HASHED_BELOW = 64 << 20  # files smaller than this get a SHA-256 in the manifest
SCAN_COLUMNS = ("path", "given_label", "given_index", "teacher_probs", "clean_prob", "is_issue", "issue_score")


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Graph:
    ids: np.ndarray
    sims: np.ndarray
    index_kind: str


class RunDir:
    """A labelfix run directory (it need not exist yet: `scan` creates it)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._verified: set = set()  # (name, size, mtime) whose content matched the manifest

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ manifest

    def manifest(self) -> dict:
        """{relative path: {"command", "size", "sha256"?}} of the files labelfix wrote here."""
        path = self.path / MANIFEST
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            files = data["files"]
            if not isinstance(files, dict):
                raise TypeError("files is not an object")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RunDirError(f"{path}: not a valid labelfix manifest ({exc}); run labelfix scan again") from None
        return files

    def written(self, name: str) -> bool:
        """True when `name` is in the run and labelfix wrote it."""
        return name in self.manifest() and (self.path / name).is_file()

    def check_file(self, name: str, what: str = "run labelfix scan again") -> Path:
        """The path of a labelfix-written file, refusing a missing, foreign, or changed one."""
        self.check_complete()
        path = self.path / name
        entry = self.manifest().get(name)
        if not path.is_file():
            raise RunDirError(f"{path}: missing ({what})")
        if entry is None:
            raise RunDirError(f"{path}: not written by labelfix (not in {MANIFEST}); move it away or {what}")
        cut = self.interrupted()
        if cut:
            what = f"an interrupted labelfix {cut} left it half-written: run labelfix {cut} again"
        stat = path.stat()
        if stat.st_size != entry.get("size"):
            raise RunDirError(f"{path}: changed since labelfix wrote it (size differs); {what}")
        key = (name, stat.st_size, stat.st_mtime_ns)
        if "sha256" in entry and key not in self._verified:  # every byte: ~1 s per GB, once per command
            if sha256_path(path) != entry["sha256"]:
                raise RunDirError(f"{path}: changed since labelfix wrote it (content differs); {what}")
            self._verified.add(key)
        return path

    def check_complete(self) -> None:
        """Refuse a run whose scan was cut short while its files were being moved in."""
        if self.interrupted() == "scan":
            raise RunDirError(f"{self.path}: an interrupted labelfix scan left this run half-written; run it again")

    def interrupted(self) -> str | None:
        """The command whose commit was cut short here, if any."""
        try:
            return (self.path / PENDING).read_text().strip() or "labelfix"
        except OSError:
            return None

    # ------------------------------------------------------------------ loaders

    def load_summary(self) -> dict:
        if not self.path.is_dir():
            what = "a file, not a run directory" if self.path.exists() else "run directory not found"
            raise RunDirError(f"{self.path}: {what}")
        path = self.path / SUMMARY
        if path.is_file() and SUMMARY not in self.manifest():
            _check_old_version(path)  # a run of another labelfix version has no manifest
        path = self.check_file(SUMMARY, "run labelfix scan first")
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path}: not valid JSON ({exc}); run labelfix scan again") from None
        if not isinstance(summary, dict):
            raise RunDirError(f"{path}: not a labelfix summary (not a JSON object)")
        check_version(summary.get("labelfix_version"), path)
        for key in ("class_names", "graph", "inputs", "seed", "counts"):
            if key not in summary:
                raise RunDirError(f"{path}: key {key!r} missing; run labelfix scan again")
        names = summary["class_names"]
        if not isinstance(names, list) or len(names) < 2 or len(set(map(str, names))) != len(names):
            raise RunDirError(f"{path}: class_names must list two or more distinct classes")
        return summary

    def load_table(self, name: str, columns: tuple[str, ...], n: int | None = None):
        """(DataFrame, metadata) of a labelfix Parquet file, with the columns checked."""
        path = self.check_file(name)
        try:
            df, meta = read_parquet(path)
        except RunDirError:
            raise
        except Exception as exc:  # pyarrow raises many types for a damaged file
            raise RunDirError(f"{path}: unreadable Parquet ({type(exc).__name__}); run labelfix scan again") from None
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise RunDirError(f"{path}: column {missing[0]!r} missing; run labelfix scan again")
        if n is not None and len(df) != n:
            raise RunDirError(f"{path}: {len(df)} rows, expected {n}; run labelfix scan again")
        return df, meta

    def load_scan(self, summary: dict):
        """scan.parquet, checked against the summary: row count, class indices and probabilities."""
        from labelfix.core.sparse import TOP_COLUMNS, is_sparse

        n, c = int(summary["counts"].get("samples", -1)), len(summary["class_names"])
        sparse = is_sparse(c)  # above SPARSE_ABOVE classes the teacher's top-m lists replace teacher_probs
        columns = (tuple(x for x in SCAN_COLUMNS if x != "teacher_probs") + TOP_COLUMNS) if sparse else SCAN_COLUMNS
        df, meta = self.load_table(SCAN, columns, n)
        y = df["given_index"].to_numpy()
        if len(y) and (y.min() < 0 or y.max() >= c):
            raise RunDirError(f"{self.path / SCAN}: given_index outside 0..{c - 1}; run labelfix scan again")
        name, width = (TOP_COLUMNS[0], meta.get("top_m")) if sparse else ("teacher_probs", c)
        head = df[name].head(1000)
        widths = {len(v) for v in head}
        if widths - {width} or (sparse and any(len(v) and (v.min() < 0 or v.max() >= c) for v in head)):
            raise RunDirError(
                f"{self.path / SCAN}: {name} rows are not {width} classes of {c}; run labelfix scan again"
            )
        return df, meta

    def load_array(self, name: str, rows: int, dtype_kind: str = "f", cols: int | None = None) -> np.ndarray:
        """A 2-D .npy labelfix wrote, memory-mapped, with its shape and dtype checked."""
        path = self.check_file(name)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise RunDirError(f"{path}: not a readable .npy file ({exc}); run labelfix scan again") from None
        if arr.ndim != 2 or arr.shape[0] != rows or (cols is not None and arr.shape[1] != cols):
            want = f"({rows}, {cols if cols is not None else 'd'})"
            raise RunDirError(f"{path}: shape {arr.shape}, expected {want}; run labelfix scan again")
        if arr.dtype.kind != dtype_kind:
            raise RunDirError(f"{path}: dtype {arr.dtype}, expected kind {dtype_kind!r}; run labelfix scan again")
        return arr

    def load_graph(self, summary: dict) -> Graph:
        n = int(summary["counts"]["samples"])
        ids = np.asarray(self.load_array(GRAPH_IDS, n, "i"))
        sims = np.asarray(self.load_array(GRAPH_SIMS, n, "f", ids.shape[1]))
        if ids.size and (ids.min() < -1 or ids.max() >= n):
            raise RunDirError(f"{self.path / GRAPH_IDS}: neighbour ids outside 0..{n - 1}; run labelfix scan again")
        if not np.isfinite(sims).all():
            raise RunDirError(f"{self.path / GRAPH_SIMS}: NaN or infinite similarities; run labelfix scan again")
        return Graph(ids, sims, str(summary["graph"].get("index", "unknown")))

    def load_embeddings(self, summary: dict) -> np.ndarray:
        """The teacher embeddings: in the run (--pred-probs runs) or in its teacher cache."""
        n = int(summary["counts"]["samples"])
        cache = (summary.get("teacher") or {}).get("cache")
        name = EMBEDDINGS if cache is None else f"{cache}/{EMBEDDINGS}"
        return self.load_array(name, n, "f")

    def load_json(self, name: str, what: str) -> dict:
        path = self.check_file(name, what)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path}: not valid JSON ({exc}); {what}") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path}: not a JSON object; {what}")
        return data

    # ------------------------------------------------------------------ writing

    def record(self, names: list[str], command: str) -> None:
        """List files a command wrote in place, outside a commit (distill's resume checkpoint
        and rounds state), in the manifest, so a later scan removes them with the run."""
        manifest = self.manifest()
        for name in names:
            if (self.path / name).is_file():
                manifest[name] = _entry(self.path / name, command)
        atomic_write_json(self.path / MANIFEST, {"labelfix_version": __version__, "files": manifest})

    def write_recorded(self, command: str):
        """A `write(path, data)` for files written in place that records each in the manifest."""
        from labelfix.files.outputs import atomic_write_bytes

        def write(path: Path, data: bytes) -> None:
            atomic_write_bytes(path, data)
            self.record([Path(path).resolve().relative_to(self.path.resolve()).as_posix()], command)

        return write

    @contextmanager
    def commit(self, command: str, *, clean: bool = False, keep: tuple[Path | None, ...] = ()) -> Iterator[Path]:
        """Stage the files of one command; on success move them in together (manifest last).

        Yields the staging folder: write files there under their run-relative names. On any
        exception the staging folder goes (and the run folder, if this call created it and it is
        empty), and the run is unchanged. With `clean` (a new scan), every other file the
        manifest lists is deleted on success, caches excepted: never a file labelfix did not
        write, never one in `keep` (the command's inputs)."""
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.path)
        stage = Path(tempfile.mkdtemp(dir=self.path, prefix=f".staging-{os.getpid()}-"))
        try:
            yield stage
            self._publish(stage, command, keep if clean else None)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            if created and self.path.exists() and not any(self.path.iterdir()):
                self.path.rmdir()
            raise
        shutil.rmtree(stage, ignore_errors=True)

    def _publish(self, stage: Path, command: str, keep: tuple[Path | None, ...] | None) -> None:
        """Move the staged files in; `keep` None: delete nothing, else clean all but `keep`."""
        old = self.manifest() if (self.path / MANIFEST).is_file() else {}
        new_files = sorted(p for p in stage.rglob("*") if p.is_file())
        written = {p.relative_to(stage).as_posix(): p for p in new_files}
        entries = {name: _entry(path, command) for name, path in written.items()}
        stale = [n for n in old if keep is not None and n not in written and not n.startswith(CACHE + "/")]
        kept = {Path(p).resolve() for p in keep or () if p is not None}
        stale = [name for name in stale if (self.path / name).resolve() not in kept]
        manifest = {name: e for name, e in old.items() if name not in stale}
        manifest.update(entries)
        atomic_write_json(stage / MANIFEST, {"labelfix_version": __version__, "files": manifest})
        pending = self.path / PENDING
        pending.write_text(command + "\n")
        for name, src in written.items():
            dst = self.path / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        os.replace(stage / MANIFEST, self.path / MANIFEST)
        pending.unlink()
        for name in stale:
            _remove(self.path, name)


def _check_old_version(path: Path) -> None:
    """Name the version of a summary.json without a manifest entry, when it has one."""
    try:
        version = json.loads(path.read_text()).get("labelfix_version")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(version, str):
        check_version(version, path)


def _entry(path: Path, command: str) -> dict:
    size = path.stat().st_size
    entry = {"command": command, "size": size}
    if size < HASHED_BELOW and not path.name.endswith(".u8"):
        entry["sha256"] = sha256_path(path)
    return entry


def _remove(root: Path, name: str) -> None:
    target = root / name
    target.unlink(missing_ok=True)
    parent = target.parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
