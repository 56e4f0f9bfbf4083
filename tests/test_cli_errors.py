"""Bad input through the CLI: exit code 2, one error line naming the culprit, nothing left at --out."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAST_CLI, run_cli, stderr_of, write_csv, write_tiny_images
from PIL import Image


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
