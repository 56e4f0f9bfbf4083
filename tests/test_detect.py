"""The noise posterior (labelfix.core.detect) on small synthetic arrays with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from labelfix.core.detect import detect, f1_threshold, neighbour_vote, transition_from_joint
from labelfix.core.graph import build_knn
from labelfix.core.noise import symmetric_noise


def _world(n=3000, c=5, rate=0.3, teacher_acc=0.9, emb_sep=4.0, seed=0):
    """True labels, noisy labels, probabilities of a `teacher_acc` model of the TRUE class
    (softmax of noisy logits), and clustered embeddings `emb_sep` apart."""
    rng = np.random.default_rng(seed)
    yt = rng.integers(0, c, n)
    y = symmetric_noise(yt, rate, c, seed)
    logits = rng.normal(0, 1, (n, c))
    right = rng.random(n) < teacher_acc
    target = np.where(right, yt, (yt + rng.integers(1, c, n)) % c)
    logits[np.arange(n), target] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    centres = rng.normal(0, 1, (c, 16)) * emb_sep
    emb = (centres[yt] + rng.normal(0, 1, (n, 16))).astype(np.float32)
    return yt, y, probs, emb


def _f1(flags, truth):
    tp = (flags & truth).sum()
    return 2 * tp / max(flags.sum() + truth.sum(), 1)


def test_posterior_flags_symmetric_noise_and_estimates_the_rate():
    yt, y, probs, emb = _world()
    g = build_knn(emb / np.linalg.norm(emb, axis=1, keepdims=True), 10)
    det = detect(probs, y, g.ids, g.sims, graph_independent=True)
    truth = y != yt
    assert _f1(det.flags, truth) > 0.93
    assert abs(det.p_wrong.mean() - truth.mean()) < 0.05
    assert np.allclose(det.posterior.sum(1), 1.0, atol=1e-4)
    # refined labels (posterior argmax) beat both the given labels and the teacher's argmax
    refined = det.posterior.argmax(1)
    assert (refined == yt).mean() > max((y == yt).mean(), (probs.argmax(1) == yt).mean())


def test_the_stronger_signal_gets_the_weight():
    """Useless probabilities, informative embeddings: the graph's vote carries the pool."""
    yt, y, _, emb = _world(emb_sep=4.0)
    rng = np.random.default_rng(1)
    useless = rng.dirichlet(np.ones(5), len(y))
    g = build_knn(emb / np.linalg.norm(emb, axis=1, keepdims=True), 10)
    det = detect(useless, y, g.ids, g.sims, graph_independent=True)
    rep = det.report()
    assert rep["experts"]["graph vote"] > rep["experts"]["probabilities"]
    assert _f1(det.flags, y != yt) > 0.9


def test_a_useless_extra_expert_gets_no_weight():
    yt, y, probs, emb = _world()
    g = build_knn(emb / np.linalg.norm(emb, axis=1, keepdims=True), 10)
    noise = np.random.default_rng(2).dirichlet(np.ones(5), len(y))
    det = detect(probs, y, g.ids, g.sims, True, extra={"student probabilities": noise})
    assert det.report()["experts"]["student probabilities"] <= 0.2


def test_clean_labels_stay_clean():
    yt, _, probs, emb = _world(rate=0.0)
    g = build_knn(emb / np.linalg.norm(emb, axis=1, keepdims=True), 10)
    det = detect(probs, yt, g.ids, g.sims, True)
    teacher_error = (probs.argmax(1) != yt).mean()
    assert det.flags.mean() <= teacher_error


def test_f1_threshold():
    assert f1_threshold(np.zeros(10)) > 1.0  # nothing can be wrong: nothing is flagged
    pw = np.array([0.99, 0.98, 0.97, 0.02, 0.01])
    assert f1_threshold(pw) == pytest.approx(0.97)


def test_vote_is_smoothed_and_rows_sum_to_one():
    ids = np.array([[1, 2], [0, 2], [0, 1]])
    sims = np.ones((3, 2), dtype=np.float32)
    y = np.array([0, 0, 1])
    q = neighbour_vote(ids, sims, y, 3, np.ones(3))
    assert np.allclose(q.sum(1), 1.0)
    assert (q > 0).all() is np.True_ or (q[:, :2] > 0).all()  # class 2 has no member: prior 0
    assert q[2, 0] > q[2, 1]


def test_transition_rows_are_distributions():
    joint = np.array([[80.0, 20.0, 0.0], [10.0, 90.0, 0.0], [0.0, 0.0, 0.0]])
    t = transition_from_joint(joint)
    assert np.allclose(t.sum(1), 1.0)
    assert t[2, 2] == 1.0  # a class nobody truly belongs to is assumed clean


def test_flat_evidence_flags_nothing():
    """Uniform probabilities and a graph that carries nothing: every P(wrong) is the same small
    number, and a flag must still mean 'probably wrong' (the plug-in F1 optimum alone flagged
    almost every row here)."""
    rng = np.random.default_rng(3)
    n, c = 1000, 5
    y = rng.integers(0, c, n)
    probs = np.full((n, c), 1.0 / c)
    g = build_knn(rng.normal(size=(n, 8)).astype(np.float32), 10)
    det = detect(probs, y, g.ids, g.sims, graph_independent=True)
    assert det.threshold >= 0.5
    assert det.flags.mean() <= det.p_wrong.mean() + 0.05


@pytest.mark.parametrize("c", [5, 80])  # dense, and sparse above SPARSE_ABOVE classes
def test_known_pool_fits_are_replayed_only_on_the_same_inputs(c, monkeypatch):
    """refine replays scan's pool fits (summary.json detection.pool_fits) instead of refitting:
    the same detection without a single fit; a different seed, gamma or label vector refits."""
    import json

    import labelfix.core.detect as dmod
    import labelfix.core.detect_sparse as smod

    _, y, probs, emb = _world(n=1500, c=c)
    g = build_knn(emb / np.linalg.norm(emb, axis=1, keepdims=True), 10)
    first = detect(probs, y, g.ids, g.sims, graph_independent=True)
    known = json.loads(json.dumps(first.report()["pool_fits"]))  # as it comes back from summary.json
    assert len(known["fits"]) == 1 + first.iterations

    calls = []
    for mod in (dmod, smod):
        real = mod.fit_pool
        monkeypatch.setattr(mod, "fit_pool", lambda *a, _real=real: calls.append(1) or _real(*a))
    again = detect(probs, y, g.ids, g.sims, graph_independent=True, known_fits=known)
    assert calls == []
    assert np.array_equal(again.p_wrong, first.p_wrong) and np.array_equal(again.flags, first.flags)
    assert again.report() == first.report()

    other = y.copy()
    other[0] = (other[0] + 1) % c
    for kwargs in ({"seed": 1}, {"gamma": 2.0}, {"y": other}):
        calls.clear()
        args = {"probs": probs, "y": y, "ids": g.ids, "sims": g.sims, "graph_independent": True, **kwargs}
        detect(**args, known_fits=known)
        assert len(calls) == 1 + first.iterations, kwargs
