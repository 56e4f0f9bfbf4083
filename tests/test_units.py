"""Stage functions on small synthetic arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labelfix.core.graph import KnnGraph, build_knn
from labelfix.core.propagation import normalized_adjacency, propagated_labels
from labelfix.core.selection import confident_joint, small_loss_mask
from labelfix.files.outputs import staged_run


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# graph


def test_knn_excludes_self_with_exact_duplicates():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(30, 8)))
    emb = np.concatenate([base, base, base, base])  # every row has three exact copies
    n, k = len(emb), 5
    g = build_knn(emb, k, "cpu")
    assert g.ids.shape == (n, k) and g.sims.shape == (n, k)
    assert g.ids.dtype == np.int64 and g.sims.dtype == np.float32
    assert not (g.ids == np.arange(n)[:, None]).any()
    copies = {i: {(i + 30 * j) % n for j in (1, 2, 3)} for i in range(n)}
    for i in range(n):
        # the three copies come first, with similarity 1
        assert set(g.ids[i, :3].tolist()) == copies[i], (i, g.ids[i])
        assert np.allclose(g.sims[i, :3], 1.0, atol=1e-5)
        assert len(set(g.ids[i].tolist())) == k
    assert (np.diff(g.sims, axis=1) <= 1e-6).all()  # sorted by similarity


def test_knn_many_duplicates_self_may_be_missing_from_search():
    # 12 identical rows and k=3: the row itself may not even be among the k+1 results
    emb = np.concatenate([np.tile(_unit(np.ones((1, 4))), (12, 1)), _unit(np.eye(4))])
    g = build_knn(emb, 3, "cpu")
    assert g.ids.shape == (16, 3)
    assert not (g.ids == np.arange(16)[:, None]).any()
    assert (g.ids[:12] < 12).all()


def test_knn_matches_brute_force_and_clamps_k():
    rng = np.random.default_rng(1)
    emb = _unit(rng.normal(size=(40, 6)))
    g = build_knn(emb, 4, "cpu")
    s = emb @ emb.T
    np.fill_diagonal(s, -np.inf)
    expect = np.argsort(-s, axis=1)[:, :4]
    assert np.array_equal(np.sort(g.ids, 1), np.sort(expect, 1))
    assert np.allclose(g.sims, np.take_along_axis(s, g.ids, 1), atol=1e-5)
    small = build_knn(emb[:5], 20, "cpu")
    assert small.ids.shape == (5, 4)
    assert not (small.ids == np.arange(5)[:, None]).any()


# ---------------------------------------------------------------------------------------------
# selection


def _noisy_probs(n, c, rate, seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    flip = rng.random(n) < rate
    given = true.copy()
    given[flip] = (true[flip] + rng.integers(1, c, flip.sum())) % c
    logits = rng.normal(0, 1.0, (n, c))
    logits[np.arange(n), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, true, given, flip


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_confident_joint_recovers_noise_rate(rate):
    probs, true, given, flip = _noisy_probs(3000, 5, rate, 0)
    est = confident_joint(probs, given)
    assert abs(est.overall - flip.mean()) < 0.04, (est.overall, flip.mean())
    for k in range(5):
        actual = flip[given == k].mean()
        assert abs(est.rates[k] - actual) < 0.08, (k, est.rates[k], actual)
    assert np.allclose(est.joint.sum(1), np.bincount(given, minlength=5))
    assert np.allclose(est.matrix.sum(1), 1)
    # the off-diagonal mass lands on the true classes: row k, column j ~ P(true j | given k)
    emp = np.zeros((5, 5))
    np.add.at(emp, (given, true), 1)
    emp /= emp.sum(1, keepdims=True)
    assert np.abs(est.matrix - emp).max() < 0.1


def test_confident_joint_clean_labels():
    probs, true, _, _ = _noisy_probs(1000, 3, 0.0, 1)
    est = confident_joint(probs, true)
    assert est.overall < 0.03


def test_small_loss_mask_keeps_ceil_per_class():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [10, 7, 3])
    loss = rng.random(len(y)).astype(np.float32)
    rates = np.array([0.25, 0.5, 0.9])
    keep = small_loss_mask(loss, y, rates)
    for k, n_k in enumerate([10, 7, 3]):
        idx = np.flatnonzero(y == k)
        m = max(1, math.ceil((1 - rates[k]) * n_k))
        assert keep[idx].sum() == m
        # the kept ones are the smallest losses of the class
        assert loss[idx][keep[idx]].max() <= loss[idx][~keep[idx]].min()
    assert keep[y == 0].sum() == 8 and keep[y == 1].sum() == 4 and keep[y == 2].sum() == 1


def test_small_loss_mask_zero_rate_keeps_all():
    y = np.array([0, 0, 1, 1, 1])
    assert small_loss_mask(np.arange(5.0), y, np.zeros(2)).all()


# ---------------------------------------------------------------------------------------------
# propagation


def _chain(n):
    """Path graph 0-1-...-(n-1) as a KnnGraph with k=2 (end nodes point at themselves, weight 0)."""
    ids = np.empty((n, 2), np.int64)
    sims = np.ones((n, 2), np.float32)
    for i in range(n):
        ids[i] = [i - 1 if i > 0 else i, i + 1 if i < n - 1 else i]
    sims[0, 0] = sims[n - 1, 1] = 0.0
    return KnnGraph(ids, sims, "test")


def test_propagation_along_a_chain():
    n, c = 10, 2
    wn = normalized_adjacency(_chain(n), gamma=1.0)
    assert wn.shape == (n, n) and abs(wn - wn.T).max() < 1e-12 and wn.diagonal().sum() == 0
    y = np.zeros(n, np.int64)
    y[n - 1] = 1
    mask = np.zeros(n, bool)
    mask[[0, n - 1]] = True
    fallback = np.full((n, c), 0.5)
    p = propagated_labels(wn, y, np.ones(n), mask, fallback, alpha=0.9, iters=50)
    assert p.shape == (n, c)
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    assert (p >= 0).all()
    # class 0 seeded at node 0 dominates the first half, class 1 seeded at the end the second
    assert (p[: n // 2, 0] > 0.5).all() and (p[n // 2 :, 1] > 0.5).all()
    assert (np.diff(p[:, 1]) > 0).all()  # monotone along the chain


def test_propagation_single_seed_reaches_whole_chain_and_falls_back_elsewhere():
    n, _c = 8, 3
    g = _chain(n)
    # add two isolated nodes (self-loops only): no mass reaches them, so they fall back
    ids = np.concatenate([g.ids, [[n, n], [n + 1, n + 1]]])
    sims = np.concatenate([g.sims, np.zeros((2, 2), np.float32)])
    wn = normalized_adjacency(KnnGraph(ids, sims, "test"), gamma=1.0)
    y = np.full(n + 2, 2, np.int64)
    mask = np.zeros(n + 2, bool)
    mask[0] = True
    fallback = np.tile(np.array([[0.2, 0.7, 0.1]]), (n + 2, 1))
    p = propagated_labels(wn, y, np.ones(n + 2), mask, fallback, alpha=0.99, iters=50)
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.allclose(p[:n, 2], 1.0)
    assert np.allclose(p[n:], fallback[n:])


# ---------------------------------------------------------------------------------------------
# outputs


def test_staged_run_leaves_nothing_when_body_raises(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), staged_run(out) as stage:
        (stage / "scan.parquet").write_bytes(b"partial")
        (stage / "cache").mkdir()
        (stage / "cache" / "x.npy").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not out.exists()


def test_staged_run_keeps_existing_contents_on_failure(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_run(out) as stage:
        (stage / "old.txt").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert (out / "old.txt").read_text() == "old"


def test_staged_run_moves_files_on_success(tmp_path):
    out = tmp_path / "run"
    with staged_run(out) as stage:
        (stage / "a.txt").write_text("a")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.txt").write_text("b")
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "sub"]


def test_staged_run_removes_stale_outputs_only_of_a_labelfix_run(tmp_path):
    import json

    from labelfix.files.outputs import staged_run

    stale = ("embeddings.npy", "refined.parquet", "checkpoints/student-last.pt")
    # a user's folder that is not a labelfix run: nothing of theirs is touched
    user = tmp_path / "project"
    (user / "checkpoints").mkdir(parents=True)
    (user / "checkpoints" / "student-last.pt").write_bytes(b"mine")
    (user / "embeddings.npy").write_bytes(b"mine")
    with staged_run(user, stale=stale) as stage:
        (stage / "summary.json").write_text(json.dumps({"labelfix_version": "0"}))
    assert (user / "embeddings.npy").read_bytes() == b"mine" and (user / "checkpoints" / "student-last.pt").is_file()
    # now it is a run: stale outputs go, protected inputs and rewritten names stay
    (user / "refined.parquet").write_bytes(b"old")
    with staged_run(user, stale=stale, protect=(user / "embeddings.npy",)) as stage:
        (stage / "summary.json").write_text(json.dumps({"labelfix_version": "0"}))
    assert not (user / "refined.parquet").exists()
    assert not (user / "checkpoints").exists()  # emptied folder removed
    assert (user / "embeddings.npy").read_bytes() == b"mine"
    with staged_run(user, stale=stale) as stage:
        (stage / "embeddings.npy").write_bytes(b"new")
    assert (user / "embeddings.npy").read_bytes() == b"new"


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("relabel_min_confidence", 1.5, "--min-confidence"),
        ("relabel_max_ambiguity", -0.1, "--max-ambiguity"),
        ("temperature", 0.0, "--temperature"),
        ("rounds", 0, "--rounds"),
    ],
)
def test_refine_config_names_the_flag_at_fault(field, value, flag):
    from labelfix.commands.refine import RefineConfig
    from labelfix.errors import InputError

    with pytest.raises(InputError, match=flag):
        RefineConfig(**{field: value}).validate()
