"""End-to-end `labelfix scan` on tiny datasets: layouts, image modes, outputs, determinism, cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FAST_CLI, run_cli, stderr_of, write_csv
from PIL import Image

from labelfix.commands.scan import ScanInputs, scan
from labelfix.config import ScanConfig, TeacherConfig
from labelfix.files.inputs import decode_images

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SCHEMA_COLUMNS = [
    "path",
    "given_label",
    "teacher_probs",
    "clean_prob",
    "is_issue",
    "issue_score",
    "label_quality",
    "suggested_label",
    "partition",
]
# a deliberately tiny teacher for the mechanics of mixed image modes: near chance, so allowed
SMALL = ScanConfig(device="cpu", allow_weak_teacher=True, teacher=TeacherConfig(epochs=2, width=8))


@pytest.fixture(scope="module")
def named_digits(digits200, tmp_path_factory):
    """The 200 noisy digits with word labels ('three', ...) in a shuffled CSV row order."""
    root, _, truth, noisy = digits200
    n = len(noisy)
    perm = np.random.default_rng(5).permutation(n)
    rows = [(f"digit_{i:04d}.png", WORDS[noisy[i]]) for i in perm]
    csv = write_csv(tmp_path_factory.mktemp("named") / "labels.csv", ("path", "label"), rows)
    return root / "images", csv, rows, truth[perm], noisy[perm]


@pytest.fixture(scope="module")
def first_run(named_digits, tmp_path_factory):
    img, csv, _rows, _truth, _noisy = named_digits
    out = tmp_path_factory.mktemp("run") / "out"
    r = run_cli(["scan", img, "--labels", csv, "--out", out, "--json", "--seed", "3", *FAST_CLI])
    assert r.exit_code == 0, (stderr_of(r), r.exception)
    return r, out


def read_table(out: Path) -> pa.Table:
    return pq.read_table(out / "scan.parquet")


# ---------------------------------------------------------------------------------------------
# (a) ImageFolder layout


def test_image_folder_tree_without_labels(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path / "tree"
    expected = []
    for digit, name in [(0, "zero"), (1, "one"), (7, "seven")]:
        (root / name).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(d.target == digit)[:15]):
            Image.fromarray((d.images[i] / 16 * 255).astype(np.uint8), "L").save(root / name / f"{j:02d}.png")
            expected.append((f"{name}/{j:02d}.png", name))
    (root / "notes.txt").write_text("ignored: not in a class folder")
    out = tmp_path / "out"
    r = run_cli(["scan", root, "--out", out, *FAST_CLI])
    assert r.exit_code == 0, (stderr_of(r), r.exception)
    t = read_table(out)
    got = sorted(zip(t.column("path").to_pylist(), t.column("given_label").to_pylist()))
    assert got == sorted(expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == ["one", "seven", "zero"]
    assert summary["inputs"]["labels_csv"] is None
    assert summary["counts"]["samples"] == 45
    assert set(t.column("suggested_label").to_pylist()) <= {"one", "seven", "zero"}


# ---------------------------------------------------------------------------------------------
# (b) image modes and sizes


def _mixed_images(root: Path):
    """10 images per class in modes L, RGB, RGBA, P with different sizes; class = bright left/right half."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = []
    modes = ["L", "RGB", "RGBA", "P"]
    for c in ("left", "right"):
        for i in range(12):
            w, h = int(rng.integers(6, 20)), int(rng.integers(6, 20))
            a = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            half = slice(0, w // 2) if c == "left" else slice(w // 2, w)
            a[:, half] = 220
            mode = modes[i % 4]
            im = Image.fromarray(a, "RGB")
            if mode == "L":
                im = im.convert("L")
            elif mode == "RGBA":
                im = im.convert("RGBA")
            elif mode == "P":
                im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
            name = f"{c}_{i}_{mode}.png"
            im.save(root / name)
            assert Image.open(root / name).mode == mode
            rows.append((name, c))
    return rows


def test_mixed_modes_and_sizes_scan(tmp_path):
    img = tmp_path / "images"
    rows = _mixed_images(img)
    csv = write_csv(tmp_path / "labels.csv", ("path", "label"), rows)
    out = tmp_path / "out"
    res = scan(ScanInputs(images_dir=img, labels_csv=csv), SMALL, out)
    shape = res.summary["images"]["shape"]
    assert shape[0] == len(rows) and shape[3] == 3 and shape[1] == shape[2]
    assert 8 <= shape[1] <= 64
    t = read_table(out)
    assert t.num_rows == len(rows)
    assert np.isfinite(np.stack(t.column("teacher_probs").to_numpy(zero_copy_only=False))).all()


def test_decode_modes_to_rgb(tmp_path):
    gray = np.full((10, 10), 100, np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black: composited over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    Image.fromarray(np.full((30, 20), 50, np.uint8), "L").save(tmp_path / "big.png")
    files = [tmp_path / n for n in ("l.png", "rgb.png", "rgba.png", "p.png", "big.png")]
    arr = decode_images(files, tmp_path / "cache" / "x.u8")
    assert arr.shape == (5, 10, 10, 3)  # median longer side is 10; colour present: 3 channels
    a = arr.open()
    assert (a[0] == 100).all()
    assert (a[1][..., 0] == 200).all() and (a[1][..., 1:] == 0).all()
    assert (a[2] == 255).all()
    assert (a[3][..., 0] == 200).all() and (a[3][..., 1:] == 0).all()
    assert (a[4] == 50).all()
    gray_only = decode_images(files[:1] + files[4:], tmp_path / "cache" / "g.u8")
    assert gray_only.shape[3] == 1


def test_decode_16bit_images_as_gray(tmp_path):
    """16-bit grayscale in either byte order (PNG 'I;16', TIFF 'I;16B') and 16-bit PGM ('I')."""
    a = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.frombytes("I;16B", (8, 8), a.astype(">u2").tobytes()).save(tmp_path / "be.tif")
    Image.frombytes("I;16", (8, 8), a.astype("<u2").tobytes()).save(tmp_path / "le.png")
    (tmp_path / "p.pgm").write_bytes(b"P5\n8 8\n65535\n" + a.astype(">u2").tobytes())
    files = [tmp_path / n for n in ("be.tif", "le.png", "p.pgm")]
    assert Image.open(files[0]).mode == "I;16B"
    arr = decode_images(files, tmp_path / "x.u8")
    assert arr.shape == (3, 8, 8, 1)
    expect = np.round(a / a.max() * 255)
    for i in range(3):
        got = arr.open()[i, ..., 0].astype(float)
        assert np.abs(got - expect).max() <= 1, (files[i].name, got[0])


# ---------------------------------------------------------------------------------------------
# (c) scan.parquet and summary.json


def test_parquet_schema_and_order(first_run, named_digits):
    _, out = first_run
    _, _csv, rows, _, _ = named_digits
    t = read_table(out)
    assert set(SCHEMA_COLUMNS) <= set(t.column_names), t.column_names
    meta = json.loads(t.schema.metadata[b"labelfix"])
    classes = meta["class_names"]
    assert classes == sorted(WORDS)
    c = len(classes)
    s = t.schema
    assert s.field("path").type == pa.string()
    assert s.field("given_label").type == pa.string()
    assert pa.types.is_list(s.field("teacher_probs").type)
    assert s.field("teacher_probs").type.value_type == pa.float32()
    assert s.field("is_issue").type == pa.bool_()
    for name in ("clean_prob", "issue_score", "label_quality"):
        assert pa.types.is_floating(s.field(name).type), name
    # one row per CSV row, in CSV order
    assert t.num_rows == len(rows)
    assert t.column("path").to_pylist() == [p for p, _ in rows]
    assert t.column("given_label").to_pylist() == [g for _, g in rows]
    probs = np.stack(t.column("teacher_probs").to_numpy(zero_copy_only=False))
    assert probs.shape == (len(rows), c) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    for name in ("clean_prob", "label_quality"):
        v = t.column(name).to_numpy()
        assert ((v >= 0) & (v <= 1)).all(), name
    assert set(t.column("suggested_label").to_pylist()) <= set(classes)
    assert set(t.column("partition").to_pylist()) <= {"clean", "noisy"}
    issue = t.column("is_issue").to_numpy(zero_copy_only=False)
    sugg = np.array(t.column("suggested_label").to_pylist())
    given = np.array(t.column("given_label").to_pylist())
    assert (sugg[~issue] == given[~issue]).all()
    assert (sugg[issue] != given[issue]).all()
    assert meta["config"]["seed"] == 3 and meta["config"]["teacher"]["epochs"] == 2
    assert meta["labelfix_version"]


def test_summary_json(first_run, named_digits):
    _, out = first_run
    img, csv, rows, _, _ = named_digits
    s = json.loads((out / "summary.json").read_text())
    n, c = len(rows), 10
    assert s["counts"]["samples"] == n and s["counts"]["classes"] == c
    t = read_table(out)
    assert s["counts"]["issues"] == int(t.column("is_issue").to_numpy(zero_copy_only=False).sum())
    assert 0.0 <= s["estimated_noise_rate"] <= 1.0
    assert s["class_names"] == sorted(WORDS)
    assert [p["class"] for p in s["per_class"]] == s["class_names"]
    assert sum(p["n"] for p in s["per_class"]) == n
    assert sum(p["issues"] for p in s["per_class"]) == s["counts"]["issues"]
    nm = np.array(s["noise_matrix"]["values"])
    assert nm.shape == (c, c)
    assert np.allclose(nm.sum(1), 1, atol=1e-3)
    assert s["timings_s"]["total"] > 0 and "teacher" in s["timings_s"]
    assert s["seed"] == 3
    assert s["config"]["teacher"]["folds"] == 2 and s["config"]["device"] == "cpu"
    assert s["labelfix_version"]
    inputs = s["inputs"]
    assert inputs["labels_sha256"] == hashlib.sha256(Path(csv).read_bytes()).hexdigest()
    assert len(inputs["images_sha256"]) == 64
    assert Path(inputs["labels_csv"]) == Path(csv).resolve()
    assert Path(inputs["images_dir"]) == Path(img).resolve()
    assert s["teacher"]["cache_hit"] is False


# ---------------------------------------------------------------------------------------------
# (d) determinism, (e) cache


def test_same_seed_same_parquet(first_run, named_digits, tmp_path):
    _, out1 = first_run
    img, csv, *_ = named_digits
    out2 = tmp_path / "again"
    r = run_cli(["scan", img, "--labels", csv, "--out", out2, "--json", "--seed", "3", *FAST_CLI])
    assert r.exit_code == 0, stderr_of(r)
    t1, t2 = read_table(out1), read_table(out2)
    assert t1.equals(t2, check_metadata=True)
    b1, b2 = (out1 / "scan.parquet").read_bytes(), (out2 / "scan.parquet").read_bytes()
    assert b1 == b2
    # a different seed changes the teacher (guards against a test that cannot fail)
    out3 = tmp_path / "other-seed"
    r = run_cli(["scan", img, "--labels", csv, "--out", out3, "--seed", "4", *FAST_CLI])
    assert r.exit_code == 0
    assert not read_table(out3).column("teacher_probs").equals(t1.column("teacher_probs"))


def test_rerun_hits_teacher_cache(first_run, named_digits, tmp_path):
    _, out1 = first_run
    img, csv, *_ = named_digits
    out = tmp_path / "out"
    shutil.copytree(out1, out)
    r = run_cli(["scan", img, "--labels", csv, "--out", out, "--json", "--seed", "3", *FAST_CLI])
    assert r.exit_code == 0, stderr_of(r)
    s = json.loads(r.stdout)
    assert s["teacher"]["cache_hit"] is True
    assert "teacher" not in s["timings_s"]  # no training happened
    t0, t1 = read_table(out1), read_table(out)
    assert t1.column("is_issue").equals(t0.column("is_issue"))
    assert t1.column("teacher_probs").equals(t0.column("teacher_probs"))
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_cache_not_reused_for_other_labels(first_run, named_digits, tmp_path):
    _, out1 = first_run
    img, _csv, rows, *_ = named_digits
    out = tmp_path / "out"
    shutil.copytree(out1, out)
    changed = [(p, "zero" if g != "zero" else "one") if i == 0 else (p, g) for i, (p, g) in enumerate(rows)]
    csv2 = write_csv(tmp_path / "labels.csv", ("path", "label"), changed)
    r = run_cli(["scan", img, "--labels", csv2, "--out", out, "--json", "--seed", "3", *FAST_CLI])
    assert r.exit_code == 0, stderr_of(r)
    assert json.loads(r.stdout)["teacher"]["cache_hit"] is False


def test_cache_not_reused_under_another_thread_count(first_run, named_digits, tmp_path):
    """Issue 11 defect 6: the thread count moves the teacher's numbers, so a cached teacher from
    one setting must not be reused under another; the count is recorded in summary.json."""
    import torch

    _, out1 = first_run
    img, csv, *_ = named_digits
    out = tmp_path / "out"
    shutil.copytree(out1, out)
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    try:
        torch.set_num_threads(other)
        r = run_cli(["scan", img, "--labels", csv, "--out", out, "--json", "--seed", "3", *FAST_CLI])
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, stderr_of(r)
    s = json.loads(r.stdout)
    assert s["teacher"]["cache_hit"] is False and s["threads"] == other
    assert json.loads((out1 / "summary.json").read_text())["threads"] == before


# ---------------------------------------------------------------------------------------------
# (f) --json, (g) --fail-above, (h) string classes


def test_json_on_stdout(first_run):
    r, out = first_run
    s = json.loads(r.stdout)
    on_disk = json.loads((out / "summary.json").read_text())
    assert s["counts"] == on_disk["counts"]
    assert s["estimated_noise_rate"] == on_disk["estimated_noise_rate"]
    assert s["class_names"] == on_disk["class_names"]


def test_fail_above_gate(first_run, named_digits, tmp_path):
    _, out1 = first_run
    img, csv, *_ = named_digits
    rate = json.loads((out1 / "summary.json").read_text())["estimated_noise_rate"]
    assert 0.01 < rate < 0.99, rate
    out = tmp_path / "out"
    shutil.copytree(out1 / "cache", out / "cache")  # keep the teacher cache, drop the results
    r = run_cli(["scan", img, "--labels", csv, "--out", out, "--seed", "3", "--fail-above", "0.01", *FAST_CLI])
    assert r.exit_code == 10, (stderr_of(r), r.exception)
    err = stderr_of(r).strip().splitlines()
    assert len(err) == 1 and "--fail-above" in err[0]
    assert (out / "scan.parquet").is_file() and (out / "summary.json").is_file()
    r = run_cli(["scan", img, "--labels", csv, "--out", out, "--seed", "3", "--fail-above", "0.99", *FAST_CLI])
    assert r.exit_code == 0, stderr_of(r)


def test_string_class_names_in_suggestions(first_run, named_digits):
    _, out = first_run
    _, _, _rows, _truth, _noisy = named_digits
    t = read_table(out)
    sugg = t.column("suggested_label").to_pylist()
    assert all(isinstance(s, str) and s in WORDS for s in sugg)
    issue = t.column("is_issue").to_numpy(zero_copy_only=False)
    assert issue.any()
    # suggestions index the word list the same way the probability columns do
    classes = json.loads(t.schema.metadata[b"labelfix"])["class_names"]
    idx = t.column("suggested_index").to_numpy()
    assert [classes[i] for i in idx] == sugg
