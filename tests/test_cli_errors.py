"""Bad input through the CLI: exit code 2, one error line naming the culprit, nothing left at --out."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import FAST_CLI, run_cli, stderr_of, write_csv, write_tiny_images
from PIL import Image

from labelfix.errors import InputError


def assert_input_error(result, out, *needles):
    """Exit 2, exactly one stderr line starting with 'labelfix: error:' that contains every needle."""
    err = stderr_of(result)
    assert result.exit_code == 2, (result.exit_code, err, result.exception)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("labelfix: error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def scan(*args):
    return run_cli(["scan", *args])


def test_missing_image_file(tiny_dataset, tmp_path):
    img, csv, _rows = tiny_dataset
    (img / "b_1.png").unlink()
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "b_1.png", "not found", "row 6")


def test_unreadable_image(tiny_dataset, tmp_path):
    img, csv, _rows = tiny_dataset
    (img / "a_2.png").write_bytes(b"this is not a png at all \x00\x01\x02" * 10)
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "a_2.png", "unreadable image", "row 4")


def test_truncated_image_is_an_input_error(tiny_dataset, tmp_path):
    img, csv, _rows = tiny_dataset
    good = (img / "a_1.png").read_bytes()
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8), "L").save(big)
    (img / "a_1.png").write_bytes(big.read_bytes()[:200])  # header fine, pixel data cut off
    assert len(good) > 0
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "a_1.png", "row 3")


def test_csv_without_named_columns(tmp_path):
    img = tmp_path / "images"
    rows = write_tiny_images(img)
    csv = write_csv(tmp_path / "labels.csv", ("file", "cls"), rows)
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "labels.csv", "'path'", "--path-col", "file, cls")
    r = scan(img, "--labels", csv, "--path-col", "file", "--out", out, *FAST_CLI)
    assert_input_error(r, out, "labels.csv", "'label'", "--label-col")


def test_renamed_columns_work(tmp_path):
    img = tmp_path / "images"
    rows = write_tiny_images(img)
    csv = write_csv(tmp_path / "labels.csv", ("file", "cls"), rows)
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--path-col", "file", "--label-col", "cls", "--out", out, *FAST_CLI)
    assert r.exit_code == 0, (stderr_of(r), r.exception)
    import pyarrow.parquet as pq

    t = pq.read_table(out / "scan.parquet")
    assert t.column("path").to_pylist() == [p for p, _ in rows]
    assert t.column("given_label").to_pylist() == [g for _, g in rows]


def test_label_naming_no_class(tmp_path):
    img = tmp_path / "images"
    rows = write_tiny_images(img, classes=("a", "b", "c"))
    csv = write_csv(tmp_path / "labels.csv", ("path", "label"), rows)
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--classes", "a,b", "--out", out, *FAST_CLI)
    # first 'c' row is data row 7, i.e. line 8 of the file (header is line 1)
    assert_input_error(r, out, "labels.csv", "row 8", "'c'", "names no class")


def test_duplicated_paths(tiny_dataset, tmp_path):
    img, csv, rows = tiny_dataset
    write_csv(csv, ("path", "label"), rows + [("a_0.png", "b")])
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "labels.csv", "row 8", "'a_0.png'", "duplicates row 2")


def test_path_escaping_images_dir(tiny_dataset, tmp_path):
    img, csv, rows = tiny_dataset
    # the escaping file exists: the refusal must come from the escape check, not from 'not found'
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "x.png")
    write_csv(csv, ("path", "label"), rows[:5] + [("../x.png", "b")])
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "labels.csv", "row 7", "'../x.png'", "escapes")


def test_absolute_path_escaping_images_dir(tiny_dataset, tmp_path):
    img, csv, rows = tiny_dataset
    outside = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(outside)
    write_csv(csv, ("path", "label"), rows[:5] + [(str(outside), "b")])
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "row 7", "escapes")


def test_class_with_one_sample(tiny_dataset, tmp_path):
    img, csv, rows = tiny_dataset
    write_csv(csv, ("path", "label"), rows[:4])  # a, a, a, b
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "labels.csv", "class 'b' has one sample", "b_0.png")


def test_single_class(tiny_dataset, tmp_path):
    img, csv, rows = tiny_dataset
    write_csv(csv, ("path", "label"), rows[:3])
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "labels.csv", "two classes")


@pytest.mark.parametrize(
    "shape, needles",
    [((5, 2), ("5 rows", "has 6")), ((6, 3), ("3 columns", "2 classes"))],
    ids=["rows", "columns"],
)
def test_pred_probs_wrong_shape(tiny_dataset, tmp_path, shape, needles):
    _, csv, _ = tiny_dataset
    npy = tmp_path / "probs.npy"
    np.save(npy, np.full(shape, 1.0 / shape[1], dtype=np.float32))
    out = tmp_path / "out"
    r = scan("--labels", csv, "--pred-probs", npy, "--out", out)
    assert_input_error(r, out, "probs.npy", "--pred-probs", *needles)


def test_pred_probs_not_summing_to_one(tiny_dataset, tmp_path):
    _, csv, _ = tiny_dataset
    p = np.full((6, 2), 0.5, dtype=np.float32)
    p[3] = [0.3, 0.3]
    npy = tmp_path / "probs.npy"
    np.save(npy, p)
    out = tmp_path / "out"
    r = scan("--labels", csv, "--pred-probs", npy, "--out", out)
    assert_input_error(r, out, "probs.npy", "--pred-probs", "row 3", "sums to 0.6000")


def test_pred_probs_logits_refused(tiny_dataset, tmp_path):
    _, csv, _ = tiny_dataset
    p = np.full((6, 2), 0.5, dtype=np.float32)
    p[1] = [1.5, -0.5]
    npy = tmp_path / "probs.npy"
    np.save(npy, p)
    out = tmp_path / "out"
    r = scan("--labels", csv, "--pred-probs", npy, "--out", out)
    assert_input_error(r, out, "probs.npy", "negative")


def test_pred_probs_nan(tiny_dataset, tmp_path):
    _, csv, _ = tiny_dataset
    p = np.full((6, 2), 0.5, dtype=np.float32)
    p[2, 1] = np.nan
    npy = tmp_path / "probs.npy"
    np.save(npy, p)
    out = tmp_path / "out"
    r = scan("--labels", csv, "--pred-probs", npy, "--out", out)
    assert_input_error(r, out, "probs.npy", "row 2", "NaN")


def test_missing_labels_file(tiny_dataset, tmp_path):
    img, _, _ = tiny_dataset
    out = tmp_path / "out"
    r = scan(img, "--labels", tmp_path / "nope.csv", "--out", out, *FAST_CLI)
    assert_input_error(r, out, "nope.csv", "labels file not found")


def test_unknown_teacher(tiny_dataset, tmp_path):
    img, csv, _ = tiny_dataset
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--teacher", "nonexistent_arch", "--out", out, *FAST_CLI)
    assert_input_error(r, out, "--teacher", "nonexistent_arch")


def test_device_cuda_without_cuda(tiny_dataset, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    img, csv, _ = tiny_dataset
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--device", "cuda", "--out", out, "--epochs", "2")
    assert_input_error(r, out, "--device cuda")


def test_labels_without_images_dir_or_pred_probs(tiny_dataset, tmp_path):
    _, csv, _ = tiny_dataset
    out = tmp_path / "out"
    r = scan("--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "IMAGES_DIR", "--pred-probs")


def test_nothing_to_scan(tmp_path):
    out = tmp_path / "out"
    r = scan("--out", out, *FAST_CLI)
    assert_input_error(r, out, "IMAGES_DIR")


def test_out_is_an_existing_file(tiny_dataset, tmp_path):
    img, csv, _ = tiny_dataset
    out = tmp_path / "out"
    out.write_text("precious")
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    err = stderr_of(r)
    assert r.exit_code == 2, (err, r.exception)
    assert len(err.strip().splitlines()) == 1 and "--out" in err
    assert out.read_text() == "precious"


def test_failed_rerun_keeps_previous_run_and_leaves_no_staging(tiny_dataset, tmp_path):
    img, csv, _rows = tiny_dataset
    out = tmp_path / "out"
    ok = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert ok.exit_code == 0, stderr_of(ok)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (img / "b_2.png").write_bytes(b"garbage")
    bad = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert bad.exit_code == 2
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_decompression_bomb_is_an_input_error(tiny_dataset, tmp_path):
    """A PNG header claiming 20000 x 20000 pixels: Pillow refuses it at open time."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    img, csv, _ = tiny_dataset
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    (img / "b_0.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "b_0.png", "unreadable image", "row 5")


# ---------------------------------------------------------------------------------------------
# Issue 11's hostile-input defects. Most have their case in test_hostile.py's matrix (named in
# each docstring); what does not fit the matrix's one-command shape is here.


def _probs_for(n: int, c: int = 2) -> np.ndarray:
    p = np.full((n, c), 0.1 / (c - 1), dtype=np.float32)
    p[np.arange(n), np.arange(n) % c] = 0.9
    return p


@pytest.mark.parametrize("spelling", ["./a_0.png", "sub/../a_0.png", "ABSOLUTE"])
def test_same_image_under_two_spellings_is_refused(tiny_dataset, tmp_path, spelling):
    """Defect 2: `a_0.png` and `./a_0.png` (or its absolute path) were two samples with two
    labels. Matrix: csv-same-image-dot-slash, csv-same-image-absolute, csv-same-image-symlink."""
    img, csv, rows = tiny_dataset
    other = str(img / "a_0.png") if spelling == "ABSOLUTE" else spelling
    write_csv(csv, ("path", "label"), rows + [(other, "b")])
    np.save(tmp_path / "p.npy", _probs_for(7))
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--pred-probs", tmp_path / "p.npy", "--out", out)
    assert_input_error(r, out, "labels.csv", "2", "8")
    assert re.search(r"rows 2 and 8 name the same image|row 8: path .* duplicates row 2", stderr_of(r))


def test_more_folds_than_samples_is_refused_before_training(tiny_dataset, tmp_path, monkeypatch):
    """Defect 7: --folds above the number of samples trained a model per fold, empty folds wrote
    NaN into summary.json. Now a one-line error naming --folds, before any training."""
    import labelfix.models.teacher

    def no_training(*args, **kwargs):
        raise AssertionError("the teacher trained")

    monkeypatch.setattr(labelfix.models.teacher, "run_teacher", no_training, raising=False)
    img, csv, _ = tiny_dataset
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--folds", "7", "--out", out, "--epochs", "1", "--device", "cpu")
    assert_input_error(r, out, "--folds 7", "6 samples")


def test_json_files_refuse_nan(tmp_path):
    """Defect 7: summary.json held a bare NaN (not JSON). Every JSON labelfix writes goes through
    to_json, which refuses NaN and infinity, naming the key; nothing is written."""
    from labelfix.errors import InternalError
    from labelfix.files.outputs import atomic_write_json, to_json

    with pytest.raises(InternalError, match=r"summary.json: .*teacher\.folds\[1\]\.agreement"):
        atomic_write_json(tmp_path / "summary.json", {"teacher": {"folds": [{}, {"agreement": float("nan")}]}})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InternalError, match=r"m\[0, 1\]"):
        to_json({"m": np.array([[0.0, np.inf]])})
    assert json.loads(to_json({"x": np.float32(0.5), "none": None})) == {"x": 0.5, "none": None}


