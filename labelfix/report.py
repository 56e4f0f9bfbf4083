"""`labelfix report`: one self-contained HTML page of a run directory (issue 12).

Reads summary.json, scan.parquet, the kNN graph and, when refine has run, refined.parquet, and
writes one HTML file that needs no network and no other file: thumbnails are PNGs embedded as
base64, the plots are inline SVG and coloured tables, and there is no JavaScript (the queue's
pages and the neighbour lists are <details> elements). Every string from the data (class names,
paths, warnings) is escaped. Galleries and the review queue are capped and the embedded images
share a byte budget, so a 100k-row run gives a page of a few MB.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import InputError, RunDirError

SCAN_COLUMNS = ("path", "given_label", "issue_score", "is_issue", "suggested_label")
REFINED_COLUMNS = ("path", "ambiguity", "action", "refined_label")
DUPLICATE_COLUMNS = ("duplicate_group", "duplicate_conflict")
THUMB_BUDGET = 12_000_000  # characters of embedded images; later cards render without one
THUMB_SIDE, NEIGHBOUR_SIDE = 64, 32
MAX_GALLERY_CLASSES, MAX_MATRIX_CLASSES, MAX_TABLE_CLASSES = 100, 30, 1000
MAX_DUPLICATE_GROUPS, QUEUE_PAGE = 200, 100

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 40px;color:#222;background:#fafafa}
h1{margin:16px 0 4px}h2{margin-top:32px;border-bottom:1px solid #ccc}nav a{margin-right:12px}
.muted{color:#666}.warn{background:#fff3cd;border:1px solid #e0b84c;padding:8px 12px;margin:8px 0}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:8px}
.kv div{background:#fff;border:1px solid #ddd;padding:6px 10px}.kv b{display:block;font-size:18px}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td.l,th.l{text-align:left}.hm td{width:34px;font-size:11px;text-align:center}
.hm th{font-size:11px;max-width:90px;overflow:hidden;white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{margin:0;width:150px;background:#fff;border:1px solid #ddd;
padding:6px;font-size:12px}.card .p,.q .p{max-width:280px;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}img.t{object-fit:contain;image-rendering:pixelated;background:#fff;border:1px solid #eee}
.nt{display:inline-block;width:32px;height:32px;background:#eee}.g{color:#a00}.s{color:#070;font-weight:bold}
.act-relabel{color:#070}.act-review{color:#b60}ol.nb{padding-left:18px;margin:4px 0}
.row{display:flex;flex-wrap:wrap;gap:0 40px}"""


def write_report(run_dir: Path, out: Path | None = None, *, max_per_class: int = 24, max_queue: int = 500,
                 neighbours: int = 8) -> Path:
    """Write the run's HTML report (default `run_dir/report.html`) atomically; return its path.

    Raises RunDirError naming the file when summary.json, scan.parquet or the graph is missing or
    unreadable, or refined.parquet does not match scan.parquet."""
    run = _Run(Path(run_dir), neighbours)
    flagged = run.flagged_order()
    parts = [_summary_html(run), '<div class="row"><div>', _class_table_html(run), "</div><div>", _histogram_html(run),
             "</div></div>", _matrix_html(run), _galleries_html(run, flagged, max_per_class),
             _queue_html(run, flagged[: max(0, max_queue)]), _duplicates_html(run)]
    page = _page(run, "".join(parts))
    out = Path(out) if out is not None else run.dir / "report.html"
    _atomic_write(out, page.encode("utf-8"))
    return out


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _read_parquet(path: Path, required: tuple, optional: tuple = ()):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise RunDirError(f"{path}: missing (run labelfix scan first)")
    try:
        names = set(pq.read_schema(path).names)
        missing = [c for c in required if c not in names]
        if missing:
            raise RunDirError(f"{path}: no column {missing[0]!r} (written by another labelfix version: run scan again)")
        return pq.read_table(path, columns=list(required) + [c for c in optional if c in names]).to_pandas()
    except RunDirError:
        raise
    except Exception as exc:
        raise RunDirError(f"{path}: unreadable ({_one_line(exc)})") from None


