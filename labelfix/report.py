"""`labelfix report`: one self-contained HTML page of a run directory, from summary.json, scan.parquet,
the kNN graph and, after refine, refined.parquet. The page needs no network and no other file: thumbnails are base64
PNGs, plots are inline SVG and coloured tables, and there is no JavaScript (queue pages and neighbour lists are
<details> elements). Every string from the data is escaped. Galleries and the queue are capped and embedded images
share a budget, so a 100k-row run gives a page of a few MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelfix.errors import InputError
from labelfix.files.outputs import atomic_write_bytes
from labelfix.report_data import (
    MAX_DUPLICATE_GROUPS,
    MAX_GALLERY_CLASSES,
    MAX_MATRIX_CLASSES,
    NEIGHBOUR_SIDE,
    QUEUE_PAGE,
    Run,
    esc,
    num,
    one_line,
)

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 40px;color:#222;background:#fafafa}h1{margin:16px 0 4px}
h2{margin-top:32px;border-bottom:1px solid #ccc}nav a{margin-right:12px}.muted{color:#666}.g{color:#a00}
.warn{background:#fff3cd;border:1px solid #e0b84c;padding:8px 12px;margin:8px 0}.s{color:#070;font-weight:bold}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:8px}.kv b{display:block;font-size:18px}
.kv div{background:#fff;border:1px solid #ddd;padding:6px 10px}table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}td.l,th.l{text-align:left}.act-relabel{color:#070}
.hm td{width:34px;font-size:11px;text-align:center}.row{display:flex;flex-wrap:wrap;gap:0 40px}.act-review{color:#b60}
.hm th{font-size:11px;max-width:90px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}.row p{max-width:520px}
.cards{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.nt{display:inline-block;background:#eee}
.card{margin:0;width:150px;background:#fff;border:1px solid #ddd;padding:6px;font-size:12px}.nb li{overflow:hidden}
.p{max-width:280px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
img.t{object-fit:contain;image-rendering:pixelated;background:#fff;border:1px solid #eee;vertical-align:middle}
ol.nb{display:grid;grid-template-columns:1fr 1fr;gap:2px;list-style:none;padding:0;margin:4px 0}"""


def write_report(
    run_dir: Path, out: Path | None = None, *, max_per_class: int = 24, max_queue: int = 500, neighbours: int = 8
) -> Path:
    """Write the run's HTML report (default `run_dir/report.html`) atomically and return its path. RunDirError names
    the file when summary.json, scan.parquet or the graph is missing or unreadable, or refined.parquet is stale.
    Every file is first checked against the run's manifest (files.rundir.RunDir), as refine does. A report
    written into the run folder is listed in the manifest, so the next scan removes it with the run."""
    checked = check_run_files(Path(run_dir))
    run = Run(Path(run_dir), neighbours)
    flagged = np.flatnonzero(run.flags)
    flagged = flagged[np.argsort(-run.score[flagged], kind="stable")]  # highest score first, ties in row order
    parts = [
        _summary_html(run),
        '<div class="row"><div>',
        _class_table_html(run),
        "</div><div>",
        _histogram_html(run),
        "</div></div>",
        _matrix_html(run),
        _galleries_html(run, flagged, max_per_class),
        _queue_html(run, flagged[: max(0, max_queue)]),
        _duplicates_html(run),
    ]
    out = Path(out) if out is not None else run.dir / "report.html"
    write_bytes(out, _page(run, "".join(parts)).encode("utf-8"))
    if out.resolve().parent == checked.path.resolve():
        checked.record([out.name], "report")
    return out


def check_run_files(run_dir: Path):
    """The run's RunDir after checking what the report reads against its manifest."""
    from labelfix.files import rundir as rd

    run = rd.RunDir(run_dir)
    summary = run.load_summary()
    run.load_scan(summary)
    run.load_graph(summary)
    if (run_dir / rd.REFINED).is_file():
        run.check_file(rd.REFINED, "run labelfix refine again")
    return run