def test_bench_rows_have_no_nan():
    """An undefined metric (AUROC without wrong labels) is null in bench.json, not NaN."""
    from labelfix.commands.bench import flag_scores

    row = flag_scores(np.zeros(5, bool), np.linspace(0, 1, 5), np.zeros(5, bool))
    assert row["auroc"] is None
    assert json.loads(json.dumps(row, allow_nan=False))["f1"] == 0.0


def test_read_only_out_and_full_disk_name_out(tiny_dataset, tmp_path, monkeypatch):
    """Defect 8: a read-only --out and a full disk were tracebacks. Matrix: scan-out-read-only,
    scan-full-disk, predict-out-read-only; here the real errno path without the matrix helpers."""
    import errno
    import os

    _, csv, _ = tiny_dataset
    np.save(tmp_path / "p.npy", _probs_for(6))
    out = tmp_path / "out"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    r = scan("--labels", csv, "--pred-probs", tmp_path / "p.npy", "--out", out, "--allow-weak-teacher")
    assert_input_error(r, out, "--out", "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels.csv", "p.npy"]


def test_predict_out_file_is_refused_before_the_model_is_read(tmp_path):
    """Defect 8: predict --out naming a file failed after inference, with a traceback."""
    (tmp_path / "images").mkdir()
    target = tmp_path / "predictions"
    target.write_text("mine")
    r = run_cli(["predict", tmp_path / "images", "--model", tmp_path / "absent.pt", "--out", target])
    err = stderr_of(r)
    assert r.exit_code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--out" in err and "not a directory" in err
    assert target.read_text() == "mine"


