"""examples/ci/gate.sh, the commands the example GitHub Actions workflow runs, on a tiny set:
passes on the accepted baseline, fails with exit 11 when a change adds wrong labels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import model_outputs, write_csv

EXAMPLES = Path(__file__).parent.parent / "examples" / "ci"
N, C = 300, 3


def _gate(tmp_path, labels, baseline, name):
    env = dict(os.environ, LABELS=str(labels), PRED_PROBS=str(tmp_path / "p.npy"), BASELINE=str(baseline))
    env.update(OUT=str(tmp_path / name), SUMMARY=str(tmp_path / f"{name}.md"), LABELFIX_PROGRESS="none")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # the venv's labelfix
    return subprocess.run(["bash", str(EXAMPLES / "gate.sh")], env=env, capture_output=True, text=True, timeout=300)


def test_the_example_gate(tmp_path):
    assert "bash examples/ci/gate.sh" in (EXAMPLES / "label-quality.yml").read_text()
    true, given, labels = model_outputs(tmp_path, N, C, 0.1, 4, probs_name="p.npy", path_fmt="{}.png", label_fmt="k{}")
    # accept today's issues: the baseline is the scan.parquet of a first run
    first = subprocess.run(
        [str(Path(sys.executable).parent / "labelfix"), "scan", "--labels", labels, "--pred-probs", tmp_path / "p.npy"]
        + ["--out", tmp_path / "accepted"],
        capture_output=True,
        text=True,
        env=dict(os.environ, LABELFIX_PROGRESS="none"),
    )
    assert first.returncode == 0, first.stderr
    baseline = tmp_path / "accepted" / "scan.parquet"
    ok = _gate(tmp_path, labels, baseline, "same")
    assert ok.returncode == 0, ok.stderr
    assert "**0 new**" in (tmp_path / "same.md").read_text() and (tmp_path / "same" / "report.html").is_file()
    # a pull request that breaks three labels
    broken = given.copy()
    rows = np.flatnonzero(given == true)[:3]
    broken[rows] = (broken[rows] + 1) % C
    labels2 = write_csv(
        tmp_path / "labels2.csv", ("path", "label"), [(f"{i}.png", f"k{g}") for i, g in enumerate(broken)]
    )
    bad = _gate(tmp_path, labels2, baseline, "pr")
    assert bad.returncode == 11, bad.stderr
    assert "**3 new**" in (tmp_path / "pr.md").read_text()
