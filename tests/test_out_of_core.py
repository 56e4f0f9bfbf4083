"""Out-of-core inputs (issue 13): --pred-probs and --embeddings are checked and converted block by
block from their memory maps; above SPARSE_ABOVE classes normalised float32 probabilities are
used in place, never copied."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from labelfix.core.issues import feature_space
from labelfix.core.sparse import SPARSE_ABOVE, chunk_rows
from labelfix.errors import InputError
from labelfix.files.npy import check_pred_probs, load_npy


def _save(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr)
    return path


def _old_probs(probs):
    """The whole-array conversion these functions replaced: the reference for bit identity."""
    probs = np.asarray(probs, dtype=np.float32)
    probs = np.clip(probs, 0, None)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def _old_space(features):
    emb = np.asarray(features, dtype=np.float32)
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def test_small_c_blocks_give_the_whole_array_result_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    n = 3 * chunk_rows(10) + 17  # several blocks and a ragged one
    raw = rng.dirichlet(np.ones(10), n).astype(np.float64)
    path = _save(tmp_path, "p.npy", raw)
    got = check_pred_probs(load_npy(path, "--pred-probs", n, 10), path)
    assert got.dtype == np.float32 and not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, _old_probs(raw))
    feats = rng.normal(size=(n, 7))
    fpath = _save(tmp_path, "e.npy", feats)
    emb, source = feature_space(got, load_npy(fpath, "--embeddings", n))
    assert source == "embeddings" and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, _old_space(feats))
    emb, source = feature_space(got, None)
    assert source == "pred_probs"
    np.testing.assert_array_equal(emb, _old_space(np.sqrt(got)))


def test_large_c_normalised_float32_is_used_in_place(tmp_path):
    c = SPARSE_ABOVE + 36
    n = 2 * chunk_rows(c) + 5
    probs = np.random.default_rng(1).dirichlet(np.ones(c), n).astype(np.float32)
    path = _save(tmp_path, "p.npy", probs)
    mapped = load_npy(path, "--pred-probs", n, c)
    assert isinstance(mapped, np.memmap)
    got = check_pred_probs(mapped, path)
    assert got is mapped  # no N x C copy
    off = probs.astype(np.float64) * 1.0005  # within the 1e-3 check, outside NORMALISED: one normalised copy
    opath = _save(tmp_path, "q.npy", off)
    got = check_pred_probs(load_npy(opath, "--pred-probs", n, c), opath)
    assert got.dtype == np.float32 and not isinstance(got, np.memmap)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_errors_name_the_row_in_a_later_block(tmp_path):
    n = 2 * chunk_rows(4) + 3
    probs = np.full((n, 4), 0.25, dtype=np.float32)
    probs[n - 2, 1] = np.nan
    path = _save(tmp_path, "nan.npy", probs)
    with pytest.raises(InputError, match=rf"nan.npy: --pred-probs row {n - 2} \(counted from 0\) has NaN"):
        load_npy(path, "--pred-probs", n, 4)
    probs[n - 2, 1] = 0.25
    probs[n - 1] = [0.5, 0.5, 0.5, 0.5]
    path = _save(tmp_path, "sum.npy", probs)
    with pytest.raises(
        InputError, match=rf"sum.npy: --pred-probs row {n - 1} \(counted from 0\) sums to 2.0000, not 1"
    ):
        check_pred_probs(load_npy(path, "--pred-probs", n, 4), path)
    path = _save(tmp_path, "zeros.npy", np.zeros((n, 3), dtype=np.float32))
    with pytest.raises(InputError, match="zeros.npy: --embeddings is all zeros"):
        load_npy(path, "--embeddings", n)


def test_top_m_rows_with_empty_slots_densify_without_touching_the_last_class():
    from labelfix.core.sparse import TopM

    top = TopM(np.array([[2, -1, 0]], dtype=np.int32), np.array([[0.6, 0.0, 0.2]], dtype=np.float32), 5)
    dense = top.to_dense()
    # 0.2 left over, spread over the 3 classes not listed (1, 3, 4); -1 is no class, not class 4
    np.testing.assert_allclose(dense, [[0.2, 0.2 / 3, 0.6, 0.2 / 3, 0.2 / 3]], rtol=1e-6)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release is Linux's madvise")
def test_a_pass_over_a_memory_map_does_not_keep_it_resident(tmp_path):
    from labelfix.core.sparse import chunks, read_rows

    path = _save(tmp_path, "big.npy", np.ones((1 << 16, 256), dtype=np.float32))  # 64 MB
    arr = np.load(path, mmap_mode="r")
    before = _rss_bytes()
    total = 0.0
    for s in chunks(*arr.shape):
        total += float(read_rows(arr, s).sum())
    assert total == arr.size
    assert _rss_bytes() - before < 24 << 20  # a block or two, not the 64 MB read
    total = sum(float(np.asarray(arr[s]).sum()) for s in chunks(*arr.shape))  # plain reads keep them
    assert _rss_bytes() - before > 48 << 20


def test_embedding_scale_does_not_matter():
    """float32 squares overflow beyond ~1e19 and underflow below ~1e-19: the norm falls back to
    float64 there, so the unit rows (and the graph) do not depend on the embeddings' scale."""
    feats = np.random.default_rng(3).normal(size=(200, 16)).astype(np.float32)
    ref, _ = feature_space(None, feats)
    for scale in (1e20, 1e-25):
        got, _ = feature_space(None, (feats.astype(np.float64) * scale).astype(np.float32))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_errors_name_the_negative_row_and_a_folder(tmp_path):
    probs = np.full((30, 3), 1 / 3, dtype=np.float32)
    probs[27] = [1.1, -0.1, 0.0]
    path = _save(tmp_path, "neg.npy", probs)
    with pytest.raises(InputError, match=r"neg.npy: --pred-probs row 27 \(counted from 0\) has negative values"):
        check_pred_probs(load_npy(path, "--pred-probs", 30, 3), path)
    with pytest.raises(InputError, match="--pred-probs is a folder"):
        load_npy(tmp_path, "--pred-probs", 30, 3)
    path = _save(tmp_path, "wide.npy", np.full((30, 4), 0.25, dtype=np.float32))
    with pytest.raises(InputError, match="4 columns but there are 3 classes .*--classes"):
        load_npy(path, "--pred-probs", 30, 3)