def _bench_args(tmp_path, probs):
    y = np.arange(len(probs)) % probs.shape[1]
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "noisy.npy", y)
    np.save(tmp_path / "true.npy", y)
    return ["bench", "--pred-probs", tmp_path / "probs.npy", "--noisy-labels", tmp_path / "noisy.npy"] + [
        "--true-labels",
        tmp_path / "true.npy",
        "--no-cleanlab",
    ]


def test_failed_bench_leaves_its_out_folder_as_it_was(tmp_path):
    """Defect 9: bench wrote labels.csv into --out, then scan failed (exit 2) and it stayed.
    Matrix: bench-bad-probs-leave-nothing (new folder); here a folder with the user's files."""
    out = tmp_path / "work"
    out.mkdir()
    (out / "labels.csv").write_text("mine\n")
    (out / "notes.txt").write_text("keep")
    bad = _probs_for(12, 3) * 2  # rows sum to 2: scan refuses them after bench wrote its CSV
    r = run_cli([*_bench_args(tmp_path, bad), "--out", out])
    err = stderr_of(r)
    assert r.exit_code == 2 and len(err.strip().splitlines()) == 1 and "sums to 2.0000" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["labels.csv", "notes.txt"]
    assert (out / "labels.csv").read_text() == "mine\n"