def _summary_html(run: Run) -> str:
    s, counts, check = run.summary, run.summary.get("counts") or {}, run.summary.get("teacher_check") or {}
    teacher = "teacher " + str(((s.get("config") or {}).get("teacher") or {}).get("teacher", "?"))
    p = f" (p = {check['p_value']:.2g})".replace("p = 0)", "p < 1e-300)") if num(check.get("p_value")) != "–" else ""
    verdict = "weak, unreliable" if check.get("weak") else "untested" if check.get("testable") == 0 else "above chance"
    items = [
        ("samples", counts.get("samples", run.n)),
        ("classes", counts.get("classes", len(run.names))),
        ("flagged", f"{int(run.flags.sum())} ({run.flags.mean() if run.n else 0:.1%})"),
        ("estimated noise rate", num(s.get("estimated_noise_rate"), ".1%")),
        ("teacher agreement with given labels", num(s.get("teacher_heldout_agreement_with_given"), ".1%")),
        ("chance agreement", num(check.get("chance"), ".1%")),
        ("teacher check", verdict + p),
        ("probabilities from", "--pred-probs" if (s.get("inputs") or {}).get("pred_probs") else teacher),
        ("flag threshold (P(wrong))", num((s.get("detection") or {}).get("flag_threshold"))),
    ]
    if run.action is not None:
        items += [(f"refine: {a}", int((run.action == a).sum())) for a in ("keep", "relabel", "review")]
        items.append(("mean ambiguity", num(float(run.amb.mean()) if run.n else None)))
    grid = "".join(f"<div>{esc(k)}<b>{esc(v)}</b></div>" for k, v in items)
    warnings = list(s.get("warnings") or []) + list((s.get("refine") or {}).get("warnings") or [])
    warn = (
        "".join(f'<div class="warn">warning: {esc(w)}</div>' for w in warnings) or '<p class="muted">No warnings.</p>'
    )
    return f'<h2 id="summary">Summary</h2><div class="kv">{grid}</div>{warn}'


def _class_table_html(run: Run) -> str:
    rows = list(run.summary.get("per_class") or [])
    ref = {r.get("class"): r for r in (run.summary.get("refine") or {}).get("per_class") or []}
    extra = ("relabelled_from", "relabelled_to", "review") if run.action is not None and ref else ()
    head = "".join(f"<th>{h.replace('_', ' ')}</th>" for h in ("samples", "flagged", "est. noise rate", *extra))
    body = []
    for r in rows:
        cells = [r.get("n"), r.get("issues"), num(r.get("estimated_noise_rate"), ".1%")]
        cells += [ref.get(r.get("class"), {}).get(k) for k in extra]
        body.append(f'<tr><td class="l">{esc(r.get("class"))}</td>{"".join(f"<td>{esc(c)}</td>" for c in cells)}</tr>')
    return f'<h2 id="classes">Per class</h2><table><tr><th class="l">class</th>{head}</tr>{"".join(body)}</table>'


def _matrix_html(run: Run) -> str:
    m, c = np.asarray((run.summary.get("noise_matrix") or {}).get("values") or [], dtype=np.float64), len(run.names)
    if m.shape != (c, c) or c == 0:
        return '<h2 id="matrix">Noise matrix</h2><p class="muted">Not in summary.json.</p>'
    counts = np.bincount(run.y[(run.y >= 0) & (run.y < c)], minlength=c)
    show = np.sort(np.argsort(-(1.0 - np.diag(m)) * counts, kind="stable")[:MAX_MATRIX_CLASSES])
    top = max(float((m[np.ix_(show, show)] * (1 - np.eye(len(show)))).max()), 1e-9)
    name = [esc(x) for x in run.names]

    def cell(a: int, b: int) -> str:
        v = m[a, b]
        colour = f"rgba(40,110,200,{v:.2f})" if a == b else f"rgba(210,40,40,{min(1.0, v / top):.2f})"
        return f'<td style="background:{colour}" title="given {name[a]}, true {name[b]}: {v:.3f}">{v:.2f}</td>'

    body = "".join(f'<tr><th class="l">{name[a]}</th>{"".join(cell(a, b) for b in show)}</tr>' for a in show)
    note = f" Showing the {len(show)} classes with the most expected wrong labels of {c}." if len(show) < c else ""
    wrong = m * counts[:, None]
    np.fill_diagonal(wrong, 0.0)
    pairs = [divmod(int(f), c) for f in np.argsort(-wrong, axis=None, kind="stable")[:10]]
    conf = "".join(
        f"<li>given {name[a]} → true {name[b]}: ~{wrong[a, b]:.0f} rows</li>" for a, b in pairs if wrong[a, b] >= 0.5
    )
    return (
        f'<h2 id="matrix">Noise matrix</h2><p class="muted">P(true class = column | given class = row): mean '
        f"posterior of the rows given each class; off-diagonal red scaled to the largest confusion.{note}</p>"
        f'<div class="row"><table class="hm"><tr><th class="l">given \\ true</th>'
        + "".join(f'<th title="{name[k]}">{name[k]}</th>' for k in show)
        + f"</tr>{body}</table>"
        + (f"<div>Largest expected confusions:<ul>{conf}</ul></div>" if conf else "")
        + "</div>"
    )


