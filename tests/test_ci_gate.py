"""What CI users expect (issue 12): the baseline gate, --strict, --summary-md, the report
command, --version, env, exit codes in --help, --skip-unreadable, and progress lines when stderr
is redirected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_CLI, model_outputs, run_cli, stderr_of, write_csv

N, C = 400, 4


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory):
    """One fixed model's probabilities, labels with 15% wrong, and the baseline scan."""
    d = tmp_path_factory.mktemp("gate")
    true, given, _ = model_outputs(d, N, C, 0.15, 21)
    r = run_cli(["scan", "--labels", d / "labels.csv", "--pred-probs", d / "probs.npy", "--out", d / "base"])
    assert r.exit_code == 0, stderr_of(r)
    five = np.flatnonzero(given == true)[:5]
    g = given.copy()
    g[five] = (g[five] + 2) % C
    write_csv(d / "labels5.csv", ("path", "label"), [(f"img/{i}.png", f"c{v}") for i, v in enumerate(g)])
    return d, five


def _gate(d, tmp_path, allowed):
    md = tmp_path / "summary.md"
    args = ["scan", "--labels", d / "labels5.csv", "--pred-probs", d / "probs.npy", "--out", tmp_path / "run"]
    args += ["--baseline", d / "base", "--fail-on-new", str(allowed), "--summary-md", md]
    return run_cli(args), md


def test_fail_on_new_trips_on_five_new_wrong_labels(gate_run, tmp_path):
    d, five = gate_run
    r, md = _gate(d, tmp_path, 4)
    assert r.exit_code == 11, stderr_of(r)
    assert "5 new issues" in stderr_of(r) and len(stderr_of(r).strip().splitlines()) == 1
    text = md.read_text()
    assert "**5 new**" in text and all(f"`img/{i}.png`" in text for i in five)
    assert (tmp_path / "run" / "scan.parquet").is_file()  # outputs are written, then the gate trips
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["baseline"]["new_issues"] == 5


def test_every_tripped_gate_prints_its_line(gate_run, tmp_path):
    """--fail-above and --fail-on-new both tripped: two lines, the exit code of the first (10)."""
    d, _ = gate_run
    md = tmp_path / "summary.md"
    args = ["scan", "--labels", d / "labels5.csv", "--pred-probs", d / "probs.npy", "--out", tmp_path / "run"]
    r = run_cli(args + ["--baseline", d / "base", "--fail-on-new", "0", "--fail-above", "0.01", "--summary-md", md])
    lines = stderr_of(r).strip().splitlines()
    assert r.exit_code == 10 and len(lines) == 2, stderr_of(r)
    assert "--fail-above 0.01" in lines[0] and "5 new issues" in lines[1]


def test_fail_on_new_passes_at_the_limit(gate_run, tmp_path):
    d, _ = gate_run
    r, md = _gate(d, tmp_path, 5)
    assert r.exit_code == 0, stderr_of(r)
    assert "**5 new**" in md.read_text()


def test_fail_on_new_needs_a_baseline(gate_run, tmp_path):
    d, _ = gate_run
    r = run_cli(
        ["scan", "--labels", d / "labels.csv", "--pred-probs", d / "probs.npy", "--out", tmp_path / "r"]
        + ["--fail-on-new", "0"]
    )
    assert r.exit_code == 2 and "--baseline" in stderr_of(r) and not (tmp_path / "r").exists()


def test_strict_turns_warnings_into_exit_12(gate_run, tmp_path):
    d, _ = gate_run
    shuffled = np.load(d / "probs.npy")[np.random.default_rng(0).permutation(N)]
    np.save(tmp_path / "chance.npy", shuffled)
    base = ["scan", "--labels", d / "labels.csv", "--pred-probs", tmp_path / "chance.npy", "--allow-weak-teacher"]
    assert run_cli(base + ["--out", tmp_path / "a"]).exit_code == 0
    r = run_cli(base + ["--out", tmp_path / "b", "--strict"])
    assert r.exit_code == 12 and "--strict" in stderr_of(r)
    good = ["scan", "--labels", d / "labels.csv", "--pred-probs", d / "probs.npy", "--out", tmp_path / "c", "--strict"]
    assert run_cli(good).exit_code == 0


