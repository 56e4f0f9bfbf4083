"""Issue 10: an auto teacher that cannot fail silently.

A stalled fold is detected from its training rows and restarted (or reported); the agreement
test that tells a teacher from chance; learning curves land in summary.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

import labelfix.models.teacher as teacher_mod
from labelfix.commands.demo import write_digits_folder
from labelfix.commands.scan import ScanInputs, scan
from labelfix.config import ScanConfig, TeacherConfig
from labelfix.models.teacher import Recipe, agreement_check, train_auto_teacher


@pytest.fixture(scope="module")
def digits300():
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.sort(np.random.default_rng(0).permutation(len(d.target))[:300])
    return (d.images[keep] / 16 * 255).round().astype(np.uint8)[..., None], d.target[keep].astype(np.int64)


def test_stall_is_detected_and_reported(digits300):
    """lr = 0: the default recipe cannot move; the fold is restarted, the restart (a third of 0)
    cannot either, and both attempts are in the stats with their curves."""
    images, y = digits300
    out = train_auto_teacher(images, y, 10, TeacherConfig(epochs=4, width=8, lr=0.0), 0, "cpu")
    assert out.stats["restarts"] == 2 and out.stats["stalled_folds"] == 2
    for fold in out.stats["folds"]:
        assert fold["restarted"] and fold["stalled"] and fold["recipe"] == "ce-low-lr"
        assert "not clearly above the majority-class share" in fold["restart_reason"]
        first, second = fold["attempts"]
        assert first["recipe"] == "ce-warmup+gce" and first["stalled_at_epoch"] == 4  # 9 steps an epoch: no early check
        assert len(first["curve"]["train_loss"]) == 4 and len(second["curve"]["train_loss"]) == 4
        assert second["stalled_at_epoch"] == 4


def test_restart_recovers_a_stalled_fold(digits300, monkeypatch):
    """A first recipe that cannot learn is replaced by the fallback, which does."""
    images, y = digits300
    monkeypatch.setattr(
        teacher_mod, "recipes", lambda cfg: [Recipe("frozen", "gce", 0.0, 0.25), Recipe("ce", "ce", 0.01, 1.0)]
    )
    out = train_auto_teacher(images, y, 10, TeacherConfig(epochs=8, width=8), 0, "cpu")
    assert out.stats["restarts"] == 2 and out.stats["stalled_folds"] == 0
    for fold in out.stats["folds"]:
        assert fold["restarted"] and not fold["stalled"] and fold["recipe"] == "ce"
        assert fold["attempts"][1]["stalled_at_epoch"] is None
    assert (out.probs.argmax(1) == y).mean() > 0.5


def test_warmup_and_curves(digits300):
    images, y = digits300
    out = train_auto_teacher(images, y, 10, TeacherConfig(epochs=8, width=8), 0, "cpu")
    for fold in out.stats["folds"]:
        (run,) = fold["attempts"]
        curve = run["curve"]
        assert run["recipe"] == "ce-warmup+gce" and run["warmup_epochs"] == 2
        assert curve["loss"] == ["ce"] * 2 + ["gce"] * 6
        assert curve["epoch"] == list(range(1, 9))
        assert len(curve["train_loss"]) == len(curve["train_agreement"]) == len(curve["heldout_agreement"]) == 8
        assert fold["curve_rows"] == 100 and not fold["restarted"]
        # out-of-sample and learned: the last held-out point is far above chance
        assert curve["heldout_agreement"][-1] > 0.3


def test_agreement_check_thresholds():
    rng = np.random.default_rng(0)
    n, c = 400, 10
    true = rng.integers(0, c, n)
    # random labels: a perfect classifier of the images agrees at chance
    labels = rng.integers(0, c, n)
    probs = np.eye(c)[true]
    assert agreement_check(probs, labels, c)["weak"]
    # a working teacher (80% accurate) at 60% symmetric noise: agreement ~ 0.4 * 0.8 + small
    flip = rng.random(n) < 0.6
    given = np.where(flip, (true + rng.integers(1, c, n)) % c, true)
    pred = np.where(rng.random(n) < 0.8, true, rng.integers(0, c, n))
    check = agreement_check(np.eye(c)[pred], given, c)
    assert not check["weak"] and check["testable"] and 0.25 < check["agreement"] < 0.45
    # a teacher that always predicts the largest class is chance by definition
    imbalanced = np.r_[np.zeros(300, int), np.ones(100, int)]
    assert agreement_check(np.eye(2)[np.zeros(400, int)], imbalanced, 2)["weak"]
    # six samples: even full agreement cannot be told from chance, so nothing is called weak
    tiny = agreement_check(np.eye(2)[[0, 1, 0, 1, 0, 1]], np.array([0, 0, 0, 1, 1, 1]), 2)
    assert not tiny["testable"] and not tiny["weak"]


def test_learning_curves_in_summary(tmp_path):
    root = tmp_path / "data"
    csv, _, _ = write_digits_folder(root, 0.2, 0, n=300)
    cfg = ScanConfig(device="cpu", teacher=TeacherConfig(epochs=10, width=8))
    res = scan(ScanInputs(images_dir=root / "images", labels_csv=csv), cfg, tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    for fold in s["teacher"]["folds"]:
        assert fold["recipe"] == "ce-warmup+gce" and fold["restarted"] is False and fold["stalled"] is False
        curve = fold["attempts"][0]["curve"]
        assert len(curve["train_loss"]) == len(curve["heldout_agreement"]) == 10
    assert res.summary["teacher"]["folds"] == s["teacher"]["folds"]


def _probs_run(tmp_path, n=600, c=5, informative=False, seed=0):
    """Labels CSV + (N, C) probabilities that either know the labels or are pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    probs = rng.dirichlet(np.ones(c), n)
    if informative:
        probs[np.arange(n), y] += 2.0
        probs /= probs.sum(1, keepdims=True)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"r{i},{v}\n" for i, v in enumerate(y)))
    np.save(tmp_path / "probs.npy", probs)
    return csv, tmp_path / "probs.npy"


