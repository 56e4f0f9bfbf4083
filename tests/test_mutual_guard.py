"""The guard on distill's mutual round: a student worse than the teacher on held-out rows leaves
the teacher-only refined outputs untouched (byte for byte) with a warning; `refine --no-mutual`
ignores the student view; a passing student still runs the mutual round. Real torch, tiny data."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import run_cli, stderr_of

import labelfix.commands.distill as D
from labelfix.commands.distill import DistillConfig, distill, mutual_guard
from labelfix.commands.refine import REFINED_CSV, REFINED_FILE, refine

# An untrained student: one epoch at a learning rate of 1e-9 leaves the random init (chance level).
USELESS = ["--epochs", "1", "--lr", "1e-9", "--batch-size", "32", "--device", "cpu", "--precision", "fp32"]
USELESS_CFG = DistillConfig(epochs=1, lr=1e-9, batch_size=32, device="cpu", precision="fp32", seed=0)


@pytest.fixture(scope="module")
def refined_run(digits300_scanned, tmp_path_factory):
    """A scan of 300 digits at 30% noise (small teacher), refined teacher-only: this module's copy."""
    from conftest import copy_scanned

    root = copy_scanned(digits300_scanned, tmp_path_factory.mktemp("guard") / "d")
    refine(root / "run")
    return root / "run"


@pytest.fixture
def run(refined_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(refined_run, dst)
    return dst


def _bytes(run):
    return {name: (run / name).read_bytes() for name in (REFINED_FILE, REFINED_CSV)}


def _force_pass(monkeypatch):
    real = D.mutual_guard
    monkeypatch.setattr(D, "mutual_guard", lambda *a: dict(real(*a), passed=True))


def test_guard_arithmetic():
    t = np.arange(40) % 10
    # a chance-level student against a good teacher fails
    g = mutual_guard(np.zeros(40, int), t, t)
    assert g["student_accuracy"] == 0.1 and g["teacher_accuracy"] == 1.0 and not g["passed"]
    # equal predictions pass with zero tolerance; a better student passes
    assert mutual_guard(t, t, t)["passed"] and mutual_guard(t, t, t)["tolerance"] == 0.0
    worse_teacher = np.where(np.arange(40) < 10, (t + 1) % 10, t)
    assert mutual_guard(t, worse_teacher, t)["passed"]
    # one row behind on 40: within 2 sqrt(b + c) / n; the tolerance shrinks with the held-out count
    one_wrong = t.copy()
    one_wrong[0] = 9
    g = mutual_guard(one_wrong, t, t)
    assert g["passed"] and g["tolerance"] == pytest.approx(2 / 40, abs=1e-4)
    t400 = np.arange(400) % 10
    s400 = np.where(np.arange(400) < 40, (t400 + 1) % 10, t400)  # 10 points behind on 400 rows
    assert not mutual_guard(s400, t400, t400)["passed"]
    # nothing held out: nothing measured, no mutual round
    g = mutual_guard(np.array([], int), np.array([], int), np.array([], int))
    assert not g["passed"] and g["student_accuracy"] is None


def test_useless_student_leaves_refined_outputs_byte_identical(run):
    before = _bytes(run)
    r = run_cli(["distill", run, *USELESS])
    assert r.exit_code == 0, r.output
    err = stderr_of(r)
    assert "labelfix: warning: mutual round skipped" in err and "below the teacher" in err
    assert _bytes(run) == before
    report = json.loads((run / "distill.json").read_text())
    g = report["mutual_guard"]
    assert not g["passed"] and g["student_accuracy"] < g["teacher_accuracy"] - g["tolerance"]
    assert g["heldout_rows"] == report["heldout_rows"] > 0
    assert g["student_accuracy"] == report["heldout_accuracy_vs_refined"]
    assert "mutual_refine" not in report and report["warnings"] and report["rounds"][0]["mutual_guard"] == g
    summary = json.loads((run / "summary.json").read_text())
    assert summary["refine"]["warnings"] == report["warnings"] and summary["refine"]["mutual_rounds"] is False
    meta = json.loads((run / "student.json").read_text())
    assert meta["mutual_guard"]["passed"] is False and meta["mutual_guard"]["student_probs_sha256"]

    # refine by hand with the failed student view beside it: teacher-only, the same bytes, a warning
    r = run_cli(["refine", run, "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    assert stats["mutual_rounds"] is False and stats["student_view"] == "skipped (guard)"
    assert stats["mutual_guard"]["passed"] is False and "mutual round skipped" in stderr_of(r)
    assert _bytes(run) == before


def test_failed_round_stops_the_rounds(run):
    before = _bytes(run)
    report = distill(run, replace(USELESS_CFG, rounds=3))
    assert [x["round"] for x in report["rounds"]] == [1]
    assert any("stopped after round 1" in w for w in report["warnings"])
    assert not (run / D.ROUNDS_STATE).exists()
    assert _bytes(run) == before


def test_no_mutual_and_passing_student(run, monkeypatch):
    before = _bytes(run)
    _force_pass(monkeypatch)
    report = distill(run, USELESS_CFG)
    assert report["mutual_guard"]["passed"] and "mutual_refine" in report and not report["warnings"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["refine"]["mutual_rounds"] is True and summary["refine"]["student_view"] == "used"
    assert (run / REFINED_FILE).read_bytes() != before[REFINED_FILE]

    # --no-mutual: teacher-only, exactly the refine before distill
    r = run_cli(["refine", run, "--no-mutual", "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    assert stats["mutual_rounds"] is False and stats["student_view"] == "ignored (--no-mutual)"
    assert stats["warnings"] == [] and "warning" not in stderr_of(r)
    assert _bytes(run) == before

    # a plain refine reads the recorded (passing) comparison and runs the mutual rounds again
    assert refine(run)["mutual_rounds"] is True

    # a student view the record does not describe (here: other probabilities) is not used
    probs = np.load(run / "student_probs.npy")
    np.save(run / "student_probs.npy", probs[::-1].copy())
    stats = refine(run)
    assert stats["mutual_rounds"] is False and stats["mutual_guard"] is None
    assert "records no held-out comparison" in stats["warnings"][0]
    assert _bytes(run) == before
