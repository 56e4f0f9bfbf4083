"""`scan --labels CSV --pred-probs P.npy [--embeddings E.npy]`: no images, no teacher."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, stderr_of, write_csv

from labelfix.core.metrics import precision_recall_f1

N, C, NOISE = 600, 4, 0.2
CLASSES = ["ant", "bee", "cow", "dog"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("synthetic")
    true = rng.integers(0, C, N)
    flip = np.zeros(N, bool)
    flip[rng.permutation(N)[: int(NOISE * N)]] = True
    given = true.copy()
    given[flip] = (true[flip] + rng.integers(1, C, flip.sum())) % C
    logits = rng.normal(0, 0.7, (N, C))
    logits[np.arange(N), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    centres = rng.normal(0, 1, (C, 16)) * 3
    emb = centres[true] + rng.normal(0, 1, (N, 16))
    np.save(d / "probs.npy", probs.astype(np.float32))
    np.save(d / "emb.npy", emb.astype(np.float32))
    csv = write_csv(d / "labels.csv", ("path", "label"), [(f"img/{i}.jpg", CLASSES[g]) for i, g in enumerate(given)])
    return d, csv, true, given, flip


@pytest.mark.parametrize("with_embeddings", [False, True], ids=["probs-only", "with-embeddings"])
def test_pred_probs_flags_flipped_labels(synthetic, tmp_path, with_embeddings):
    d, csv, true, _given, flip = synthetic
    out = tmp_path / "out"
    args = ["scan", "--labels", csv, "--pred-probs", d / "probs.npy", "--out", out, "--json"]
    if with_embeddings:
        args += ["--embeddings", d / "emb.npy"]
    r = run_cli(args)
    assert r.exit_code == 0, (stderr_of(r), r.exception)
    t = pq.read_table(out / "scan.parquet")
    assert t.num_rows == N
    flags = t.column("is_issue").to_numpy(zero_copy_only=False)
    m = precision_recall_f1(flags, flip)
    assert m["f1"] >= 0.9, m
    # flagged rows get the true class back as a suggestion
    sugg = np.array(t.column("suggested_label").to_pylist())
    assert (sugg[flags & flip] == np.array(CLASSES)[true[flags & flip]]).mean() >= 0.95
    s = json.loads(r.stdout)
    assert abs(s["estimated_noise_rate"] - NOISE) < 0.05, s["estimated_noise_rate"]
    assert s["teacher"] == {} and s["images"] is None
    assert len(s["inputs"]["pred_probs_sha256"]) == 64
    assert ("embeddings_sha256" in s["inputs"]) == with_embeddings
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == ((N, 16) if with_embeddings else (N, C))
    ids = np.load(out / "graph_ids.npy")
    assert ids.shape == (N, 20) and not (ids == np.arange(N)[:, None]).any()
    # the given probabilities come back unchanged
    got = np.stack(t.column("teacher_probs").to_numpy(zero_copy_only=False))
    assert np.allclose(got, np.load(d / "probs.npy"), atol=1e-6)


def test_embeddings_with_wrong_rows(synthetic, tmp_path):
    d, csv, *_ = synthetic
    np.save(tmp_path / "short.npy", np.zeros((N - 1, 8), np.float32))
    out = tmp_path / "out"
    r = run_cli(
        ["scan", "--labels", csv, "--pred-probs", d / "probs.npy", "--embeddings", tmp_path / "short.npy", "--out", out]
    )
    assert r.exit_code == 2
    assert "--embeddings" in stderr_of(r) and f"{N - 1} rows" in stderr_of(r)
    assert not out.exists()


def test_shuffled_labels_score_far_lower(synthetic, tmp_path):
    """The same probabilities scored against unrelated labels cannot reproduce the flips."""
    d, csv, _true, _given, flip = synthetic
    probs = np.load(d / "probs.npy")
    rng = np.random.default_rng(1)
    np.save(tmp_path / "shuffled.npy", probs[rng.permutation(N)])
    out = tmp_path / "out"
    r = run_cli(["scan", "--labels", csv, "--pred-probs", tmp_path / "shuffled.npy", "--out", out])
    assert r.exit_code == 5, stderr_of(r)  # probabilities at chance: the weak-teacher gate stops it
    assert not (out / "scan.parquet").exists()
    r = run_cli(
        ["scan", "--labels", csv, "--pred-probs", tmp_path / "shuffled.npy", "--out", out, "--allow-weak-teacher"]
    )
    assert r.exit_code == 0, stderr_of(r)
    flags = pq.read_table(out / "scan.parquet").column("is_issue").to_numpy(zero_copy_only=False)
    assert precision_recall_f1(flags, flip)["f1"] < 0.5


def test_rescan_removes_outputs_of_the_earlier_run(synthetic, tmp_path):
    """A new scan into the same folder leaves no file that describes the earlier run."""
    d, csv, *_ = synthetic
    out = tmp_path / "out"
    r = run_cli(["scan", "--labels", csv, "--pred-probs", d / "probs.npy", "--embeddings", d / "emb.npy", "--out", out])
    assert r.exit_code == 0, stderr_of(r)
    assert run_cli(["refine", out]).exit_code == 0
    assert (out / "refined.parquet").is_file() and (out / "labels.refined.csv").is_file()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "student-last.pt").write_bytes(b"old")
    (out / "notes.txt").write_text("the user's own file")
    r = run_cli(["scan", "--labels", csv, "--pred-probs", d / "probs.npy", "--out", out])
    assert r.exit_code == 0, stderr_of(r)
    for stale in ("refined.parquet", "labels.refined.csv"):
        assert not (out / stale).exists(), stale
    # files labelfix did not write (not in its manifest) stay, whatever their name (issue 11, 5)
    assert (out / "checkpoints" / "student-last.pt").read_bytes() == b"old"
    assert np.load(out / "embeddings.npy").shape == (N, C)  # rewritten by the new run, not removed
    assert (out / "notes.txt").read_text() == "the user's own file"
    # a failing scan into the folder changes nothing
    before = sorted(p.name for p in out.iterdir())
    r = run_cli(["scan", "--labels", csv, "--pred-probs", tmp_path / "missing.npy", "--out", out])
    assert r.exit_code == 2 and sorted(p.name for p in out.iterdir()) == before


def test_refine_replays_scans_pool_fits(synthetic, tmp_path, monkeypatch):
    """refine after scan reuses scan's pool fits (summary.json detection.pool_fits) instead of
    refitting them, and writes what a refit writes."""
    import labelfix
    import labelfix.core.detect as dmod

    d, csv, *_ = synthetic
    monkeypatch.setenv("LABELFIX_PROGRESS", "none")
    runs = [tmp_path / "replayed", tmp_path / "refitted"]
    for run in runs:
        labelfix.scan(out=run, labels_csv=csv, pred_probs=d / "probs.npy", embeddings=d / "emb.npy")
    fits = json.loads((runs[0] / "summary.json").read_text())["detection"]["pool_fits"]
    assert fits["key"]["rows"] == N and len(fits["fits"]) == 4

    calls = []
    real = dmod.fit_pool
    monkeypatch.setattr(dmod, "fit_pool", lambda *a: calls.append(1) or real(*a))
    labelfix.refine(runs[0])
    assert calls == []
    summary = json.loads((runs[1] / "summary.json").read_text())
    summary["detection"]["pool_fits"]["key"]["seed"] = 99  # not this run's: refitted
    (runs[1] / "summary.json").write_text(json.dumps(summary))
    from labelfix.files import rundir

    monkeypatch.setattr(rundir.RunDir, "check_file", lambda self, name, *a: self.path / name)  # the edit above
    labelfix.refine(runs[1])
    assert len(calls) == 4
    for name in ("refined.parquet", "labels.refined.csv", "review.csv"):
        a, b = (r / name for r in runs)
        assert (
            a.read_bytes() == b.read_bytes() if name != "refined.parquet" else pq.read_table(a).equals(pq.read_table(b))
        )