class _Run:
    """What the page shows of a run directory, read once."""

    def __init__(self, run_dir: Path, neighbours: int):
        self.dir = run_dir
        path = run_dir / "summary.json"
        try:
            self.summary = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{path}: missing (run labelfix scan first)") from None
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path}: unreadable ({_one_line(exc)})") from None
        if not isinstance(self.summary, dict) or not isinstance(self.summary.get("class_names"), list):
            raise RunDirError(f"{path}: not a labelfix scan summary (no class_names)")
        self.names = [str(c) for c in self.summary["class_names"]]
        df = _read_parquet(run_dir / "scan.parquet", SCAN_COLUMNS + ("given_index",), DUPLICATE_COLUMNS)
        self.n = len(df)
        self.paths = df["path"].astype(str).to_numpy()
        self.given = df["given_label"].astype(str).to_numpy()
        self.y = df["given_index"].to_numpy().astype(np.int64)
        self.score = df["issue_score"].to_numpy().astype(np.float64)
        self.flags = df["is_issue"].to_numpy().astype(bool)
        self.suggested = df["suggested_label"].astype(str).to_numpy()
        self.dups = df[list(DUPLICATE_COLUMNS)] if all(c in df for c in DUPLICATE_COLUMNS) else None
        self.ids, self.sims = self._graph(neighbours)
        self.amb = self.action = None
        if (run_dir / "refined.parquet").is_file():
            ref = _read_parquet(run_dir / "refined.parquet", REFINED_COLUMNS)
            if len(ref) != self.n or (ref["path"].astype(str).to_numpy() != self.paths).any():
                raise RunDirError(f"{run_dir / 'refined.parquet'}: rows differ from scan.parquet (run labelfix refine again)")
            self.amb = ref["ambiguity"].to_numpy().astype(np.float64)
            self.action = ref["action"].astype(str).to_numpy()
        self.thumbs = _Thumbs(run_dir, self.summary, self.paths)

    def _graph(self, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for name in ("graph_ids.npy", "graph_sims.npy"):
            path = self.dir / name
            if not path.is_file():
                raise RunDirError(f"{path}: missing (run labelfix scan again)")
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise RunDirError(f"{path}: unreadable ({_one_line(exc)})") from None
            if arr.ndim != 2 or len(arr) != self.n:
                raise RunDirError(f"{path}: shape {arr.shape} does not match scan.parquet's {self.n} rows")
            out.append(arr[:, : max(0, neighbours)])
        return out[0], out[1]

    def flagged_order(self) -> np.ndarray:
        """Flagged rows, highest score first (ties in row order)."""
        rows = np.flatnonzero(self.flags)
        return rows[np.argsort(-self.score[rows], kind="stable")]

    def neighbour_rows(self, i: int) -> list[tuple[int, float]]:
        return [(int(j), float(s)) for j, s in zip(self.ids[i], self.sims[i]) if 0 <= j < self.n and j != i]

    def vote(self, i: int, top: int = 3) -> str:
        counts = Counter(self.given[j] for j, _ in self.neighbour_rows(i)).most_common(top)
        return ", ".join(f"{_e(label)} ({k})" for label, k in counts) or "none"


class _Thumbs:
    """PNG data URIs of rows: from the images (relative to the recorded images folder) or else
    scan's decoded-image cache; once THUMB_BUDGET characters are embedded, no more."""

    def __init__(self, run_dir: Path, summary: dict, paths: np.ndarray):
        self.paths, self.memo, self.left = paths, {}, THUMB_BUDGET
        root = (summary.get("inputs") or {}).get("images_dir")
        self.root = Path(root).resolve() if root and Path(root).is_dir() else None
        self.cache = None
        info = summary.get("images") or {}
        shape = tuple(info.get("shape") or ())
        cache = run_dir / str(info.get("cache", ""))
        if info.get("cache") and len(shape) == 4 and shape[0] == len(paths) and cache.is_file() \
                and cache.stat().st_size == int(np.prod(shape)):
            self.cache = np.memmap(cache, dtype=np.uint8, mode="r", shape=shape)
        self.available = self.root is not None or self.cache is not None

    def img(self, i: int, side: int = THUMB_SIDE) -> str:
        if not self.available:
            return ""
        if (i, side) not in self.memo:
            uri = self._uri(i, side) if self.left > 0 else None
            self.left -= len(uri or "")
            self.memo[(i, side)] = uri
        uri = self.memo[(i, side)]
        if uri is None:
            return f'<span class="nt" style="width:{side}px;height:{side}px" title="no thumbnail"></span>'
        return f'<img class="t" src="{uri}" width="{side}" height="{side}" alt="">'

    def _uri(self, i: int, side: int) -> str | None:
        import warnings

        from PIL import Image

        im = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's DecompressionBombWarning: the library never prints
            if self.root is not None:
                path = (self.root / self.paths[i]).resolve()
                if path.is_relative_to(self.root) and path.is_file():
                    try:
                        with Image.open(path) as src:
                            src.draft(None, (2 * side, 2 * side))  # JPEG: decode at a reduced size
                            im = _displayable(src)
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


def _displayable(im):
    """A loaded L or RGB copy of `im`; transparency composited on white."""
    from PIL import Image

    if im.mode in ("I", "I;16", "F"):
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return Image.fromarray(((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8), "L")
    if im.mode == "P" or "A" in im.mode:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("L" if im.mode in ("L", "1") else "RGB")


def _summary_html(run: _Run) -> str:
    s, counts = run.summary, run.summary.get("counts") or {}
    check = s.get("teacher_check") or {}
    inputs = s.get("inputs") or {}
    source = "--pred-probs" if inputs.get("pred_probs") else f"teacher {((s.get('config') or {}).get('teacher') or {}).get('teacher', '?')}"
    items = [("samples", counts.get("samples", run.n)), ("classes", counts.get("classes", len(run.names))),
             ("flagged", f"{int(run.flags.sum())} ({run.flags.mean() if run.n else 0:.1%})"),
             ("estimated noise rate", _pct(s.get("estimated_noise_rate"))),
             ("teacher agreement with given labels", _pct(check.get("agreement", s.get("teacher_heldout_agreement_with_given")))),
             ("chance agreement", _pct(check.get("chance"))),
             ("teacher check", _verdict(check)),
             ("probabilities from", source),
             ("flag threshold (P(wrong))", _num((s.get("detection") or {}).get("flag_threshold")))]
    refine = s.get("refine") or {}
    if run.action is not None:
        items += [(f"refine: {a}", int((run.action == a).sum())) for a in ("keep", "relabel", "review")]
        items.append(("mean ambiguity", _num(float(run.amb.mean()) if run.n else None)))
    grid = "".join(f"<div>{_e(k)}<b>{_e(v)}</b></div>" for k, v in items)
    warnings = list(s.get("warnings") or []) + list(refine.get("warnings") or [])
    warn = "".join(f'<div class="warn">warning: {_e(w)}</div>' for w in warnings) or '<p class="muted">No warnings.</p>'
    return f'<h2 id="summary">Summary</h2><div class="kv">{grid}</div>{warn}'


def _verdict(check: dict) -> str:
    p = check.get("p_value")
    p = "" if not isinstance(p, (int, float)) else " (p < 1e-300)" if p <= 0 else f" (p = {p:.2g})"
    return ("weak: flags unreliable" if check.get("weak") else "above chance" if check.get("testable", True)
            else "untestable") + p


def _pct(x) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "–"


def _num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def _class_table_html(run: _Run) -> str:
    rows = list(run.summary.get("per_class") or [])
    note = ""
    if len(rows) > MAX_TABLE_CLASSES:
        note = f'<p class="muted">The {MAX_TABLE_CLASSES} classes with most flags of {len(rows)}.</p>'
        rows = sorted(rows, key=lambda r: -r.get("issues", 0))[:MAX_TABLE_CLASSES]
    ref = {r.get("class"): r for r in (run.summary.get("refine") or {}).get("per_class") or []}
    extra = ["relabelled from", "relabelled to", "review"] if run.action is not None and ref else []
    head = "".join(f"<th>{h}</th>" for h in ["samples", "flagged", "est. noise rate", *extra])
    body = []
    for r in rows:
        rr = ref.get(r.get("class"), {})
        cells = [r.get("n"), r.get("issues"), _pct(r.get("estimated_noise_rate"))]
        cells += [rr.get(k) for k in ("relabelled_from", "relabelled_to", "review")] if extra else []
        body.append(f'<tr><td class="l">{_e(r.get("class"))}</td>' + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return f'<h2 id="classes">Per class</h2>{note}<table><tr><th class="l">class</th>{head}</tr>{"".join(body)}</table>'


def _matrix_html(run: _Run) -> str:
    m = np.asarray((run.summary.get("noise_matrix") or {}).get("values") or [], dtype=np.float64)
    c = len(run.names)
    if m.shape != (c, c) or c == 0:
        return '<h2 id="matrix">Noise matrix</h2><p class="muted">Not in summary.json.</p>'
    counts = np.bincount(run.y[(run.y >= 0) & (run.y < c)], minlength=c)
    wrong = (1.0 - np.diag(m)) * counts
    show = np.sort(np.argsort(-wrong, kind="stable")[:MAX_MATRIX_CLASSES])
    off = m[np.ix_(show, show)] * (1 - np.eye(len(show)))
    top = max(float(off.max()), 1e-9)
    head = "".join(f'<th title="{_e(run.names[k])}">{_e(run.names[k])}</th>' for k in show)
    body = []
    for a in show:
        cells = []
        for b in show:
            v = m[a, b]
            colour = f"rgba(40,110,200,{v:.2f})" if a == b else f"rgba(210,40,40,{min(1.0, v / top):.2f})"
            title = f"given {run.names[a]}, true {run.names[b]}: {v:.3f}"
            cells.append(f'<td style="background:{colour}" title="{_e(title)}">{v:.2f}</td>')
        body.append(f'<tr><th class="l">{_e(run.names[a])}</th>{"".join(cells)}</tr>')
    note = f" Showing the {len(show)} classes with the most expected wrong labels of {c}." if len(show) < c else ""
    pairs = sorted(((m[a, b] * counts[a], a, b) for a in range(c) for b in range(c) if a != b), reverse=True)[:10] if c <= 300 else []
    conf = "".join(f"<li>given {_e(run.names[a])} → true {_e(run.names[b])}: ~{w:.0f} rows</li>" for w, a, b in pairs if w >= 0.5)
    return (f'<h2 id="matrix">Noise matrix</h2><p class="muted">P(true class = column | given class = row): mean posterior '
            f'of the rows given each class; off-diagonal red scaled to the largest confusion.{note}</p>'
            f'<div class="row"><table class="hm"><tr><th class="l">given \\ true</th>{head}</tr>{"".join(body)}</table>'
            + (f"<div>Largest expected confusions:<ul>{conf}</ul></div>" if conf else "") + "</div>")


def _histogram_html(run: _Run, bins: int = 20) -> str:
    edges = np.linspace(0.0, 1.0, bins + 1)
    score = np.clip(run.score, 0.0, 1.0)
    total, _ = np.histogram(score, edges)
    flagged, _ = np.histogram(score[run.flags], edges)
    w, h, pad = 640, 200, 30
    scale = np.log10(1 + max(int(total.max()) if run.n else 0, 1))
    bw = (w - 2 * pad) / bins
    bars = []
    for k in range(bins):
        for count, colour in ((total[k], "#9aa"), (flagged[k], "#c33")):
            if count:
                bh = (h - 2 * pad) * np.log10(1 + count) / scale
                bars.append(f'<rect x="{pad + k * bw + 1:.1f}" y="{h - pad - bh:.1f}" width="{bw - 2:.1f}" '
                            f'height="{bh:.1f}" fill="{colour}"><title>{edges[k]:.2f}-{edges[k + 1]:.2f}: '
                            f'{total[k]} rows, {flagged[k]} flagged</title></rect>')
    ticks = "".join(f'<text x="{pad + t * (w - 2 * pad):.0f}" y="{h - 10}" font-size="11" text-anchor="middle">{t:g}</text>'
                    for t in (0, 0.25, 0.5, 0.75, 1))
    thr = (run.summary.get("detection") or {}).get("flag_threshold")
    line = ""
    if isinstance(thr, (int, float)):
        x = pad + min(max(thr, 0), 1) * (w - 2 * pad)
        line = f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad - 10}" y2="{h - pad}" stroke="#000" stroke-dasharray="4 3"/>'
    svg = (f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="issue score histogram">'
           f'<rect width="{w}" height="{h}" fill="#fff"/>{"".join(bars)}{ticks}{line}'
           f'<line x1="{pad}" x2="{w - pad}" y1="{h - pad}" y2="{h - pad}" stroke="#444"/></svg>')
    return (f'<h2 id="scores">Issue-score distribution</h2><p class="muted">issue_score = P(wrong label); bar heights on a '
            f'log scale; grey all rows, red flagged, dashed line the flag threshold.</p>{svg}')


def _card(run: _Run, i: int, is_open: bool = False) -> str:
    amb = _num(run.amb[i], 2) if run.amb is not None else "–"
    act = f' · <span class="act-{_e(run.action[i])}">{_e(run.action[i])}</span>' if run.action is not None else ""
    nbs = "".join(f"<li>{run.thumbs.img(j, NEIGHBOUR_SIDE)} {_e(run.given[j])} <span class=\"muted\">{s:.2f}</span></li>"
                  for j, s in run.neighbour_rows(i))
    return (f'<figure class="card" data-row="{i}">{run.thumbs.img(i)}<figcaption>'
            f'<div><span class="g">{_e(run.given[i])}</span> → <span class="s">{_e(run.suggested[i])}</span></div>'
            f"<div>score {run.score[i]:.3f} · amb {amb}{act}</div>"
            f'<div class="p" title="{_e(run.paths[i])}">{_e(run.paths[i])}</div>'
            f"<details{' open' * is_open}><summary>neighbours: {run.vote(i)}</summary><ol class=\"nb\">{nbs}</ol></details>"
            "</figcaption></figure>")


def _galleries_html(run: _Run, flagged: np.ndarray, max_per_class: int) -> str:
    by_class: dict[int, list[int]] = {}
    for i in flagged:
        by_class.setdefault(int(run.y[i]), []).append(int(i))
    order = sorted(by_class, key=lambda k: (-len(by_class[k]), k))
    out = ['<h2 id="gallery">Flagged images per given class</h2><p class="muted">Highest score first; '
           'given label in red, suggested in green; "amb" is refine\'s ambiguity. Open "neighbours" for the kNN '
           "graph's nearest rows and their given labels.</p>"]
    if len(order) > MAX_GALLERY_CLASSES:
        out.append(f'<p class="muted">The {MAX_GALLERY_CLASSES} classes with most flags of {len(order)}; '
                   "the review queue has the rest.</p>")
    if not order:
        out.append("<p>No flagged images.</p>")
    for k in order[:MAX_GALLERY_CLASSES]:
        rows = by_class[k][: max(0, max_per_class)]
        name = run.names[k] if 0 <= k < len(run.names) else str(k)
        out.append(f'<section class="gallery" id="class-{k}"><h3>given {_e(name)}: {len(by_class[k])} flagged, '
                   f'top {len(rows)}</h3><div class="cards">{"".join(_card(run, i, bool(i == flagged[0])) for i in rows)}</div></section>')
    return "".join(out)


def _queue_html(run: _Run, rows: np.ndarray) -> str:
    head = ("<tr><th>#</th><th class=\"l\">path</th><th class=\"l\">given</th><th class=\"l\">suggested</th><th>score</th>"
            "<th>ambiguity</th><th class=\"l\">action</th><th class=\"l\">neighbours' labels</th></tr>")
    pages = []
    for start in range(0, len(rows), QUEUE_PAGE):
        trs = []
        for rank, i in enumerate(rows[start:start + QUEUE_PAGE], start + 1):
            amb = _num(run.amb[i], 2) if run.amb is not None else "–"
            act = _e(run.action[i]) if run.action is not None else "–"
            trs.append(f'<tr class="q"><td>{rank}</td><td class="l p" title="{_e(run.paths[i])}">{_e(run.paths[i])}</td>'
                       f'<td class="l">{_e(run.given[i])}</td><td class="l">{_e(run.suggested[i])}</td>'
                       f'<td>{run.score[i]:.3f}</td><td>{amb}</td><td class="l">{act}</td><td class="l">{run.vote(i)}</td></tr>')
        is_open = " open" if start == 0 else ""
        pages.append(f"<details{is_open}><summary>rows {start + 1}-{start + len(trs)}</summary>"
                     f"<table>{head}{''.join(trs)}</table></details>")
    total = int(run.flags.sum())
    cap = f" (the top {len(rows)} of {total}; all are in scan.parquet)" if len(rows) < total else ""
    return (f'<h2 id="queue">Review queue</h2><p class="muted">Flagged rows by score{cap}.</p>'
            + ("".join(pages) or "<p>Nothing to review.</p>"))


def _duplicates_html(run: _Run) -> str:
    if run.dups is None:
        return ""
    group, conflict = run.dups["duplicate_group"], run.dups["duplicate_conflict"].fillna(False).astype(bool)
    valid = group.notna() & ~group.astype(str).isin(["", "-1", "None", "nan"])
    rows = np.flatnonzero(valid.to_numpy())
    groups: dict[str, list[int]] = {}
    for i in rows:
        groups.setdefault(str(group.iloc[i]), []).append(int(i))
    bad = {g for g, members in groups.items() if conflict.iloc[members].any()}
    order = sorted(groups, key=lambda g: (g not in bad, -len(groups[g]), g))
    items = []
    for g in order[:MAX_DUPLICATE_GROUPS]:
        members = "".join(f'<li>{run.thumbs.img(i, NEIGHBOUR_SIDE)} {_e(run.given[i])} <span class="muted">{_e(run.paths[i])}'
                          "</span></li>" for i in groups[g])
        flag = ' <b class="g">conflicting labels</b>' if g in bad else ""
        items.append(f'<li class="dup">group {_e(g)}{flag}<ul>{members}</ul></li>')
    more = f'<p class="muted">The first {MAX_DUPLICATE_GROUPS} of {len(groups)} groups.</p>' if len(groups) > MAX_DUPLICATE_GROUPS else ""
    return (f'<h2 id="duplicates">Duplicates</h2><p>{len(groups)} groups, {len(rows)} rows, {len(bad)} groups with '
            f"conflicting labels.</p>{more}<ul>{''.join(items)}</ul>")


def _page(run: _Run, body: str) -> str:
    s = run.summary
    title = f"labelfix report: {run.dir.resolve().name}"
    links = [("summary", "summary"), ("classes", "per class"), ("matrix", "noise matrix"), ("scores", "scores"),
             ("gallery", "galleries"), ("queue", "review queue")] + ([("duplicates", "duplicates")] if run.dups is not None else [])
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in links)
    where = (s.get("inputs") or {}).get("images_dir") or (s.get("inputs") or {}).get("labels_csv") or ""
    thumbs = "" if run.thumbs.available else '<p class="muted">No images in this run: pages without thumbnails.</p>'
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><meta http-equiv="Content-Security-Policy" '
            f"content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class=\"muted\">{_e(s.get('command', 'scan'))} of "
            f"{_e(where)}, {_e(s.get('created', ''))}, labelfix {_e(s.get('labelfix_version', '?'))}</p>"
            f"<nav>{nav}</nav>{thumbs}{body}</body></html>\n")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, give it the umask's permissions, rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{path}: cannot write the report ({_one_line(exc)})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
