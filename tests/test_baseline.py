"""The baseline gate (issue 12): a scan against an earlier run reports new, fixed and unchanged
issues, matching rows by path and, for images, by content."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import model_outputs, write_csv

import labelfix
from labelfix.files.baseline import summary_markdown

N, C = 400, 4


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    """One fixed model's probabilities and labels with 15% wrong, scanned once as the baseline."""
    d = tmp_path_factory.mktemp("baseline")
    true, given, _ = model_outputs(d, N, C, 0.15, 11)
    labelfix.scan(labels_csv=d / "labels.csv", pred_probs=d / "probs.npy", out=d / "base")
    return d, true, given


def _relabel(d, given, rows, name):
    g = given.copy()
    g[rows] = (g[rows] + 2) % C
    return write_csv(d / name, ("path", "label"), [(f"img/{i}.png", f"c{v}") for i, v in enumerate(g)])


def test_five_new_wrong_labels_are_the_new_issues(fixed_model, tmp_path):
    d, true, given = fixed_model
    clean_rows = np.flatnonzero(given == true)[:5]
    csv = _relabel(d, given, clean_rows, "labels5.csv")
    res = labelfix.scan(labels_csv=csv, pred_probs=d / "probs.npy", out=tmp_path / "run", baseline=d / "base")
    diff = res.baseline
    assert sorted(diff.new["path"]) == sorted(f"img/{i}.png" for i in clean_rows)
    assert len(diff.fixed) == 0 and diff.unchanged == int(res.summary["counts"]["issues"]) - 5
    assert res.summary["baseline"]["new_issues"] == 5
    md = summary_markdown(res.summary, diff)
    assert "**5 new**" in md and all(f"`img/{i}.png`" in md for i in clean_rows)


def test_the_same_inputs_have_no_new_issues(fixed_model, tmp_path):
    d, _true, _given = fixed_model
    res = labelfix.scan(
        labels_csv=d / "labels.csv", pred_probs=d / "probs.npy", out=tmp_path / "r", baseline=d / "base"
    )
    assert len(res.baseline.new) == 0 and len(res.baseline.fixed) == 0
    assert res.baseline.unchanged == res.summary["counts"]["issues"] > 0
    # the baseline may also be given as its scan.parquet
    res2 = labelfix.scan(
        labels_csv=d / "labels.csv", pred_probs=d / "probs.npy", out=tmp_path / "r2", baseline=d / "base/scan.parquet"
    )
    assert len(res2.baseline.new) == 0


def test_fixed_labels_are_reported_fixed(fixed_model, tmp_path):
    d, true, given = fixed_model
    wrong = np.flatnonzero(given != true)[:4]
    g = given.copy()
    g[wrong] = true[wrong]
    csv = write_csv(d / "labels_fixed.csv", ("path", "label"), [(f"img/{i}.png", f"c{v}") for i, v in enumerate(g)])
    res = labelfix.scan(labels_csv=csv, pred_probs=d / "probs.npy", out=tmp_path / "r", baseline=d / "base")
    assert {f"img/{i}.png" for i in wrong} <= set(res.baseline.fixed["path"])


def test_a_bad_baseline_is_refused_before_any_work(fixed_model, tmp_path):
    d, _true, _given = fixed_model
    (tmp_path / "x.parquet").write_bytes(b"nope")
    with pytest.raises(labelfix.InputError, match="--baseline"):
        labelfix.scan(
            labels_csv=d / "labels.csv", pred_probs=d / "probs.npy", out=tmp_path / "r", baseline=tmp_path / "x.parquet"
        )
    assert not (tmp_path / "r").exists()


def test_a_renamed_image_is_the_same_row_with_pred_probs(tmp_path):
    """--pred-probs with IMAGES_DIR: files are hashed, so a renamed image is matched by content."""
    from conftest import write_tiny_images

    img = tmp_path / "images"
    rows = write_tiny_images(img, n_per_class=30, classes=("a", "b", "c"), size=8)
    n = len(rows)
    rng = np.random.default_rng(0)
    y = np.array(["abc".index(g) for _, g in rows])
    logits = rng.normal(0, 0.5, (n, 3))
    logits[np.arange(n), (y + (np.arange(n) % 10 == 0)) % 3] += 3.0  # the model disagrees with every 10th label
    np.save(tmp_path / "p.npy", (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32))
    csv = write_csv(tmp_path / "labels.csv", ("path", "label"), rows)
    base = labelfix.scan(img, labels_csv=csv, pred_probs=tmp_path / "p.npy", out=tmp_path / "base")
    flagged = [p for p, f in zip(base.table["path"], base.table["is_issue"]) if f]
    assert flagged
    old = flagged[0]
    (img / old).rename(img / ("renamed-" + old.replace("/", "-")))
    rows2 = [(("renamed-" + p.replace("/", "-")) if p == old else p, g) for p, g in rows]
    csv2 = write_csv(tmp_path / "labels2.csv", ("path", "label"), rows2)
    res = labelfix.scan(
        img, labels_csv=csv2, pred_probs=tmp_path / "p.npy", out=tmp_path / "r", baseline=tmp_path / "base"
    )
    assert len(res.baseline.new) == 0 and len(res.baseline.fixed) == 0 and res.baseline.matched_by_hash == 1