def test_report_command_and_scan_report(gate_run, tmp_path):
    d, _ = gate_run
    r = run_cli(
        ["scan", "--labels", d / "labels.csv", "--pred-probs", d / "probs.npy", "--out", tmp_path / "run", "--report"]
    )
    assert r.exit_code == 0 and (tmp_path / "run" / "report.html").is_file()
    assert "report.html" in r.stdout.strip().splitlines()[-1]  # the last line says what to open
    # a new scan into the folder removes the report of the earlier run with its other files
    r = run_cli(["scan", "--labels", d / "labels.csv", "--pred-probs", d / "probs.npy", "--out", tmp_path / "run"])
    assert r.exit_code == 0 and not (tmp_path / "run" / "report.html").exists()
    r = run_cli(["report", tmp_path / "run", "--out", tmp_path / "r.html"])
    assert r.exit_code == 0 and (tmp_path / "r.html").stat().st_size > 1000
    r = run_cli(["report", tmp_path / "nope"])
    assert r.exit_code == 4 and len(stderr_of(r).strip().splitlines()) == 1


def test_version_env_and_exit_codes_in_help():
    import labelfix

    r = run_cli(["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"labelfix {labelfix.__version__}"
    r = run_cli(["env", "--json"])
    info = json.loads(r.stdout)
    assert info["versions"]["labelfix"] == labelfix.__version__ and info["versions"]["torch"]
    assert "faiss_gpus" in info["hardware"] and info["hardware"]["cpu_count"] >= 1
    text = run_cli(["--help"]).stdout
    assert "Exit codes" in text and "11" in text and "12" in text


def test_summary_records_library_versions(gate_run):
    d, _ = gate_run
    s = json.loads((d / "base" / "summary.json").read_text())
    assert s["versions"]["numpy"] and s["versions"]["faiss"] and s["threads"] >= 1


def test_skip_unreadable_leaves_corrupt_images_out(tiny_dataset, tmp_path):
    root, csv, _ = tiny_dataset
    victim = sorted(root.rglob("*.png"))[0]
    victim.write_bytes(b"not an image")
    out = tmp_path / "run"
    r = run_cli(["scan", root, "--labels", csv, "--out", out, *FAST_CLI])
    assert r.exit_code == 2 and victim.name in stderr_of(r)
    r = run_cli(["scan", root, "--labels", csv, "--out", out, "--skip-unreadable", *FAST_CLI])
    assert r.exit_code == 0, stderr_of(r)
    s = json.loads((out / "summary.json").read_text())
    assert [x["path"] for x in s["skipped_unreadable"]] == [str(victim.relative_to(root))]
    # refine runs on it, and the skipped row stays in labels.refined.csv as it was
    r = run_cli(["refine", out])
    assert r.exit_code == 0, stderr_of(r)
    refined = (out / "labels.refined.csv").read_text()
    assert refined.count("\n") == csv.read_text().count("\n") and victim.name in refined


def test_progress_lines_when_stderr_is_redirected(digits200, tmp_path):
    """`labelfix scan ... 2> log` prints plain progress lines while the teacher trains."""
    root, csv = digits200[0] / "images", digits200[1]
    log = tmp_path / "log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LABELFIX_PROGRESS", None)
    cmd = [sys.executable, "-m", "labelfix.cli", "scan", str(root), "--labels", str(csv), "--out", str(tmp_path / "r")]
    with open(log, "w") as err:
        p = subprocess.run(cmd + [str(a) for a in FAST_CLI], stderr=err, stdout=subprocess.PIPE, env=env, timeout=600)
    text = log.read_text()
    assert p.returncode == 0, text
    assert "labelfix: decode images: started" in text and "teacher" in text and "done in" in text