def test_fortran_ordered_input_reads_the_same(tmp_path):
    c = SPARSE_ABOVE + 6
    probs = np.random.default_rng(4).dirichlet(np.ones(c), 300).astype(np.float32)
    path = _save(tmp_path, "f.npy", np.asfortranarray(probs))
    got = check_pred_probs(load_npy(path, "--pred-probs", 300, c), path)
    np.testing.assert_array_equal(np.asarray(got), probs)


def _scan_inputs(d, n, c=3, dim=8, seed=5, same_rows=False):
    from conftest import write_csv

    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    given = np.where(rng.random(n) < 0.2, (true + 1) % c, true)
    logits = rng.normal(0, 0.7, (n, c))
    logits[np.arange(n), true] += 3.0
    np.save(d / "p.npy", (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32))
    emb = np.ones((n, dim)) if same_rows else rng.normal(0, 1, (c, dim))[true] * 3 + rng.normal(0, 1, (n, dim))
    np.save(d / "e.npy", emb.astype(np.float32))
    return write_csv(d / "labels.csv", ("path", "label"), [(f"r{i}", f"k{g}") for i, g in enumerate(given)])


def test_embeddings_without_label_information_stop_the_run(tmp_path):
    from conftest import run_cli, stderr_of

    csv = _scan_inputs(tmp_path, 400, same_rows=True)
    args = [
        "scan",
        "--labels",
        str(csv),
        "--pred-probs",
        str(tmp_path / "p.npy"),
        "--embeddings",
        str(tmp_path / "e.npy"),
    ]
    r = run_cli([*args, "--out", str(tmp_path / "run")])
    assert r.exit_code == 5, stderr_of(r)
    assert "embeddings' nearest neighbours agree with the given labels no better than chance" in stderr_of(r)
    assert not (tmp_path / "run").exists()
    r = run_cli([*args, "--out", str(tmp_path / "run2"), "--allow-weak-teacher", "--json"])
    assert r.exit_code == 0, stderr_of(r)
    assert any("no better than chance" in w for w in json.loads(r.stdout)["warnings"])


def test_a_large_run_file_changed_in_place_is_refused(tmp_path):
    """The manifest's SHA-256 is checked for every file, whatever its size (here graph_ids.npy,
    7,000 x 20 int64: 1.1 MB)."""
    from conftest import run_cli, stderr_of

    csv = _scan_inputs(tmp_path, 7_000)
    run = tmp_path / "run"
    r = run_cli(["scan", "--labels", str(csv), "--pred-probs", str(tmp_path / "p.npy"), "--out", str(run)])
    assert r.exit_code == 0, stderr_of(r)
    ids = np.load(run / "graph_ids.npy")
    assert ids.nbytes > 1 << 20
    np.save(run / "graph_ids.npy", np.random.default_rng(0).permutation(ids))  # same size, other content
    r = run_cli(["refine", str(run)])
    assert r.exit_code == 4, stderr_of(r)
    assert "graph_ids.npy: changed since labelfix wrote it (content differs)" in stderr_of(r)
