"""The Python API on arrays (labelfix.find_label_issues, labelfix.refine_labels): same flags and
actions as the CLI on the same inputs, errors that name the argument, and the README example."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, stderr_of, write_csv

import labelfix
from labelfix.errors import InputError, WeakTeacher

N, C = 500, 5


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    rng = np.random.default_rng(3)
    true = rng.integers(0, C, N)
    flip = rng.random(N) < 0.25
    given = np.where(flip, (true + rng.integers(1, C, N)) % C, true)
    logits = rng.normal(0, 0.8, (N, C))
    logits[np.arange(N), true] += 2.5
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    emb = (rng.normal(0, 3, (C, 12))[true] + rng.normal(0, 1, (N, 12))).astype(np.float32)
    d = tmp_path_factory.mktemp("api")
    np.save(d / "probs.npy", probs)
    np.save(d / "emb.npy", emb)
    # class names sort in index order ("c0" < "c1" ...), so CSV classes map to the same indices
    csv = write_csv(d / "labels.csv", ("path", "label"), [(f"x/{i}.png", f"c{g}") for i, g in enumerate(given)])
    return d, csv, given, probs, emb, flip


@pytest.mark.parametrize("with_features", [False, True], ids=["probs", "probs+features"])
def test_find_label_issues_matches_the_cli(arrays, tmp_path, with_features):
    d, csv, given, probs, emb, flip = arrays
    args = ["scan", "--labels", csv, "--pred-probs", d / "probs.npy", "--out", tmp_path / "run"]
    if with_features:
        args += ["--embeddings", d / "emb.npy"]
    r = run_cli(args)
    assert r.exit_code == 0, stderr_of(r)
    table = pq.read_table(tmp_path / "run" / "scan.parquet").to_pandas()
    df = labelfix.find_label_issues(given, pred_probs=probs, features=emb if with_features else None)
    assert isinstance(df, pd.DataFrame) and len(df) == N
    assert (df["is_label_issue"].to_numpy() == table["is_issue"].to_numpy()).all()
    assert np.allclose(df["issue_score"], table["issue_score"], atol=1e-6)
    assert (df["predicted_label"].to_numpy() == table["suggested_index"].to_numpy()).all()
    assert (df["is_label_issue"] == flip).mean() > 0.9


def test_refine_labels_matches_the_cli(arrays, tmp_path):
    d, csv, given, probs, _emb, _flip = arrays
    run = tmp_path / "run"
    assert run_cli(["scan", "--labels", csv, "--pred-probs", d / "probs.npy", "--out", run]).exit_code == 0
    assert run_cli(["refine", run]).exit_code == 0
    ref = pq.read_table(run / "refined.parquet").to_pandas()
    df, soft = labelfix.refine_labels(given, pred_probs=probs)
    assert soft.shape == (N, C)
    assert (df["action"].to_numpy() == ref["action"].to_numpy()).all()
    assert (df["refined_label"].to_numpy() == ref["refined_index"].to_numpy()).all()
    assert np.allclose(soft, np.stack(ref["soft_label"].to_numpy()), atol=1e-6)


def test_features_alone_use_a_cross_fitted_head(arrays):
    _d, _csv, given, _probs, emb, flip = arrays
    df = labelfix.find_label_issues(given, features=emb, k=10)
    assert (df["is_label_issue"] == flip).mean() > 0.85


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": np.array(["a", "b"]), "pred_probs": np.full((2, 2), 0.5)}, "labels: must be integer"),
        ({"labels": np.array([0, 1, 1]), "pred_probs": np.full((2, 2), 0.5)}, r"pred_probs: must have shape \(3"),
        ({"labels": np.array([0, 3]), "pred_probs": np.full((2, 2), 0.5)}, "labels: class 3"),
        ({"labels": np.array([0, -1]), "pred_probs": np.full((2, 2), 0.5)}, "labels: row 1"),
        (
            {"labels": np.array([0, 1]), "pred_probs": np.array([[0.5, 0.6], [0.5, 0.5]])},
            r"pred_probs: row 0 \(counted from 0\) sums",
        ),
        ({"labels": np.array([0, 1]), "pred_probs": np.array([[np.nan, 1], [0.5, 0.5]])}, "pred_probs: row 0 has NaN"),
        ({"labels": np.array([0, 1]), "pred_probs": np.full((2, 2), 0.5) + 0j}, "pred_probs: must be a real"),
        ({"labels": np.array([0, 1])}, "give pred_probs"),
        ({"labels": np.array([0, 1]), "pred_probs": np.full((2, 2), 0.5), "k": 0}, "k: must be"),
    ],
)
def test_bad_arrays_name_the_argument(kwargs, match):
    with pytest.raises(InputError, match=match):
        labelfix.find_label_issues(**kwargs)


def test_probabilities_at_chance_raise_weak_teacher(arrays):
    _d, _csv, given, probs, _emb, _flip = arrays
    shuffled = probs[np.random.default_rng(0).permutation(N)]
    with pytest.raises(WeakTeacher):
        labelfix.find_label_issues(given, pred_probs=shuffled)
    df = labelfix.find_label_issues(given, pred_probs=shuffled, allow_weak_teacher=True)
    assert df.attrs["summary"]["warnings"]


def test_options_are_keyword_only(arrays):
    _d, _csv, given, probs, _emb, _flip = arrays
    with pytest.raises(TypeError):
        labelfix.find_label_issues(given, probs, None, 20)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's "Python API" block, executed as written (in a scratch folder)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