def test_orphans_of_killed_runs_are_removed_by_the_next_command(tiny_dataset, tmp_path):
    """Defect 9: a `.staging-*` folder left by a SIGKILLed scan was never removed. The next
    command writing there removes staging folders and temporary files of processes that are
    gone, and keeps those of a live process."""
    import subprocess
    import sys

    _, csv, _ = tiny_dataset
    np.save(tmp_path / "p.npy", _probs_for(6))
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead.pid, alive.pid):
            (out / f".staging-{pid}-abc" / "cache").mkdir(parents=True)
            (out / f".staging-{pid}-abc" / "scan.parquet").write_bytes(b"half")
            (out / f".summary.json.{pid}.xyz.tmp").write_bytes(b"{")
        r = scan("--labels", csv, "--pred-probs", tmp_path / "p.npy", "--out", out, "--allow-weak-teacher")
        assert r.exit_code == 0, stderr_of(r)
        left = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
        assert left == [f".staging-{alive.pid}-abc", f".summary.json.{alive.pid}.xyz.tmp"]
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_honour_the_umask(tiny_dataset, tmp_path, umask, mode):
    """Defect 9: files were created 0600 (mkstemp), unreadable to teammates and CI users."""
    import os

    _, csv, _ = tiny_dataset
    np.save(tmp_path / "p.npy", _probs_for(6))
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        r = scan("--labels", csv, "--pred-probs", tmp_path / "p.npy", "--out", out, "--allow-weak-teacher")
        assert r.exit_code == 0, stderr_of(r)
        assert run_cli(["refine", out]).exit_code == 0
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert "summary.json" in modes and "refined.parquet" in modes
    assert set(modes.values()) == {oct(mode)}, modes


def test_missing_value_labels_and_number_spellings_are_explicit(tiny_dataset, tmp_path):
    """Defect 10: "NA" read as a class name and "1" / "1.0" as two classes were accepted
    silently (matrix: csv-label-NaN, csv-label-NA, csv-label-1-and-1.0). Both are refused, and
    accepted when --classes declares the names."""
    img, csv, rows = tiny_dataset
    np.save(tmp_path / "p.npy", _probs_for(6))
    for labels, classes in ((["NA", "x"], "NA,x"), (["1", "1.0"], "1,1.0")):
        write_csv(csv, ("path", "label"), [(p, labels["ab".index(g)]) for p, g in rows])
        out = tmp_path / "out"
        r = scan("--labels", csv, "--pred-probs", tmp_path / "p.npy", "--out", out)
        assert_input_error(r, out, "labels.csv", repr(labels[0]))
        r = scan(*("--labels", csv, "--pred-probs", tmp_path / "p.npy", "--out", out, "--classes", classes))
        assert r.exit_code == 0, stderr_of(r)
        import pyarrow.parquet as pq

        assert pq.read_table(out / "scan.parquet").column("given_label").to_pylist()[:2] == [labels[0]] * 2
        shutil.rmtree(out)