def _histogram_html(run: Run, bins: int = 20) -> str:
    edges, score = np.linspace(0.0, 1.0, bins + 1), np.clip(run.score, 0.0, 1.0)
    total, flagged = np.histogram(score, edges)[0], np.histogram(score[run.flags], edges)[0]
    w, h, pad, scale = 520, 200, 30, np.log10(1 + max(int(total.max()) if run.n else 0, 1))
    bw = (w - 2 * pad) / bins
    bars = []
    for k in range(bins):
        for count, colour in ((total[k], "#9aa"), (flagged[k], "#c33")):
            if count:
                bh = (h - 2 * pad) * np.log10(1 + count) / scale
                bars.append(
                    f'<rect x="{pad + k * bw + 1:.1f}" y="{h - pad - bh:.1f}" width="{bw - 2:.1f}" '
                    f'height="{bh:.1f}" fill="{colour}"><title>{edges[k]:.2f}-{edges[k + 1]:.2f}: '
                    f"{total[k]} rows, {flagged[k]} flagged</title></rect>"
                )
    bars += [
        f'<text x="{pad + t * (w - 2 * pad):.0f}" y="{h - 10}" font-size="11" text-anchor="middle">{t:g}</text>'
        for t in (0, 0.25, 0.5, 0.75, 1)
    ]
    thr = (run.summary.get("detection") or {}).get("flag_threshold")
    if isinstance(thr, (int, float)):
        x = pad + min(max(thr, 0), 1) * (w - 2 * pad)
        bars.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad - 10}" y2="{h - pad}" stroke="#000" stroke-dasharray="4 3"/>'
        )
    return (
        f'<h2 id="scores">Issue-score distribution</h2><p class="muted">issue_score = P(wrong label); bar heights '
        f"on a log scale; grey all rows, red flagged, dashed line the flag threshold.</p>"
        f'<svg width="{w}" height="{h}" role="img"><rect width="{w}" height="{h}" fill="#fff"/>{"".join(bars)}'
        f'<line x1="{pad}" x2="{w - pad}" y1="{h - pad}" y2="{h - pad}" stroke="#444"/></svg>'
    )


def _card(run: Run, i: int, is_open: bool = False) -> str:
    amb, act = run.refined(i)
    nbs = "".join(
        f'<li>{run.thumbs.img(j, NEIGHBOUR_SIDE)} {esc(run.given[j])} <span class="muted">{s:.2f}</span></li>'
        for j, s in run.neighbour_rows(i)
    )
    return (
        f'<figure class="card" data-row="{i}">{run.thumbs.img(i)}<figcaption>'
        f'<div><span class="g">{esc(run.given[i])}</span> → <span class="s">{esc(run.suggested[i])}</span></div>'
        f"<div>score {run.score[i]:.3f} · amb {amb} · {act}</div>"
        f'<div class="p" title="{esc(run.paths[i])}">{esc(run.paths[i])}</div>'
        f"<details{' open' * is_open}><summary>neighbours: {run.vote(i)}</summary>"
        f'<ol class="nb">{nbs}</ol></details></figcaption></figure>'
    )


def _galleries_html(run: Run, flagged: np.ndarray, max_per_class: int) -> str:
    by_class: dict[int, list[int]] = {}
    for i in flagged:
        by_class.setdefault(int(run.y[i]), []).append(int(i))
    order = sorted(by_class, key=lambda k: (-len(by_class[k]), k))[:MAX_GALLERY_CLASSES]
    shown = {k: by_class[k][: max(0, max_per_class)] for k in order}
    for i in (i for k in order for i in shown[k]):  # the cards' own thumbnails get the budget before neighbours'
        run.thumbs.img(i)
    out = [
        '<h2 id="gallery">Flagged images per given class</h2><p class="muted">Highest score first; given → '
        'suggested label; "amb": refine\'s ambiguity; "neighbours": nearest rows in the kNN graph, their given '
        "label and similarity.</p>"
    ]
    if len(by_class) > len(order):
        out.append(f'<p class="muted">The {len(order)} classes with most flags of {len(by_class)}.</p>')
    for n, k in enumerate(order):
        name = run.names[k] if 0 <= k < len(run.names) else str(k)
        cards = "".join(_card(run, i, n + j == 0) for j, i in enumerate(shown[k]))
        out.append(
            f'<section class="gallery" id="class-{k}"><h3>given {esc(name)}: {len(by_class[k])} flagged, '
            f'top {len(shown[k])}</h3><div class="cards">{cards}</div></section>'
        )
    return "".join(out) if order else out[0] + "<p>No flagged images.</p>"


