"""refine, distill, predict and bench on tiny real data (digits), with real torch/faiss/Parquet."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import labelfix
import labelfix.cli
from labelfix.commands.distill import DistillConfig, distill, predict
from labelfix.commands.refine import RefineConfig, refine
from labelfix.config import ScanConfig, TeacherConfig
from labelfix.core.metrics import precision_recall_f1


def _cli(args):
    return CliRunner().invoke(labelfix.cli.app, [str(a) for a in args], env={"LABELFIX_PROGRESS": "none"})


@pytest.fixture(scope="module")
def digits_run(digits300_scanned, tmp_path_factory):
    """A scan of 300 digits at 30% noise (small teacher) and its truth: this module's copy."""
    from conftest import copy_scanned

    _, y, noisy = digits300_scanned
    return copy_scanned(digits300_scanned, tmp_path_factory.mktemp("digits") / "d"), y, noisy


def test_refine_outputs(digits_run, tmp_path):
    root, y, noisy = digits_run
    run = root / "run"
    stats = refine(run)
    df = pd.read_parquet(run / "refined.parquet")
    assert len(df) == len(y)
    soft = np.stack(df["soft_label"].to_numpy())
    assert soft.shape == (len(y), 10) and soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-5)
    assert df["ambiguity"].between(0, 1).all()
    assert set(df["action"]) <= {"keep", "relabel", "review"}
    assert (df.loc[df["action"] == "review", "weight"] == 0).all()
    # refined labels beat both sources of evidence, the given labels and the teacher's argmax
    # (issue 10's floor), here with a 5-point margin
    refined = soft.argmax(1)
    teacher = np.stack(pd.read_parquet(run / "scan.parquet")["teacher_probs"].to_numpy()).argmax(1)
    assert (refined == y).mean() > max((noisy == y).mean(), (teacher == y).mean()) + 0.05
    # labels.refined.csv: same rows and columns, labels replaced only on relabel rows
    user = pd.read_csv(root / "data" / "labels.csv", dtype=str)
    out = pd.read_csv(run / "labels.refined.csv", dtype=str)
    assert list(out.columns) == list(user.columns) and list(out["path"]) == list(user["path"])
    changed = out["label"] != user["label"]
    assert set(df.index[changed.to_numpy()]) == set(df.index[df["action"] == "relabel"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["refine"]["counts"] == stats["counts"]
    # --drop-review leaves review rows out
    refine(run, RefineConfig(drop_review=True))
    dropped = pd.read_csv(run / "labels.refined.csv", dtype=str)
    assert len(dropped) == len(user) - int((df["action"] == "review").sum())


def test_refine_run_dir_errors(tmp_path, digits_run):
    r = _cli(["refine", tmp_path / "nope"])
    assert r.exit_code == 4 and "not found" in r.output
    root, _, _ = digits_run
    bad = tmp_path / "bad"
    bad.mkdir()
    summary = json.loads((root / "run" / "summary.json").read_text())
    summary["labelfix_version"] = "9.9.0"
    (bad / "summary.json").write_text(json.dumps(summary))
    r = _cli(["refine", bad])
    assert r.exit_code == 4 and "9.9.0" in r.output and len(r.output.strip().splitlines()) == 1
    summary["labelfix_version"] = labelfix.__version__
    (bad / "summary.json").write_text(json.dumps(summary))
    r = _cli(["refine", bad])  # a summary.json that labelfix did not write there (no manifest)
    assert r.exit_code == 4 and "not written by labelfix" in r.output
    shutil.copy(root / "run" / "summary.json", bad / "summary.json")
    shutil.copy(root / "run" / "labelfix-manifest.json", bad / "labelfix-manifest.json")
    r = _cli(["refine", bad])
    assert r.exit_code == 4 and "scan.parquet" in r.output and len(r.output.strip().splitlines()) == 1


class _InterruptAfter:
    """A Progress whose tasks raise KeyboardInterrupt once `limit` samples have advanced."""

    def __init__(self, limit):
        self.limit, self.seen = limit, 0

    @contextmanager
    def task(self, description, total):
        outer = self

        class T:
            def advance(self, n=1):
                outer.seen += n
                if outer.seen > outer.limit:
                    raise KeyboardInterrupt

        yield T()

    def log(self, message):
        pass


def _guard_passes(monkeypatch):
    """These students train 1-2 epochs (near chance), too few to beat the teacher on held-out rows;
    the tests are about resuming and rounds, so the mutual-round guard is forced to pass
    (tests/test_mutual_guard.py tests the guard itself)."""
    import labelfix.commands.distill as D

    real = D.mutual_guard
    monkeypatch.setattr(D, "mutual_guard", lambda *a: dict(real(*a), passed=True))


def test_distill_resume_predict(digits_run, tmp_path, monkeypatch):
    _guard_passes(monkeypatch)
    root, y, noisy = digits_run
    run = root / "run"
    refine(run)
    cfg = DistillConfig(student="resnet18", epochs=2, batch_size=64, seed=0)
    n_train = int((pd.read_parquet(run / "refined.parquet")["weight"] > 0).sum() * 0.9)
    with pytest.raises(KeyboardInterrupt):  # interrupted during epoch 2
        distill(run, cfg, _InterruptAfter(limit=(3 * n_train) // 2))  # mid-epoch 2, whatever the held-out rounding
    assert (run / "checkpoints" / "student-last.pt").is_file()
    report = distill(run, cfg)
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]  # epoch 1 came from the checkpoint
    for name in ("student.pt", "student.json", "distill.json", "student_embeddings.npy", "student_probs.npy"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["refine"]["mutual_rounds"] is True
    # predict on the training images reproduces the student's own probabilities
    out = predict(root / "data" / "images", run / "student.pt", tmp_path / "pred", root / "data" / "truth.csv")
    pred = pd.read_parquet(tmp_path / "pred" / "predictions.parquet")
    meta = json.loads((run / "student.json").read_text())
    student = np.load(run / "student_probs.npy")
    names = np.array(meta["class_names"])
    assert list(pred["predicted_label"]) == list(names[student.argmax(1)])
    assert out["accuracy"] == pytest.approx(float((names[student.argmax(1)] == y.astype(str)).mean()), abs=1e-4)


def test_distill_errors(digits_run, tmp_path):
    root, _, _ = digits_run
    r = _cli(["distill", root / "run", "--student", "resnet_does_not_exist", "--epochs", "1"])
    assert r.exit_code == 2 and "resnet_does_not_exist" in r.output
    r = _cli(["distill", root / "run", "--augment", "flip", "--epochs", "1"])
    assert r.exit_code == 2 and "--augment" in r.output and "flip" in r.output
    # a --pred-probs run has no images: refine works, distill refuses clearly
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    probs = rng.dirichlet(np.ones(3), len(y)) * 0.3
    probs[np.arange(len(y)), y] += 0.7
    np.save(tmp_path / "p.npy", probs / probs.sum(1, keepdims=True))
    pd.DataFrame({"path": [f"r{i}" for i in range(len(y))], "label": y}).to_csv(tmp_path / "l.csv", index=False)
    r = _cli(
        [
            "scan",
            "--labels",
            tmp_path / "l.csv",
            "--pred-probs",
            tmp_path / "p.npy",
            "--out",
            tmp_path / "run",
            "--json",
        ]
    )
    assert r.exit_code == 0, r.output
    assert _cli(["refine", tmp_path / "run", "--json"]).exit_code == 0
    r = _cli(["distill", tmp_path / "run", "--epochs", "1"])
    assert r.exit_code == 2 and "no images" in r.output


def test_bench_beats_label_agnostic_baseline(tmp_path):
    """A small benchmark: 400 digits, 30% symmetric noise; labelfix vs flagging at random."""
    from sklearn.datasets import load_digits

    from labelfix.commands.bench import bench_images

    d = load_digits()
    idx = np.sort(np.random.default_rng(0).permutation(len(d.target))[:400])
    images = (d.images[idx] / 16 * 255).round().astype(np.uint8)
    y = d.target[idx].astype(np.int64)
    cfg = ScanConfig(seed=0, teacher=TeacherConfig(epochs=20, width=8))
    row = bench_images(images, y, [str(k) for k in range(10)], "symmetric", 0.3, tmp_path, cfg, compare=True)
    truth_rate = row["actual_noise_rate"]
    rng = np.random.default_rng(1)
    truth = rng.random(400) < truth_rate
    random_flags = rng.random(400) < truth_rate  # label-agnostic: independent of the labels
    baseline = precision_recall_f1(random_flags, truth)["f1"]
    assert row["labelfix flags"]["f1"] >= baseline + 0.4
    assert row["refined_accuracy"] > max(row["given_accuracy"], row["teacher_accuracy"]) + 0.05
    assert "cleanlab prune_by_noise_rate" in row["cleanlab"]
    assert (tmp_path / "bench.json").is_file()


def test_train_classifier_on_epoch_and_no_augmentation(monkeypatch):
    """--augment off feeds the images unchanged (two runs whose shifts would differ end
    identical); on_epoch logs merge in."""
    import torch

    import labelfix.models.train as train
    from labelfix.commands.distill import build_student, student_batches, train_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 8, 8, 1), dtype=np.uint8)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 64)]
    shift, pads = train.random_shift, []

    def run(augment, shift_seed):
        # record the pad train_classifier asks for; the shift itself draws from `shift_seed`
        monkeypatch.setattr(
            train,
            "random_shift",
            lambda x, gen, pad: pads.append(pad) or shift(x, torch.Generator().manual_seed(shift_seed), pad),
        )
        torch.manual_seed(0)
        model, size, _ = build_student("resnet18", 4, 8)
        cfg = DistillConfig(epochs=2, batch_size=16, augment=augment, seed=0, precision="fp32")
        logs = train_classifier(
            model,
            student_batches(images, size, "cpu"),
            np.arange(64),
            y,
            np.ones(64, np.float32),
            cfg,
            on_epoch=lambda e, m: {"e": e},
        )
        return logs, [p.detach().clone() for p in model.parameters()]

    logs, a = run("off", 1)
    assert [(log["epoch"], log["e"]) for log in logs] == [(1, 1), (2, 2)]
    _, b = run("off", 2)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert set(pads) == {0}
    pads.clear()
    _, c = run("on", 1)
    assert set(pads) == {1} and not all(torch.equal(p, q) for p, q in zip(a, c))