def test_utf8_bom_csv_is_read(tiny_dataset, tmp_path):
    """A CSV saved by Excel starts with a UTF-8 byte-order mark: its first column is still 'path'."""
    _, csv, _ = tiny_dataset
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    np.save(tmp_path / "p.npy", _probs_for(6))
    r = scan("--labels", csv, "--pred-probs", tmp_path / "p.npy", "--out", tmp_path / "out", "--allow-weak-teacher")
    assert r.exit_code == 0, stderr_of(r)


def test_usage_errors_are_one_line(tmp_path):
    """typer's usage errors (a value of the wrong type, a missing argument) printed a usage
    block and a box; now one line naming the flag, exit 2."""
    for args, needle in ((["scan", "--k", "many"], "--k"), (["refine"], "run_dir"), (["bogus"], "bogus")):
        r = run_cli(args)
        err = stderr_of(r)
        assert r.exit_code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("labelfix: error: ") and needle in err, err


def test_staging_of_a_sigkilled_scan_is_removed_by_the_next_scan(tiny_dataset, tmp_path):
    """Defect 9, for real: SIGKILL a scan while it trains (its staging folder exists), then scan
    again into the same folder: nothing of the killed run is left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    img, csv, _ = tiny_dataset
    out = tmp_path / "out"
    args = [sys.executable, "-m", "labelfix.cli", "scan", img, "--labels", csv, "--out", out]
    proc = subprocess.Popen([*map(str, args), "--epochs", "400", "--device", "cpu", "--allow-weak-teacher"])
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".staging-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(out.glob(".staging-*")), "the scan never staged anything"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    np.save(tmp_path / "p.npy", _probs_for(6))
    r = scan("--labels", csv, "--pred-probs", tmp_path / "p.npy", "--out", out, "--allow-weak-teacher")
    assert r.exit_code == 0, stderr_of(r)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_pred_probs_columns_in_another_class_order(tmp_path):
    """Labels c0..c11 sort as text (c0, c1, c10, c11, c2, ...); probabilities whose column k is
    class ck then disagree with nearly every label. Before: exit 0, most rows flagged. Now a
    one-line error shows the order that fits; --classes in column order scans normally."""
    c, n = 12, 1200
    names = [f"c{k}" for k in range(c)]
    rng = np.random.default_rng(0)
    true = rng.integers(0, c, n)
    logits = rng.normal(0, 0.6, (n, c))
    logits[np.arange(n), true] += 3.5
    np.save(tmp_path / "probs.npy", (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32))
    csv = write_csv(tmp_path / "labels.csv", ("path", "label"), [(f"i{i}.png", names[k]) for i, k in enumerate(true)])
    out = tmp_path / "out"
    r = scan("--labels", csv, "--pred-probs", tmp_path / "probs.npy", "--out", out)
    assert_input_error(
        r, out, "probs.npy", "--pred-probs columns do not follow the class order", ",".join(names), "--classes"
    )
    r = scan("--labels", csv, "--pred-probs", tmp_path / "probs.npy", "--out", out, "--classes", ",".join(names))
    assert r.exit_code == 0, stderr_of(r)


def test_column_order_check_leaves_aligned_weak_and_noisy_models_alone():
    from labelfix.models.agreement import column_order_check

    rng = np.random.default_rng(1)
    for c, noise, acc in ((2, 0.45, 0.9), (10, 0.6, 0.9), (10, 0.3, 0.3), (50, 0.4, 0.6)):
        true = rng.integers(0, c, 5000)
        given = np.where(rng.random(5000) < noise, (true + rng.integers(1, c, 5000)) % c, true)
        pred = np.where(rng.random(5000) < acc, true, rng.integers(0, c, 5000))
        assert column_order_check(pred, given, c) is None, (c, noise, acc)
    true = rng.integers(0, 10, 5000)
    given = np.where(rng.random(5000) < 0.3, (true + rng.integers(1, 10, 5000)) % 10, true)
    pred = np.where(rng.random(5000) < 0.8, true, rng.integers(0, 10, 5000))
    perm = rng.permutation(10)
    found = column_order_check(perm[pred], given, 10)  # column perm[k] holds class k
    assert found is not None and np.array_equal(found["column_class"][perm], np.arange(10))


def test_column_order_check_above_the_dense_limit_matches_greedily(monkeypatch):
    """Thousands of classes: no C x C matrix, a greedy matching of the counted pairs."""
    import labelfix.models.agreement as agreement

    monkeypatch.setattr(agreement, "DENSE_ORDER_CHECK", 4)
    rng = np.random.default_rng(2)
    true = rng.integers(0, 40, 8000)
    pred = np.where(rng.random(8000) < 0.8, true, rng.integers(0, 40, 8000))
    assert agreement.column_order_check(pred, true, 40) is None
    perm = rng.permutation(40)
    found = agreement.column_order_check(perm[pred], true, 40)
    assert found is not None and np.array_equal(found["column_class"][perm], np.arange(40))


def test_summary_md_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    """Before: the run's outputs were written, then the Markdown failed with a temp-file name."""
    n, c = 60, 3
    rng = np.random.default_rng(0)
    np.save(tmp_path / "probs.npy", rng.dirichlet(np.ones(c), n).astype(np.float32))
    csv = write_csv(tmp_path / "labels.csv", ("path", "label"), [(f"i{i}.png", f"k{i % c}") for i in range(n)])
    out = tmp_path / "out"
    base = ["--labels", csv, "--pred-probs", tmp_path / "probs.npy", "--out", out, "--allow-weak-teacher"]
    assert_input_error(scan(*base, "--summary-md", tmp_path), out, "--summary-md", "is a directory")
    assert_input_error(scan(*base, "--summary-md", csv / "x.md"), out, "--summary-md", "is a file")