def _queue_html(run: Run, rows: np.ndarray) -> str:
    cols = ["#", ""][: 1 + run.thumbs.available] + "path given suggested score ambiguity action neighbours".split()
    head = "<tr>" + "".join(f'<th class="l">{c}</th>' for c in cols) + "</tr>"
    pages = []
    for start in range(0, len(rows), QUEUE_PAGE):
        trs = []
        for rank, i in enumerate(rows[start : start + QUEUE_PAGE], start + 1):
            amb, act = run.refined(i)
            thumb = f"<td>{run.thumbs.img(i, NEIGHBOUR_SIDE)}</td>" if run.thumbs.available else ""
            trs.append(
                f'<tr class="q"><td>{rank}</td>{thumb}<td class="l p" title="{esc(run.paths[i])}">'
                f'{esc(run.paths[i])}</td><td class="l">{esc(run.given[i])}</td><td class="l">'
                f'{esc(run.suggested[i])}</td><td>{run.score[i]:.3f}</td><td>{amb}</td><td class="l">{act}</td>'
                f'<td class="l">{run.vote(i)}</td></tr>'
            )
        pages.append(
            f"<details{' open' * (start == 0)}><summary>rows {start + 1}-{start + len(trs)}</summary>"
            f"<table>{head}{''.join(trs)}</table></details>"
        )
    total = int(run.flags.sum())
    cap = f" (the top {len(rows)} of {total}; all are in scan.parquet)" if len(rows) < total else ""
    return f'<h2 id="queue">Review queue</h2><p class="muted">Flagged rows by score{cap}.</p>' + (
        "".join(pages) or "<p>Nothing to review.</p>"
    )


def _duplicates_html(run: Run) -> str:
    if run.dups is None:
        return ""
    group = run.dups["duplicate_group"].astype(str).to_numpy()
    conflict = run.dups["duplicate_conflict"].to_numpy() == True  # noqa: E712 (None and NaN count as False)
    rows = np.flatnonzero(run.dups["duplicate_group"].notna().to_numpy() & ~np.isin(group, ["", "-1", "None", "nan"]))
    groups: dict[str, list[int]] = {}
    for i in rows:
        groups.setdefault(group[i], []).append(int(i))
    bad = {g for g, members in groups.items() if conflict[members].any()}
    items = []
    for g in sorted(groups, key=lambda g: (g not in bad, -len(groups[g]), g))[:MAX_DUPLICATE_GROUPS]:
        members = "".join(
            f'<li>{run.thumbs.img(i, NEIGHBOUR_SIDE)} {esc(run.given[i])} <span class="muted">'
            f"{esc(run.paths[i])}</span></li>"
            for i in groups[g]
        )
        flag = " <b class=g>conflicting labels</b>" if g in bad else ""
        items.append(f'<li class="dup">group {esc(g)}{flag}<ul>{members}</ul></li>')
    more = f" The first {MAX_DUPLICATE_GROUPS}, conflicts first:" if len(groups) > MAX_DUPLICATE_GROUPS else ""
    rule = (run.summary.get("duplicates") or {}).get("rule")
    return (
        f'<h2 id="duplicates">Duplicates</h2><p>{len(groups)} groups, {len(rows)} rows, {len(bad)} groups with '
        f"conflicting labels{f' ({esc(rule)})' if rule else ''}.{more}</p><ul>{''.join(items)}</ul>"
    )


def _page(run: Run, body: str) -> str:
    s, inputs = run.summary, run.summary.get("inputs") or {}
    title = f"labelfix report: {'/'.join(run.dir.resolve().parts[-2:])}"
    ids = ["summary", "classes", "scores", "matrix", "gallery", "queue"] + ["duplicates"] * (run.dups is not None)
    nav = "".join(f'<a href="#{a}">{a}</a>' for a in ids)
    notes = "" if run.thumbs.available else "No images in this run: pages without thumbnails. "
    notes += f"{run.thumbs.skipped} thumbnails left out to keep the file small." if run.thumbs.skipped else ""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><meta http-equiv="Content-Security-Policy" '
        f"content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"><title>{esc(title)}</title>"
        f'<style>{CSS}</style></head><body><h1>{esc(title)}</h1><p class="muted">{esc(s.get("command", "scan"))} of '
        f"{esc(inputs.get('images_dir') or inputs.get('labels_csv') or '?')}, {esc(s.get('created', ''))}, labelfix "
        f"{esc(s.get('labelfix_version', '?'))}</p><nav>{nav}</nav>"
        f'<p class="muted">{esc(notes)}</p>{body}</body></html>\n'
    )


def write_bytes(path: Path, data: bytes) -> None:
    """The page, atomically (files.outputs: a temporary file renamed, the umask's permissions)."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the report ({one_line(exc)})") from None
