"""What the report reads: the run's files (validated as the report needs them) and thumbnails."""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from labelfix.errors import RunDirError

SCAN_COLUMNS = ("path", "given_label", "given_index", "issue_score", "is_issue", "suggested_label")
REFINED_COLUMNS = ("path", "ambiguity", "action")
DUPLICATE_COLUMNS = ("duplicate_group", "duplicate_conflict")
THUMB_BUDGET = 12_000_000  # characters of embedded images (gallery cards first); the rest render without
THUMB_SIDE, NEIGHBOUR_SIDE = 64, 32
MAX_GALLERY_CLASSES, MAX_MATRIX_CLASSES = 100, 30
MAX_DUPLICATE_GROUPS, QUEUE_PAGE = 200, 100


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def num(x, fmt: str = ".3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def load(path: Path, read):
    """read(path); RunDirError naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise RunDirError(f"{path}: missing (run labelfix scan first)")
    try:
        return read(path)
    except RunDirError:
        raise
    except Exception as exc:
        raise RunDirError(f"{path}: unreadable ({one_line(exc)})") from None


def parquet(path: Path, required: tuple, optional: tuple = ()):
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    missing = [c for c in required if c not in names]
    if missing:
        raise RunDirError(f"{path}: no column {missing[0]!r} (written by another labelfix version: run scan again)")
    columns = list(required) + [c for c in optional if c in names]
    return pq.read_table(path, columns=columns).to_pandas(integer_object_nulls=True)  # group ids stay integers


class Run:
    """What the page shows of a run directory, read once."""

    def __init__(self, run_dir: Path, neighbours: int):
        self.dir, path = run_dir, run_dir / "summary.json"
        self.summary = load(path, lambda p: json.loads(p.read_text(encoding="utf-8")))
        if not isinstance(self.summary, dict) or not isinstance(self.summary.get("class_names"), list):
            raise RunDirError(f"{path}: not a labelfix scan summary (no class_names)")
        self.names = [str(c) for c in self.summary["class_names"]]
        df = load(run_dir / "scan.parquet", lambda p: parquet(p, SCAN_COLUMNS, DUPLICATE_COLUMNS))
        self.n, self.y = len(df), df["given_index"].to_numpy().astype(np.int64)
        text = (df[c].astype(str).to_numpy() for c in ("path", "given_label", "suggested_label"))
        self.paths, self.given, self.suggested = text
        self.score, self.flags = df["issue_score"].to_numpy().astype(np.float64), df["is_issue"].to_numpy().astype(bool)
        self.dups = df[list(DUPLICATE_COLUMNS)] if all(c in df for c in DUPLICATE_COLUMNS) else None
        self.ids, self.sims = (self._graph(name, neighbours) for name in ("graph_ids.npy", "graph_sims.npy"))
        self.amb = self.action = None
        if (run_dir / "refined.parquet").is_file():
            ref = load(run_dir / "refined.parquet", lambda p: parquet(p, REFINED_COLUMNS))
            if len(ref) != self.n or (ref["path"].astype(str).to_numpy() != self.paths).any():
                raise RunDirError(f"{run_dir / 'refined.parquet'}: rows differ from scan.parquet (run refine again)")
            self.amb, self.action = ref["ambiguity"].to_numpy().astype(np.float64), ref["action"].astype(str).to_numpy()
        self.thumbs = Thumbs(run_dir, self.summary, self.paths)

    def _graph(self, name: str, neighbours: int) -> np.ndarray:
        path = self.dir / name
        arr = load(path, lambda p: np.load(p, mmap_mode="r", allow_pickle=False))
        if arr.ndim != 2 or len(arr) != self.n:
            raise RunDirError(f"{path}: shape {arr.shape} does not match scan.parquet's {self.n} rows")
        return arr[:, : max(0, neighbours)]

    def neighbour_rows(self, i: int) -> list[tuple[int, float]]:
        return [(int(j), float(s)) for j, s in zip(self.ids[i], self.sims[i]) if 0 <= j < self.n and j != i]

    def vote(self, i: int, top: int = 3) -> str:
        counts = Counter(self.given[j] for j, _ in self.neighbour_rows(i)).most_common(top)
        return ", ".join(f"{esc(label)} ({k})" for label, k in counts) or "none"

    def refined(self, i: int) -> tuple[str, str]:  # (ambiguity, action) as HTML; dashes without refine
        if self.action is None:
            return "–", "–"
        return num(self.amb[i], ".2f"), f'<span class="act-{esc(self.action[i])}">{esc(self.action[i])}</span>'


class Thumbs:
    """<img> tags with PNG data URIs from the images (or scan's decoded cache), until THUMB_BUDGET is spent."""

    def __init__(self, run_dir: Path, summary: dict, paths: np.ndarray):
        self.paths, self.memo, self.left, self.skipped = paths, {}, THUMB_BUDGET, 0
        root = (summary.get("inputs") or {}).get("images_dir")
        self.root = Path(root).resolve() if root and Path(root).is_dir() else None
        info = summary.get("images") or {}
        shape, cache = tuple(info.get("shape") or ()), run_dir / str(info.get("cache") or "-")
        ok = len(shape) == 4 and shape[0] == len(paths) and cache.is_file() and cache.stat().st_size == np.prod(shape)
        self.cache = np.memmap(cache, dtype=np.uint8, mode="r", shape=shape) if ok else None
        self.available = self.root is not None or self.cache is not None

    def img(self, i: int, side: int = THUMB_SIDE) -> str:
        if not self.available:
            return ""
        uri = self.memo.get((i, side), False)
        if uri is False:
            uri = self.memo[(i, side)] = self._uri(i, side) if self.left > 0 else None
            self.skipped, self.left = self.skipped + (self.left <= 0), self.left - len(uri or "")
        if uri is None:
            return f'<span class="nt" style="width:{side}px;height:{side}px" title="no thumbnail"></span>'
        return f'<img class="t" src="{uri}" width="{side}" height="{side}" alt="">'

    def _uri(self, i: int, side: int) -> str | None:
        from PIL import Image

        im, path = None, (self.root / self.paths[i]).resolve() if self.root is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's DecompressionBombWarning: the library never prints
            if path is not None and path.is_relative_to(self.root) and path.is_file():
                try:
                    with Image.open(path) as src:
                        src.draft(None, (2 * side, 2 * side))  # JPEG: decode at a reduced size
                        im = displayable(src)
                except Exception:
                    im = None
            if im is None and self.cache is not None:
                arr = np.asarray(self.cache[i])
                im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            if im is None:
                return None
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def displayable(im):
    """A loaded L or RGB copy of `im`; transparency composited on white."""
    from PIL import Image

    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit and float images: stretched to 8 bits
        arr = np.array(im, dtype=np.float32)
        arr -= arr.min()
        return Image.fromarray((arr / (float(arr.max()) or 1.0) * 255).astype(np.uint8), "L")
    if im.mode == "P" or "A" in im.mode:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("L" if im.mode in ("L", "1") else "RGB")
