"""Duplicates as an issue type (issue 12): exact copies under other names and formats, a resized
copy, and a conflicting pair flagged as a label issue that suggests the group's consensus."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import FAST_CLI, run_cli, stderr_of
from PIL import Image

from labelfix.core.duplicates import find_duplicates


def _digit_images(n_per_class=20, classes=3, seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(d.target == c), n_per_class, replace=False) for c in range(classes)]
    )
    imgs = (d.images[rows] * 16).clip(0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.NEAREST)) for im in imgs])
    return big, d.target[rows]


def test_find_duplicates_on_arrays():
    imgs, y = _digit_images()
    n = len(y)
    resized = np.asarray(Image.fromarray(imgs[3]).resize((64, 64), Image.BILINEAR).resize((32, 32), Image.BILINEAR))
    x = np.concatenate([imgs, imgs[[0, 1, 2]], resized[None]])[..., None]
    given = np.concatenate([y, [y[0], y[1], (y[2] + 1) % 3, y[3]]])
    post = np.eye(3)[y[np.r_[np.arange(n), [0, 1, 2, 3]]]] * 0.9 + 0.1 / 3  # the posterior trusts the originals
    dup = find_duplicates(x, given, post)
    for orig, copy in [(0, n), (1, n + 1), (2, n + 2), (3, n + 3)]:
        assert dup.group[orig] >= 0 and dup.group[orig] == dup.group[copy], (orig, copy)
    assert dup.conflict[2] and dup.conflict[n + 2] and not dup.conflict[0]
    assert dup.wrong[n + 2] and not dup.wrong[2] and dup.consensus[n + 2] == y[2]
    assert dup.report()["exact_pairs"] >= 3 and dup.report()["conflicting_groups"] == 1


def test_scan_reports_duplicates_and_flags_the_conflict(tmp_path):
    imgs, y = _digit_images(n_per_class=40)
    root = tmp_path / "imgs"
    rows = []
    for i, (im, label) in enumerate(zip(imgs, y)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / str(label) / f"{i}.png")
        rows.append((f"{label}/{i}.png", str(label)))
    # three exact copies under other names and formats (one labelled differently), one resized copy
    Image.fromarray(imgs[0]).save(root / "copy0.bmp")
    Image.fromarray(imgs[1]).save(root / "copy1.png")
    Image.fromarray(imgs[2]).save(root / "copy2.png")
    Image.fromarray(imgs[3]).resize((64, 64), Image.BILINEAR).save(root / "big3.png")
    rows += [("copy0.bmp", str(y[0])), ("copy1.png", str(y[1])), ("copy2.png", str((y[2] + 1) % 3))]
    rows += [("big3.png", str(y[3]))]
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    out = tmp_path / "run"
    r = run_cli(["scan", root, "--labels", csv, "--out", out, "--image-size", "32", *FAST_CLI])
    assert r.exit_code == 0, stderr_of(r)
    t = pq.read_table(out / "scan.parquet").to_pandas().set_index("path")
    n = len(imgs)
    for orig, copy in [(f"{y[0]}/0.png", "copy0.bmp"), (f"{y[1]}/1.png", "copy1.png"), (f"{y[2]}/2.png", "copy2.png")]:
        assert t.loc[orig, "duplicate_group"] >= 0 and t.loc[orig, "duplicate_group"] == t.loc[copy, "duplicate_group"]
    assert t.loc[f"{y[3]}/3.png", "duplicate_group"] == t.loc["big3.png", "duplicate_group"] >= 0
    assert t.loc["copy2.png", "duplicate_conflict"] and t.loc[f"{y[2]}/2.png", "duplicate_conflict"]
    # exactly one of the conflicting pair is a label issue (which one: the posterior decides)
    assert t.loc[["copy2.png", f"{y[2]}/2.png"], "is_issue"].sum() >= 1
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["duplicates"]["exact_pairs"] >= 3 and s["duplicates"]["conflicting_groups"] >= 1
    assert len(t) == n + 4


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_inputs(n):
    x = np.zeros((n, 4, 4, 1), np.uint8)
    dup = find_duplicates(x, np.zeros(n, np.int64), np.ones((n, 2)) / 2)
    assert len(dup.group) == n


def test_colour_tells_images_apart():
    """A red and a green disc on the same background are not duplicates (a grayscale signature
    of equal luminance made them one group)."""
    yy, xx = np.mgrid[:16, :16]
    disc = (yy - 8) ** 2 + (xx - 8) ** 2 < 25
    imgs = []
    for colour in ([200, 40, 40], [40, 120, 40]) * 3:
        im = np.full((16, 16, 3), 230, np.uint8)
        im[disc] = colour
        imgs.append(im + np.random.default_rng(len(imgs)).integers(0, 3, im.shape).astype(np.uint8))
    y = np.array([0, 1] * 3)
    dup = find_duplicates(np.stack(imgs), y, np.eye(2)[y])
    assert not dup.conflict.any()  # red ones may pair with red ones, never with green ones
