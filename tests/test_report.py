"""`labelfix.report.write_report`: one self-contained HTML page of a run directory (issue 12).

Runs are real scans with `--pred-probs` (no teacher to train): one without images, one with an
images folder (thumbnails), both refined. The browser test renders the page in headless Chromium
(Debian's `chromium` package) and is skipped with the reason when no Chromium is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, stderr_of, write_csv
from PIL import Image

from labelfix.errors import RunDirError
from labelfix.files.rundir import RunDir
from labelfix.report import write_report

CLASSES = ["<b>cat&dog</b>", "ant", "cow", "dog"]  # sorted, as scan orders class names
N = 160


def _probs(n: int, seed: int = 0):
    """(given labels, out-of-sample-like probabilities) with about 20% of the labels flipped."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, len(CLASSES), n)
    given = true.copy()
    flip = rng.random(n) < 0.2
    given[flip] = (true[flip] + rng.integers(1, len(CLASSES), flip.sum())) % len(CLASSES)
    logits = rng.normal(0, 0.7, (n, len(CLASSES)))
    logits[np.arange(n), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return given, probs.astype(np.float32)


def _scan(d, images: bool):
    """A scanned and refined run in d/"run"; with `images`, PNGs of several modes in d/"images"."""
    given, probs = _probs(N)
    np.save(d / "probs.npy", probs)
    rows = [(f"img_{i:03d}.png", CLASSES[g]) for i, g in enumerate(given)]
    args = ["scan", "--labels", write_csv(d / "labels.csv", ("path", "label"), rows), "--pred-probs", d / "probs.npy"]
    if images:
        (d / "images").mkdir()
        rng = np.random.default_rng(1)
        for i, (name, _) in enumerate(rows):
            pixels = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
            mode = ("L", "RGB", "RGBA", "P")[i % 4]
            im = Image.fromarray(pixels, "RGBA").convert(mode) if mode != "L" else Image.fromarray(pixels[..., 0], "L")
            im.save(d / "images" / name)
        Image.fromarray(np.arange(120, dtype=np.uint16).reshape(12, 10) * 500).save(d / "images" / rows[0][0])
        args.insert(1, d / "images")
    r = run_cli([*args, "--out", d / "run"])
    assert r.exit_code == 0, stderr_of(r)
    assert run_cli(["refine", d / "run"]).exit_code == 0
    return d / "run"


@pytest.fixture(scope="module")
def probs_run(tmp_path_factory):
    return _scan(tmp_path_factory.mktemp("report-probs"), images=False)


@pytest.fixture(scope="module")
def images_run(tmp_path_factory):
    return _scan(tmp_path_factory.mktemp("report-images"), images=True)


def _expected_cards(summary: dict, per_class: int) -> int:
    return sum(min(per_class, r["issues"]) for r in summary["per_class"])


def _assert_self_contained(page: str) -> None:
    for needle in ("http://", "https://", 'src="/', "<link", "<script", "url("):
        assert needle not in page, needle


def test_probs_run_report(probs_run, tmp_path):
    summary = json.loads((probs_run / "summary.json").read_text())
    issues = summary["counts"]["issues"]
    assert 10 < issues < N // 2
    t = time.perf_counter()
    out = write_report(probs_run, max_per_class=5, max_queue=7, neighbours=4)
    assert time.perf_counter() - t < 10
    assert out == probs_run / "report.html"
    page = out.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert "data:image" not in page and "without thumbnails" in page
    # the summary's numbers and the per-class table
    assert f"<b>{N}</b>" in page and f"<b>{issues} (" in page
    assert f"<b>{summary['estimated_noise_rate']:.1%}</b>" in page
    assert f"{summary['teacher_check']['chance']:.1%}" in page
    for row in summary["per_class"]:
        assert f"<td>{row['n']}</td><td>{row['issues']}</td><td>{row['estimated_noise_rate']:.1%}</td>" in page
    assert 'id="matrix"' in page and "<svg" in page and "rgba(" in page
    # galleries capped per class, queue capped, neighbours from the graph, refine's columns
    assert page.count('class="card"') == _expected_cards(summary, 5)
    assert page.count('<tr class="q">') == 7 and f"the top 7 of {issues}" in page
    assert page.count('class="gallery"') == sum(r["issues"] > 0 for r in summary["per_class"])
    assert "neighbours:" in page and page.count("<li>") >= 4
    assert re.search(r"amb 0\.\d\d · <span class=\"act-(relabel|review|keep)\">", page)
    # class names are user data: escaped everywhere, never markup
    assert "<b>cat&dog</b>" not in page and "&lt;b&gt;cat&amp;dog&lt;/b&gt;" in page
    # atomic and an ordinary file: the umask's permissions, no temporary file left
    mask = os.umask(0o22)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    assert not [p for p in probs_run.iterdir() if p.name.endswith(".tmp")]
    other = write_report(probs_run, tmp_path / "sub" / "r.html", max_queue=0)
    assert other.is_file() and "Nothing to review" in other.read_text(encoding="utf-8")


def test_report_before_refine_and_duplicates(probs_run, tmp_path):
    """Without refined.parquet no ambiguity or action; the duplicates section only when scan.parquet has its columns."""
    run = tmp_path / "run"
    shutil.copytree(probs_run, run)
    (run / "refined.parquet").unlink()
    table = pq.read_table(run / "scan.parquet")
    table = table.drop_columns([c for c in ("duplicate_group", "duplicate_conflict") if c in table.column_names])
    pq.write_table(table, run / "scan.parquet")
    RunDir(run).record(["scan.parquet"], "scan")  # the report checks files against the manifest
    page = write_report(run).read_text(encoding="utf-8")
    assert '<span class="act-' not in page and "amb – · –" in page and 'id="duplicates"' not in page
    # groups: 0 and 1 (1 with conflicting labels); -1 and null mean none
    group = [0, 0, 1, 1, 1] + [-1] * (table.num_rows - 6) + [None]
    conflict = [False, False, True, True, True] + [False] * (table.num_rows - 5)
    table = table.append_column("duplicate_group", pa.array(group, pa.int64()))
    pq.write_table(table.append_column("duplicate_conflict", pa.array(conflict)), run / "scan.parquet")
    RunDir(run).record(["scan.parquet"], "scan")
    page = write_report(run).read_text(encoding="utf-8")
    assert "2 groups, 5 rows, 1 groups with conflicting labels" in page
    assert page.count('class="dup"') == 2 and page.index("group 1 <b") < page.index("group 0<ul>")


def test_images_run_embeds_thumbnails(images_run, tmp_path):
    summary = json.loads((images_run / "summary.json").read_text())
    assert summary["inputs"]["images_dir"]
    page = write_report(images_run, max_per_class=3, neighbours=2).read_text(encoding="utf-8")
    _assert_self_contained(page)
    card = r'<figure class="card" data-row="\d+"><img class="t" src="data:image/png;base64,[A-Za-z0-9+/=]+"'
    cards = re.findall(card, page)
    assert len(cards) == _expected_cards(summary, 3)
    assert page.count("data:image/png;base64,") >= len(cards) + page.count('<tr class="q">')
    # an image removed since the scan: a placeholder, not an error
    shutil.copytree(images_run.parent, tmp_path / "copy")
    for p in (tmp_path / "copy" / "images").iterdir():
        p.unlink()
    run = tmp_path / "copy" / "run"
    summary["inputs"]["images_dir"] = str(tmp_path / "copy" / "images")
    (run / "summary.json").write_text(json.dumps(summary))
    RunDir(run).record(["summary.json"], "scan")  # as if labelfix wrote it (the report checks the manifest)
    page = write_report(run, max_per_class=3).read_text(encoding="utf-8")
    assert "data:image" not in page and 'title="no thumbnail"' in page
    # ... unless scan's decoded-image cache (runs of the auto teacher) has it
    cache = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 1), dtype=np.uint8)
    (run / "cache").mkdir(exist_ok=True)
    cache.tofile(run / "cache" / "images.u8")
    summary["images"] = {"cache": "cache/images.u8", "shape": [N, 8, 8, 1]}
    (run / "summary.json").write_text(json.dumps(summary))
    RunDir(run).record(["summary.json"], "scan")
    page = write_report(run, max_per_class=3).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= len(cards)


