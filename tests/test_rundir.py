"""The run directory (labelfix.files.rundir.RunDir): one staged commit per command, a manifest of
what labelfix wrote, validated loaders. Issue 11 defects 1, 3 and 5, at the CLI where a user meets them."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import model_outputs, run_cli, stderr_of

from labelfix.files.rundir import MANIFEST, PENDING, RunDir

N, C = 240, 3


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A --pred-probs scan and refine (no teacher), copied by each test."""
    d = tmp_path_factory.mktemp("rundir")
    _, _, csv = model_outputs(d, N, C, 0.2, 5, spread=0.7, margin=3, path_fmt="i{}.png", label_fmt="k{}")
    r = run_cli(["scan", "--labels", csv, "--pred-probs", d / "probs.npy", "--out", d / "run"])
    assert r.exit_code == 0, stderr_of(r)
    assert run_cli(["refine", d / "run"]).exit_code == 0
    return d


@pytest.fixture
def run(scanned, tmp_path):
    shutil.copytree(scanned, tmp_path / "d")
    return tmp_path / "d" / "run"


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_lists_every_file_with_its_command(run):
    files = json.loads((run / MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(files) == on_disk
    assert files["scan.parquet"]["command"] == "scan" and files["refined.parquet"]["command"] == "refine"
    assert all(e["size"] == (run / name).stat().st_size for name, e in files.items())


def test_refine_with_a_changed_csv_leaves_the_run_untouched(run):
    """Defect 1: refine failed after writing refined.parquet, leaving the run half updated."""
    csv = run.parent / "labels.csv"
    args = ["scan", "--labels", csv, "--pred-probs", run.parent / "probs.npy", "--out", run]
    assert run_cli(args).exit_code == 0 and run_cli(["refine", run]).exit_code == 0
    before = _snapshot(run)
    text = csv.read_text()
    csv.write_text(text.replace("i0.png", "other.png"))
    r = run_cli(["refine", run])
    assert r.exit_code == 4 and "changed since the scan" in stderr_of(r)
    assert _snapshot(run) == before
    # a label changed, paths the same: labels.refined.csv would have carried a label nothing checked
    head, first, *rest = text.splitlines()
    path, label = first.rsplit(",", 1)
    other = next(line.rsplit(",", 1)[1] for line in rest if line.rsplit(",", 1)[1] != label)
    csv.write_text("\n".join([head, f"{path},{other}", *rest]) + "\n")
    r = run_cli(["refine", run])
    assert r.exit_code == 4 and "changed since the scan" in stderr_of(r) and "SHA-256" in stderr_of(r)
    assert _snapshot(run) == before
    csv.unlink()  # gone: labels.refined.csv cannot be that file relabelled
    r = run_cli(["refine", run])
    assert r.exit_code == 4 and "is gone" in stderr_of(r)
    assert _snapshot(run) == before


CORRUPTIONS = {
    "summary-invalid-json": lambda run: (run / "summary.json").write_text("{not json"),
    "summary-missing-key": lambda run: _rewrite_json(run, "summary.json", lambda s: s.pop("class_names")),
    "scan-truncated": lambda run: _truncate(run / "scan.parquet"),
    "graph-garbage": lambda run: (run / "graph_ids.npy").write_bytes(b"\x93NUMPY garbage" * 10),
    "graph-out-of-range": lambda run: _save_same_size(run / "graph_ids.npy", lambda a: a + 10 * N),
    "graph-wrong-rows": lambda run: _save(run / "graph_sims.npy", np.zeros((N - 1, 20), np.float32)),
    "sims-nan": lambda run: _save_same_size(run / "graph_sims.npy", lambda a: a * np.nan),
    "manifest-invalid": lambda run: (run / MANIFEST).write_text("[]"),
    "scan-deleted": lambda run: (run / "scan.parquet").unlink(),
    "scan-replaced": lambda run: shutil.copy(run / "refined.parquet", run / "scan.parquet"),
}


def _rewrite_json(run, name, edit):
    data = json.loads((run / name).read_text())
    edit(data)
    (run / name).write_text(json.dumps(data))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _save(path, arr):
    np.save(path, arr)


def _save_same_size(path, edit):
    arr = np.load(path)
    np.save(path, edit(arr).astype(arr.dtype))


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_run_files_are_exit_4_naming_the_file(run, case):
    """Defect 3: corrupted run files crashed with a traceback (exit 1)."""
    CORRUPTIONS[case](run)
    r = run_cli(["refine", run])
    err = stderr_of(r).strip()
    assert r.exit_code == 4, (case, err, r.exception)
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(run) in err


def test_a_scan_keeps_files_labelfix_did_not_write(scanned, tmp_path):
    """Defect 5: a folder holding the user's own student.pt and refined.parquet became a run,
    and the second scan deleted them as stale."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "student.pt").write_bytes(b"user model")
    (out / "refined.parquet").write_bytes(b"user table")
    args = ["scan", "--labels", scanned / "labels.csv", "--pred-probs", scanned / "probs.npy", "--out", out]
    for _ in range(2):
        assert run_cli(args).exit_code == 0
    assert (out / "student.pt").read_bytes() == b"user model"
    assert (out / "refined.parquet").read_bytes() == b"user table"
    # and refine refuses to read a file it did not write under one of its names
    r = run_cli(["refine", out])
    assert r.exit_code == 0, stderr_of(r)  # refine writes its own refined.parquet over it...
    assert json.loads((out / MANIFEST).read_text())["files"]["refined.parquet"]["command"] == "refine"


def test_a_new_scan_removes_what_the_earlier_run_wrote(run):
    args = ["scan", "--labels", run.parent / "labels.csv", "--pred-probs", run.parent / "probs.npy", "--out", run]
    assert run_cli(args).exit_code == 0
    assert not (run / "refined.parquet").exists() and not (run / "labels.refined.csv").exists()
    assert "refined.parquet" not in json.loads((run / MANIFEST).read_text())["files"]


def test_an_interrupted_commit_is_refused_until_rerun(run):
    (run / PENDING).write_text("scan\n")
    r = run_cli(["refine", run])
    assert r.exit_code == 4 and "interrupted labelfix scan" in stderr_of(r)
    args = ["scan", "--labels", run.parent / "labels.csv", "--pred-probs", run.parent / "probs.npy", "--out", run]
    assert run_cli(args).exit_code == 0
    assert not (run / PENDING).exists() and run_cli(["refine", run]).exit_code == 0


def test_orphan_staging_of_a_dead_process_is_removed(run):
    """Defect 9 (part): a .staging-* folder left by a SIGKILLed command was never cleaned."""
    dead = 2**22 + 12345  # above the default pid_max: no such process
    orphan = run / f".staging-{dead}-abc"
    (orphan / "cache").mkdir(parents=True)
    (orphan / "scan.parquet").write_bytes(b"half")
    live = run / f".staging-{os.getpid()}-xyz"
    live.mkdir()
    assert run_cli(["refine", run]).exit_code == 0
    assert not orphan.exists() and live.exists()


def test_commit_failure_leaves_the_run_as_it_was(run):
    before = _snapshot(run)
    with pytest.raises(RuntimeError), RunDir(run).commit("refine") as stage:
        (stage / "refined.parquet").write_bytes(b"new")
        raise RuntimeError("disk full")
    assert _snapshot(run) == before
    assert not list(run.glob(".staging-*"))