def test_weak_teacher_stops_the_scan_with_exit_5_and_writes_nothing(tmp_path):
    from conftest import run_cli, stderr_of

    csv, probs = _probs_run(tmp_path)
    out = tmp_path / "run"
    res = run_cli(["scan", "--labels", csv, "--pred-probs", probs, "--out", out])
    assert res.exit_code == 5, stderr_of(res)
    err = stderr_of(res).strip()
    assert "not clearly above chance" in err and "--allow-weak-teacher" in err and len(err.splitlines()) == 1
    assert not (out / "scan.parquet").exists() and not (out / "summary.json").exists()


def test_allow_weak_teacher_writes_marked_outputs(tmp_path):
    import json

    from conftest import run_cli, stderr_of

    csv, probs = _probs_run(tmp_path)
    out = tmp_path / "run"
    res = run_cli(["scan", "--labels", csv, "--pred-probs", probs, "--out", out, "--allow-weak-teacher"])
    assert res.exit_code == 0, stderr_of(res)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weak_teacher"] is True and summary["teacher_check"]["weak"] is True
    assert any("--allow-weak-teacher" in w for w in summary["warnings"])


def test_informative_probabilities_pass_the_gate(tmp_path):
    import json

    from conftest import run_cli, stderr_of

    csv, probs = _probs_run(tmp_path, informative=True)
    out = tmp_path / "run"
    res = run_cli(["scan", "--labels", csv, "--pred-probs", probs, "--out", out])
    assert res.exit_code == 0, stderr_of(res)
    assert json.loads((out / "summary.json").read_text())["weak_teacher"] is False


def test_auto_teacher_on_random_labels_exits_5(tmp_path):
    """400 digits with labels drawn at random (the 90%-noise case): the auto teacher cannot
    beat chance, so the scan stops instead of writing flags."""
    from conftest import FAST_CLI, run_cli, stderr_of

    from labelfix.commands.demo import write_digits_folder

    csv, y, noisy = write_digits_folder(tmp_path / "d", 0.9, 0, n=400)
    out = tmp_path / "run"
    fast = [a for a in FAST_CLI if a != "--allow-weak-teacher"]  # FAST_CLI writes weak runs anyway
    res = run_cli(["scan", tmp_path / "d" / "images", "--labels", csv, "--out", out, *fast])
    assert res.exit_code == 5, stderr_of(res)
    assert not (out / "scan.parquet").exists()


def test_informative_embeddings_rescue_uniform_probabilities(tmp_path):
    """Probabilities at chance but embeddings that know the classes: the embedding neighbours'
    labels are a second source, so the gate lets the run through (and the flags are good)."""
    import json

    from conftest import run_cli, stderr_of

    rng = np.random.default_rng(0)
    n, c = 600, 5
    yt = rng.integers(0, c, n)
    y = yt.copy()
    flip = rng.random(n) < 0.2
    y[flip] = (yt[flip] + rng.integers(1, c, flip.sum())) % c
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"r{i},{v}\n" for i, v in enumerate(y)))
    np.save(tmp_path / "probs.npy", np.full((n, c), 1.0 / c))
    centres = rng.normal(0, 4, (c, 16))
    np.save(tmp_path / "emb.npy", (centres[yt] + rng.normal(0, 1, (n, 16))).astype(np.float32))
    out = tmp_path / "run"
    res = run_cli(
        [
            "scan",
            "--labels",
            tmp_path / "labels.csv",
            "--pred-probs",
            tmp_path / "probs.npy",
            "--embeddings",
            tmp_path / "emb.npy",
            "--out",
            out,
        ]
    )
    assert res.exit_code == 0, stderr_of(res)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weak_teacher"] is False and summary["teacher_check"]["embedding_vote"]["weak"] is False
    import pyarrow.parquet as pq

    flags = pq.read_table(out / "scan.parquet").column("is_issue").to_numpy()
    tp = (flags & flip).sum()
    assert 2 * tp / (flags.sum() + flip.sum()) > 0.9