def test_image_folder_leaves_out_hidden_files(tmp_path):
    """macOS copies leave ._NAME AppleDouble files beside each image; one aborted the scan."""
    from labelfix.files.inputs import read_image_folder

    for c in "ab":
        write_tiny_images(tmp_path / "img" / c, n_per_class=3, classes=(c,))
    (tmp_path / "img" / "a" / "._a_0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "img" / "b" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "img" / "b" / ".ipynb_checkpoints" / "b_0.png").write_bytes(b"not an image")
    labels = read_image_folder(tmp_path / "img")
    assert sorted(labels.paths) == [f"{c}/{c}_{i}.png" for c in "ab" for i in range(3)]


def test_messages_say_what_is_wrong(tmp_path):
    from labelfix.files.inputs import read_class_list

    with pytest.raises(InputError, match="'c0' listed more than once"):
        read_class_list("c0,c0,c1,c2")
    a_file = write_csv(tmp_path / "labels.csv", ("path", "label"), [("i.png", "a")])
    r = run_cli(["refine", a_file])
    assert r.exit_code == 4 and "a file, not a run directory" in stderr_of(r)


def test_teacher_flags_with_pred_probs_are_refused(tmp_path):
    """Before: exit 0 and summary.json recorded 'teacher: resnet18' for a run that used none."""
    np.save(tmp_path / "probs.npy", np.full((4, 2), 0.5, dtype=np.float32))
    csv = write_csv(tmp_path / "labels.csv", ("path", "label"), [(f"i{i}.png", "ab"[i % 2]) for i in range(4)])
    out = tmp_path / "out"
    r = scan("--labels", csv, "--pred-probs", tmp_path / "probs.npy", "--out", out, "--teacher", "resnet18")
    assert_input_error(r, out, "--teacher", "--pred-probs")


def test_auto_teacher_refuses_weights_and_arch(tiny_dataset, tmp_path):
    """Before: accepted and silently ignored (a user thought they had a pretrained teacher)."""
    img, csv, _rows = tiny_dataset
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, "--weights", "DEFAULT")
    assert_input_error(r, out, "--weights", "auto teacher")
    r = scan(img, "--labels", csv, "--out", out, "--arch", "resnet18")
    assert_input_error(r, out, "--arch", "auto teacher")


def test_a_row_naming_a_folder_says_so(tiny_dataset, tmp_path):
    img, csv, _rows = tiny_dataset
    (img / "b_1.png").unlink()
    (img / "b_1.png").mkdir()
    out = tmp_path / "out"
    r = scan(img, "--labels", csv, "--out", out, *FAST_CLI)
    assert_input_error(r, out, "b_1.png", "a folder, not an image file", "row 6")