def test_checkpoint_is_not_resumed_for_other_labels(tmp_path):
    """A finished checkpoint resumes (nothing left to train) only for the same labels; a run on
    other labels with the same row count (distill again after the mutual round) trains afresh."""
    import torch

    from labelfix.commands.distill import build_student, student_batches, train_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (48, 8, 8, 1), dtype=np.uint8)
    cfg = DistillConfig(epochs=1, batch_size=16, augment="off", seed=0, precision="fp32")
    ck = tmp_path / "ck.pt"

    def run(labels):
        torch.manual_seed(0)
        model, size, _ = build_student("resnet18", 4, 8)
        y = np.eye(4, dtype=np.float32)[labels]
        return train_classifier(
            model, student_batches(images, size, "cpu"), np.arange(48), y, np.ones(48, np.float32), cfg, checkpoint=ck
        )

    a = rng.integers(0, 4, 48)
    first = run(a)
    assert run(a) == first  # resumed from the finished checkpoint: the same log, no training
    other = run((a + 1) % 4)
    assert other[0]["loss"] != first[0]["loss"]


def test_distill_rounds_equal_repeated_runs_and_resume(digits_run, tmp_path, monkeypatch, capsys):
    """--rounds 2 trains the same students as running distill twice, and an interrupted
    multi-round run resumes after its last finished round instead of starting over."""
    import shutil
    from dataclasses import replace

    import torch

    import labelfix.commands.distill as D

    _guard_passes(monkeypatch)
    root, _, _ = digits_run
    refine(root / "run")
    runs = {}
    for name in ("rounds", "twice", "resumed"):
        runs[name] = tmp_path / name
        shutil.copytree(root / "run", runs[name], ignore=shutil.ignore_patterns("checkpoints"))
    cfg = DistillConfig(epochs=1, batch_size=32, seed=0, precision="fp32")

    report = distill(runs["rounds"], replace(cfg, rounds=2))
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert json.loads((runs["rounds"] / "distill.json").read_text())["rounds"] == report["rounds"]
    assert not (runs["rounds"] / D.ROUNDS_STATE).exists()
    from labelfix.render import render_distill

    render_distill(report, runs["rounds"])
    out = capsys.readouterr()
    assert "round 1: held-out accuracy" in out.out + out.err
    distill(runs["twice"], cfg)
    distill(runs["twice"], cfg)

    def same(a, b):
        wa, wb = (torch.load(r / "student.pt", weights_only=True) for r in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        sa, sb = (np.stack(pd.read_parquet(r / "refined.parquet")["soft_label"].to_numpy()) for r in (a, b))
        np.testing.assert_array_equal(sa, sb)

    same(runs["rounds"], runs["twice"])

    first = runs["resumed"]
    calls = []
    real = D.distill_round

    def interrupted(*args):
        calls.append(args[-1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(D, "distill_round", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(first, replace(cfg, rounds=2))
    state = json.loads((first / D.ROUNDS_STATE).read_text())
    assert [r["round"] for r in state["rounds"]] == [1]
    calls.clear()
    monkeypatch.setattr(D, "distill_round", lambda *a: calls.append(a[-1]) or real(*a))
    resumed = distill(first, replace(cfg, rounds=2))
    assert calls == ["distill resnet18 round 2/2"]
    assert [r["round"] for r in resumed["rounds"]] == [1, 2] and not (first / D.ROUNDS_STATE).exists()
    same(first, runs["rounds"])
    # a recorded round is not resumed once the labels have moved on (here: round 2 changed them)
    assert state["refined_sha256"] != D.refined_sha(first)
    (first / D.ROUNDS_STATE).write_text(json.dumps(state))
    calls.clear()
    distill(first, replace(cfg, rounds=2))
    assert len(calls) == 2


def test_distill_rounds_flag(digits_run):
    r = _cli(["distill", digits_run[0] / "run", "--rounds", "0"])
    assert r.exit_code == 2 and "--rounds" in r.output and len(r.output.strip().splitlines()) == 1
