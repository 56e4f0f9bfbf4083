"""The approximate kNN paths (CPU: cluster-blocked search; GPU: faiss IVF; both with a recall-tuned probe count)
against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from labelfix.core.graph import build_knn, faiss_gpu_available


def _clustered(n=3000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _recall(approx, exact) -> float:
    hits = [len(set(a) & set(e)) for a, e in zip(approx.ids, exact.ids)]
    return float(np.sum(hits)) / exact.ids.size


def test_blocked_path_matches_exact_search():
    x = _clustered()
    exact = build_knn(x, 10)
    approx = build_knn(x, 10, exact_limit=1_000)  # force the large-N branch on CPU
    assert exact.index_kind == "flat" and approx.index_kind.startswith("blocked")
    assert exact.recall is None and approx.recall >= 0.97  # measured on a sample, and recorded
    assert approx.ids.shape == exact.ids.shape == (len(x), 10)
    assert not (approx.ids == np.arange(len(x))[:, None]).any()
    assert _recall(approx, exact) > 0.95
    # similarities are the true inner products of the returned pairs
    got = np.einsum("nd,nkd->nk", x, x[approx.ids])
    np.testing.assert_allclose(approx.sims, got, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not faiss_gpu_available(), reason="needs faiss-gpu and a CUDA device")
def test_gpu_indexes_match_cpu():
    x = _clustered(20_000, 64)
    cpu = build_knn(x, 20, device="cpu")
    gpu_flat = build_knn(x, 20, device="cuda")
    assert gpu_flat.index_kind == "gpu-flat"
    assert _recall(gpu_flat, cpu) > 0.99
    gpu_ivf = build_knn(x, 20, device="cuda", exact_limit=10_000)
    assert gpu_ivf.index_kind.startswith("gpu-ivf")
    assert _recall(gpu_ivf, cpu) > 0.9


@pytest.mark.gpu
def test_auto_teacher_on_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from labelfix.config import TeacherConfig
    from labelfix.models.teacher import train_auto_teacher

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    images = (rng.random((600, 16, 16, 1)) * 60).astype(np.uint8)
    images[np.arange(600), 4 * y + 2, 4 * y + 2, 0] = 255  # a class-dependent bright pixel
    out = train_auto_teacher(images, y, 3, TeacherConfig(epochs=10, width=8), seed=0, device="cuda")
    assert out.probs.shape == (600, 3) and out.embeddings.shape[0] == 600
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-4)
    assert (out.probs.argmax(1) == y).mean() > 0.8


def test_out_of_fold_graph_uses_each_rows_own_fold_block():
    """Row i of fold f is linked in block f only: a second block that would pull it elsewhere
    (as a model trained on its label would) must not matter."""
    from labelfix.core.graph import build_knn, build_knn_out_of_fold

    rng = np.random.default_rng(0)
    n, d = 200, 8
    folds = np.arange(n) % 2
    a = rng.normal(size=(n, d)).astype(np.float32)
    b = rng.normal(size=(n, d)).astype(np.float32)
    g = build_knn_out_of_fold(np.concatenate([a, b], axis=1), folds, 5)
    assert g.ids.shape == (n, 5) and (g.ids != np.arange(n)[:, None]).all()
    for block, f in ((a, 0), (b, 1)):
        rows = np.flatnonzero(folds == f)
        normed = block / np.linalg.norm(block, axis=1, keepdims=True)
        ref = build_knn(normed, 5, rows=rows)
        assert (g.ids[rows] == ref.ids).all()
        np.testing.assert_allclose(g.sims[rows], ref.sims, atol=1e-5)
    # a subset query returns the same neighbours as the full graph for those rows
    full = build_knn(a / np.linalg.norm(a, axis=1, keepdims=True), 5)
    part = build_knn(a / np.linalg.norm(a, axis=1, keepdims=True), 5, rows=np.array([3, 7, 150]))
    assert (part.ids == full.ids[[3, 7, 150]]).all()


def _brute(x, k, rows=None):
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    rows = np.arange(len(x)) if rows is None else rows
    ids = np.argsort(-sims[rows], axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(sims[rows], ids, axis=1)


def test_exact_search_matches_brute_force_and_row_subsets():
    x = _clustered(1500, 16, seed=3)
    g = build_knn(x, 7)
    ids, sims = _brute(x, 7)
    assert g.index_kind == "flat" and g.recall is None
    assert g.ids.dtype == np.int64 and g.sims.dtype == np.float32
    assert all(set(a) == set(b) for a, b in zip(g.ids.tolist(), ids.tolist()))
    np.testing.assert_allclose(g.sims, sims, atol=1e-5)
    rows = np.array([1400, 3, 3, 700, 0])  # unsorted, with a repeat: the result follows `rows`
    part = build_knn(x, 7, rows=rows)
    assert (part.ids == g.ids[rows]).all() and (part.sims == g.sims[rows]).all()
    assert build_knn(x, 7, rows=np.array([], dtype=np.int64)).ids.shape == (0, 7)
    assert build_knn(x[:2], 5).ids.tolist() == [[1], [0]]  # k shrinks to N - 1


def test_blocked_search_on_row_subsets_and_read_only_memmaps(tmp_path):
    x = _clustered(4000, 32, seed=1)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")  # read-only: copied once, never written
    rows = np.arange(0, 4000, 3)
    g = build_knn(mm, 10, exact_limit=1_000, rows=rows)
    assert g.index_kind.startswith("blocked") and g.ids.shape == (len(rows), 10)
    assert not (g.ids == rows[:, None]).any() and (g.ids >= 0).all()
    ids, _ = _brute(x, 10, rows)
    hits = sum(len(set(a) & set(b)) for a, b in zip(g.ids.tolist(), ids.tolist()))
    assert hits / ids.size >= 0.95 and g.recall >= 0.97
    np.testing.assert_allclose(g.sims, np.einsum("nd,nkd->nk", x[rows], x[g.ids]), atol=1e-5)


def test_blocked_search_completes_rows_whose_lists_are_too_small(monkeypatch):
    """With one probe a list of 3 isolated rows holds fewer than k + 1 rows: those rows are
    searched exactly."""
    import labelfix.core.graph as graph

    monkeypatch.setattr(graph, "TARGET_RECALL", 0.3)  # one probe is enough for that
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 24))
    x = centres[rng.integers(0, 40, 3000)] + 0.01 * rng.normal(size=(3000, 24))
    x[:3] = rng.normal(size=24) + 0.01 * rng.normal(size=(3, 24))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    g = build_knn(x, 10, exact_limit=1_000)
    assert g.index_kind.endswith(",nprobe1")
    assert (g.ids >= 0).all() and np.isfinite(g.sims).all()
    assert not (g.ids == np.arange(len(x))[:, None]).any()
    assert set(g.ids[0, :2]) == {1, 2}


def test_blocked_search_falls_back_to_exact_without_cluster_structure():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    g = build_knn(x, 10, exact_limit=1_000)  # uniform on the sphere: nearly all lists are needed
    assert g.index_kind == "flat" and g.recall is None
    assert (g.ids == build_knn(x, 10).ids).all()


def test_same_graph_whatever_the_thread_count():
    """Worker threads own disjoint query rows, cut the same way whatever their number."""
    torch = pytest.importorskip("torch")
    x = _clustered(6000, 32, seed=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [build_knn(x, 10), build_knn(x, 10, exact_limit=1_000)]
        torch.set_num_threads(3)
        three = [build_knn(x, 10), build_knn(x, 10, exact_limit=1_000)]
        assert torch.get_num_threads() == 3  # restored after the search
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, three):
        assert (a.ids == b.ids).all() and a.recall == b.recall
        np.testing.assert_allclose(a.sims, b.sims, atol=1e-6)  # BLAS may round a product's last bit apart