def test_missing_or_broken_files_name_the_file(probs_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probs_run, run)
    (run / "report.html").unlink(missing_ok=True)
    (run / "summary.json").unlink()
    with pytest.raises(RunDirError, match=r"summary\.json: missing") as err:
        write_report(run)
    assert "\n" not in str(err.value) and err.value.exit_code == 4
    shutil.copy(probs_run / "summary.json", run / "summary.json")
    (run / "graph_ids.npy").write_bytes(b"not numpy")
    with pytest.raises(RunDirError, match=r"graph_ids\.npy: (unreadable|changed since labelfix wrote it)"):
        write_report(run)
    (run / "graph_ids.npy").unlink()
    with pytest.raises(RunDirError, match=r"graph_ids\.npy: missing"):
        write_report(run)
    shutil.copy(probs_run / "graph_ids.npy", run / "graph_ids.npy")
    (run / "scan.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(RunDirError, match=r"scan\.parquet: (unreadable|changed since labelfix wrote it)"):
        write_report(run)
    assert not (run / "report.html").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium or chromium-browser on PATH (apt install chromium)")
def test_report_renders_in_headless_chromium(images_run, tmp_path):
    summary = json.loads((images_run / "summary.json").read_text())
    out = write_report(images_run, tmp_path / "report.html", max_per_class=4)
    base = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2000",
    ]
    shot = tmp_path / "shot.png"
    r = subprocess.run([*base, f"--screenshot={shot}", out.as_uri()], capture_output=True, text=True, timeout=60)
    assert shot.is_file() and shot.stat().st_size > 1000, r.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        assert len(im.convert("RGB").getcolors(1 << 24)) > 10  # not a blank page
    r = subprocess.run([*base, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=60)
    dom = r.stdout
    assert dom.count('class="card"') == _expected_cards(summary, 4), r.stderr[-2000:]
    assert dom.count('<tr class="q">') == summary["counts"]["issues"]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console


@pytest.mark.slow
def test_report_of_100k_rows_is_fast_and_small(tmp_path):
    """Issue 12's acceptance: a 100k-row --pred-probs run reports in under 30 s into under 20 MB (the scan
    itself takes about a minute on one core; the report about 0.2 s and 0.4 MB here)."""
    n, c = 100_000, 10
    rng = np.random.default_rng(0)
    given = rng.integers(0, c, n)
    logits = rng.normal(0, 1.0, (n, c))
    logits[np.arange(n), np.where(rng.random(n) < 0.2, rng.integers(0, c, n), given)] += 3.0
    np.save(tmp_path / "probs.npy", (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32))
    rows = [(f"img/{i:06d}.jpg", f"c{g}") for i, g in enumerate(given)]
    csv = write_csv(tmp_path / "labels.csv", ("path", "label"), rows)
    r = run_cli(["scan", "--labels", csv, "--pred-probs", tmp_path / "probs.npy", "--out", tmp_path / "run"])
    assert r.exit_code == 0, stderr_of(r)
    r = run_cli(["refine", tmp_path / "run"])
    assert r.exit_code == 0, stderr_of(r)
    t = time.perf_counter()
    out = write_report(tmp_path / "run")
    seconds, size = time.perf_counter() - t, out.stat().st_size
    assert seconds < 30 and size < 20_000_000, (seconds, size)
    page = out.read_text(encoding="utf-8")
    assert (page.count('<tr class="q">'), page.count('class="card"')) == (500, 10 * 24)
