"""The no-images generalisation matrix (examples/matrix.py, labelfix/benchmarks/matrix.py): one tiny synthetic
row end to end, and the noise helpers it uses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from labelfix.benchmarks.matrix import CLEANLAB_FILTERS, Row, evaluate_row, restrict_classes, synthetic_row
from labelfix.core.noise import confusion_from_probs, confusion_noise, long_tail_indices, random_pairs

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("matrix_example", ROOT / "examples" / "matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_synthetic_row_end_to_end(tmp_path):
    row = synthetic_row("tiny", n=600, dim=16, num_classes=4, emb_noise=1.0, probe_dim=4, probe_noise=0.5, rate=0.3)
    assert row.probs.shape == (600, 4) and row.emb.shape == (600, 16)
    assert np.allclose(row.probs.sum(1), 1.0, atol=1e-4)
    res = evaluate_row(row, tmp_path / "work")
    assert "labelfix_error" not in res, res.get("labelfix_error")
    assert res["n"] == 600 and res["classes"] == 4 and res["has_embeddings"]
    assert 0.2 < res["actual_noise_rate"] < 0.4
    assert res["given_accuracy"] == round(1 - res["actual_noise_rate"], 4)
    for key in ("precision", "recall", "f1", "flagged"):
        assert key in res["labelfix"]
    assert res["labelfix"]["f1"] > 0.5, res["labelfix"]
    assert set(CLEANLAB_FILTERS) <= set(res["cleanlab"])
    assert "Datalab(features)" in res["cleanlab"]  # scored, or its failure recorded
    assert res["best_cleanlab"] in res["cleanlab"]
    assert res["ratio"] == round(res["labelfix"]["f1"] / res["best_cleanlab_f1"], 3)
    assert res["floor"] == max(res["given_accuracy"], res["teacher_accuracy"])
    for key in ("refined_argmax_accuracy", "refined_csv_accuracy"):
        assert 0.0 <= res[key] <= 1.0
    assert res["refined_argmax_ok"] == (res["refined_argmax_accuracy"] >= res["floor"])
    assert res["labelfix_teacher_accuracy"] == res["teacher_accuracy"]  # labelfix read the same probabilities
    assert res["estimated_noise_rate"] is not None and res["row_s"] > 0

    ex = _example()
    h = ex.headline([res])
    assert h["rows_with_ratio"] == 1 and h["worst_row"] == "tiny"
    md = ex.markdown([res], h, "test", "abc", 1)
    assert "| tiny |" in md and "worst ratio" in md


def test_labelfix_error_is_an_outcome(tmp_path):
    # a class given once is bad input (exit 2): recorded on the row, not raised
    y = np.array([0, 0, 0, 1, 1, 1, 2])
    probs = np.full((7, 3), 1 / 3, dtype=np.float32)
    res = evaluate_row(Row("bad", probs, y, y), tmp_path, with_cleanlab=False)
    assert res["labelfix_error"]["exit_code"] == 2 and "labelfix" not in res


def test_confusion_noise_follows_the_confusion():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 20_000)
    conf = np.eye(4) * 0.7
    conf[0, 1] = conf[1, 0] = conf[2, 3] = conf[3, 2] = 0.3
    noisy = confusion_noise(y, 0.25, conf, seed=3)
    assert abs((noisy != y).mean() - 0.25) < 0.02
    flipped = noisy != y
    assert ((y[flipped] ^ 1) == noisy[flipped]).all()  # 0<->1, 2<->3 only
    assert (confusion_noise(y, 0.25, conf, seed=3) == noisy).all()
    probs = np.eye(4)[noisy]
    est = confusion_from_probs(probs, y)
    assert np.allclose(est.sum(1), 1.0) and est[0, 1] > 0.2 and est[0, 2] == 0


def test_pairs_long_tail_and_class_subset():
    for c in (2, 5, 10):
        p = random_pairs(c, 1)
        assert sorted(p) == list(range(c)) and all(p[k] != k for k in p)
    y = np.repeat(np.arange(5), 1000)
    idx = long_tail_indices(y, 10, 500, seed=0)
    sizes = np.sort(np.bincount(y[idx]))
    assert sizes[-1] == 500 and sizes[0] == 50
    probs = np.random.default_rng(0).dirichlet(np.ones(5), 5000)
    rows, p, yy = restrict_classes(probs, y, [1, 3])
    assert len(rows) == 2000 and p.shape == (2000, 2) and np.allclose(p.sum(1), 1) and set(yy) == {0, 1}
