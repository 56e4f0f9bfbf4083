"""The models layer (issue 11): one training loop for teacher and student, a frozen runtime
resolved once per command, checkpoints that a damaged file cannot block, writes that leave no
temporary file on a full disk, and predict's errors naming what predict has."""

from __future__ import annotations

import ast
import errno
import json
import shutil
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, stderr_of

import labelfix.models.train as train_mod
from labelfix.models.student import DistillConfig, fit_student, student_batches, train_classifier
from labelfix.runtime import Runtime, ensure_runtime, resolve_runtime

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--batch-size", "32", "--device", "cpu", "--precision", "fp32"]


# ---------------------------------------------------------------------------------------------
# Runtime


def test_runtime_is_frozen_and_keys_what_changes_numbers():
    import torch

    rt = resolve_runtime("cpu", "fp32")
    assert rt.device == "cpu" and rt.precision == "fp32" and rt.threads == torch.get_num_threads()
    assert rt.cache_key() == {"device": "cpu", "precision": "fp32", "threads": rt.threads, "torch": torch.__version__}
    with pytest.raises(FrozenInstanceError):
        rt.device = "cuda"
    auto = resolve_runtime("cpu", "auto")
    assert auto.precision in ("fp32", "bf16") and auto.requested_precision == "auto"
    assert auto.precision == ("bf16" if auto.native_bf16 else "fp32")
    assert ensure_runtime(rt, "cpu") is rt and ensure_runtime(rt) is rt
    with pytest.raises(ValueError):
        ensure_runtime(rt, "cuda")


def test_resolve_runtime_sets_the_thread_count():
    import torch

    before = torch.get_num_threads()
    try:
        assert resolve_runtime("cpu", "fp32", threads=2).threads == torch.get_num_threads() == 2
        assert resolve_runtime("cpu", "fp32", threads=1).cache_key()["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_frozen_teachers_stay_float32_on_cpu_when_auto():
    from labelfix.models.pretrained import frozen_runtime

    cpu_auto = Runtime("cpu", "bf16", 1, "x", requested_precision="auto", native_bf16=True)
    assert frozen_runtime(cpu_auto).precision == "fp32"
    assert frozen_runtime(replace(cpu_auto, requested_precision="bf16")).precision == "bf16"
    assert frozen_runtime(replace(cpu_auto, device="cuda")).precision == "bf16"


@pytest.mark.parametrize(
    "kwargs, words",
    [({"device": "tpu"}, "--device"), ({"precision": "fp8"}, "--precision"), ({"threads": 0}, "--threads")],
)
def test_resolve_runtime_errors_name_the_flag(kwargs, words):
    from labelfix.errors import InputError

    with pytest.raises(InputError, match=words):
        resolve_runtime(**kwargs)


# ---------------------------------------------------------------------------------------------
# Layering: sizes and private names


def _my_modules():
    return [
        *sorted((ROOT / "labelfix" / "models").glob("*.py")),
        ROOT / "labelfix" / "runtime.py",
        ROOT / "labelfix" / "commands" / "distill.py",
        ROOT / "labelfix" / "commands" / "predict.py",
    ]


def test_models_layer_module_and_function_sizes():
    for path in _my_modules():
        src = path.read_text()
        assert len(src.splitlines()) <= 400, path
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 80, f"{path.name}: {node.name}"


def test_no_module_imports_another_modules_private_names():
    for path in sorted((ROOT / "labelfix").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labelfix"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.relative_to(ROOT)} imports {private} from {node.module}"


def test_teacher_and_student_train_in_the_one_loop(monkeypatch):
    """Both call labelfix.models.train.fit: the only place in the models layer that steps an
    optimiser over images (the frozen teacher's linear head trains on features in crossfit)."""
    import labelfix.models.student as student_mod
    import labelfix.models.teacher as teacher_mod
    from labelfix.config import TeacherConfig

    calls = []
    real = train_mod.fit

    def spy(model, batches, train_idx, objective, plan, *a, **k):
        calls.append((type(objective).__name__, plan.optimizer))
        return real(model, batches, train_idx, objective, plan, *a, **k)

    monkeypatch.setattr(teacher_mod, "fit", spy)
    monkeypatch.setattr(student_mod, "fit", spy)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 64)
    teacher_mod.train_auto_teacher(
        images, y, 3, TeacherConfig(epochs=1, width=4, curve_rows=0, restart_on_stall=False), 0, "cpu"
    )
    _tiny_student(images, np.eye(3, dtype=np.float32)[y], epochs=1)
    assert calls == [("HardLabelLoss", "adamw")] * 2 + [("SoftTargetLoss", "sgd")]
    for path in _my_modules():
        if path.name not in ("train.py", "crossfit.py"):
            assert ".backward(" not in path.read_text(), path.name


@pytest.mark.parametrize("epochs", [1, 2, 4])
def test_one_cycle_schedule_on_four_steps(epochs):
    """4 optimiser steps in all (20 images, 2 folds, --epochs 4: one step an epoch) made torch's
    OneCycleLR divide by zero; any step count trains."""
    from labelfix.config import TeacherConfig
    from labelfix.models.teacher import train_auto_teacher

    rng = np.random.default_rng(0)
    n = 40 // epochs  # 4 steps in all: n / 2 training rows a fold, batches of 16 or fewer
    images = rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8)
    cfg = TeacherConfig(epochs=epochs, width=4, curve_rows=0, batch_size=max(1, n // 2 // (4 // epochs)))
    out = train_auto_teacher(images, rng.integers(0, 2, n), 2, cfg, 0, "cpu")
    assert np.isfinite(out.probs).all()


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _tiny_student(images, targets, epochs=2, checkpoint=None, runtime=None, **cfg):
    import torch

    from labelfix.models.nets import build_student

    torch.manual_seed(0)
    model, size, _ = build_student("resnet18", targets.shape[1], images.shape[1])
    config = DistillConfig(
        **{"epochs": epochs, "batch_size": 16, "augment": "off", "seed": 0, "precision": "fp32", **cfg}
    )
    rt = runtime or resolve_runtime("cpu", "fp32")
    batches = student_batches(images, size, "cpu")
    n = len(images)
    return fit_student(model, batches, np.arange(n), targets, np.ones(n, np.float32), config, rt, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (48, 8, 8, 1), dtype=np.uint8)
    return images, np.eye(4, dtype=np.float32)[rng.integers(0, 4, 48)]


def _losses(fitted) -> list:
    return [(e["epoch"], e["loss"]) for e in fitted.logs]


def _damage(kind: str, ck: Path, good: bytes):
    import torch

    if kind == "garbage":
        ck.write_bytes(b"not a checkpoint at all")
    elif kind == "truncated":
        ck.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        ck.write_bytes(b"")
    elif kind == "wrong-shapes":  # the right key, a tensor of another shape
        state = torch.load(ck, weights_only=True)
        name = next(iter(state["model"]))
        state["model"][name] = torch.zeros(3)
        torch.save(state, ck)
    elif kind == "epoch-out-of-range":
        state = torch.load(ck, weights_only=True)
        state["epoch"] = 7
        torch.save(state, ck)
    elif kind == "not-a-dict":
        torch.save([1, 2, 3], ck)
    elif kind == "a-folder":
        ck.unlink()
        ck.mkdir()


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated", "empty", "wrong-shapes", "epoch-out-of-range", "not-a-dict", "a-folder"]
)
def test_damaged_checkpoint_is_discarded_with_a_warning(tiny, tmp_path, kind):
    images, targets = tiny
    ck = tmp_path / "checkpoints" / "student-last.pt"
    clean = _tiny_student(images, targets)
    first = _tiny_student(images, targets, epochs=2, checkpoint=ck)
    assert _losses(first) == _losses(clean) and not first.warnings  # checkpointing does not change training
    _damage(kind, ck, ck.read_bytes() if ck.is_file() else b"")
    again = _tiny_student(images, targets, epochs=2, checkpoint=ck)
    word = "keeps no checkpoint" if kind == "a-folder" else "discarded"
    assert len(again.warnings) == 1 and word in again.warnings[0] and str(ck) in again.warnings[0]
    assert again.resumed_epochs == 0
    assert _losses(again) == _losses(clean)  # trained from scratch
    if kind != "a-folder":
        resumed = _tiny_student(images, targets, epochs=2, checkpoint=ck)  # the new one is good
        assert resumed.resumed_epochs == 2 and not resumed.warnings and resumed.logs == again.logs


def test_checkpoint_resumes_only_on_the_same_runtime(tiny, tmp_path):
    images, targets = tiny
    ck = tmp_path / "ck.pt"
    rt = resolve_runtime("cpu", "fp32")
    _tiny_student(images, targets, epochs=1, checkpoint=ck, runtime=rt)
    assert _tiny_student(images, targets, epochs=1, checkpoint=ck, runtime=rt).resumed_epochs == 1
    other = replace(rt, threads=rt.threads + 1)  # the thread count moves float sums: not resumed
    out = _tiny_student(images, targets, epochs=1, checkpoint=ck, runtime=other)
    assert out.resumed_epochs == 0 and not out.warnings


def test_train_classifier_keeps_its_signature(tiny):
    import torch

    from labelfix.models.nets import build_student

    images, targets = tiny
    torch.manual_seed(0)
    model, size, _ = build_student("resnet18", 4, 8)
    cfg = DistillConfig(epochs=1, batch_size=16, augment="off", seed=0, precision="fp32")
    logs = train_classifier(model, student_batches(images, size, "cpu"), np.arange(48), targets, np.ones(48), cfg)
    assert [e["epoch"] for e in logs] == [1] and set(logs[0]) == {"epoch", "loss", "seconds"}


def test_augmentation_off_draws_no_shift(tiny, monkeypatch):
    """--augment off: the loop asks random_shift for pad 0 (identity); on: 1/8 of the side."""
    pads = []
    real = train_mod.random_shift
    monkeypatch.setattr(train_mod, "random_shift", lambda x, gen, pad: pads.append(pad) or real(x, gen, pad))
    images, targets = tiny
    _tiny_student(images, targets, epochs=1)
    assert set(pads) == {0}
    pads.clear()
    _tiny_student(images, targets, epochs=1, augment="on")
    assert set(pads) == {1}


# ---------------------------------------------------------------------------------------------
# distill on a real run: damaged checkpoint, full disk, the runtime resolved once


@pytest.fixture(scope="module")
def refined_run(digits300_scanned, tmp_path_factory):
    from conftest import copy_scanned

    from labelfix.commands.refine import refine

    root = copy_scanned(digits300_scanned, tmp_path_factory.mktemp("models") / "d")
    refine(root / "run")
    return root / "run"


@pytest.fixture
def run(refined_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(refined_run, dst)
    return dst


def _leftovers(run: Path) -> list[str]:
    return sorted(
        p.relative_to(run).as_posix() for p in run.rglob("*") if p.name.endswith(".tmp") or ".staging" in p.name
    )


def test_corrupt_checkpoint_does_not_block_distill(run):
    ck = run / "checkpoints" / "student-last.pt"
    ck.parent.mkdir(parents=True, exist_ok=True)
    ck.write_bytes(b"PK\x03\x04 half a zip")
    r = run_cli(["distill", run, *FAST])
    assert r.exit_code == 0, r.output
    assert "labelfix: warning:" in stderr_of(r) and "student-last.pt" in stderr_of(r) and "discarded" in stderr_of(r)
    report = json.loads((run / "distill.json").read_text())
    assert any("student-last.pt" in w and "discarded" in w for w in report["warnings"])
    assert (run / "student.pt").is_file() and _leftovers(run) == []
    r = run_cli(["distill", run, *FAST])  # the checkpoint it wrote is fine: resumed, no warning
    assert r.exit_code == 0 and "discarded" not in stderr_of(r)


def _fail_torch_save_half_way(monkeypatch):
    """torch.save writes half of what it would, then the disk is full."""
    import io

    import torch

    real = torch.save

    def full_disk(obj, f, *a, **k):
        buf = io.BytesIO()
        real(obj, buf, *a, **k)
        data = buf.getvalue()
        if isinstance(f, (str, Path)):
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)


def test_full_disk_during_distill_is_one_line_and_leaves_no_tmp(run, monkeypatch):
    before = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _fail_torch_save_half_way(monkeypatch)
    r = run_cli(["distill", run, *FAST])
    err = stderr_of(r).strip()
    assert r.exit_code == 2, err  # OutputError: the flag whose folder could not be written
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "Traceback" not in r.output
    assert _leftovers(run) == []
    after = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing half-written


def test_file_size_limit_mid_write_leaves_no_tmp(run):
    """A real write cut off half-way (RLIMIT_FSIZE: the kernel refuses bytes past the limit, as a
    full disk would): the 40+ MB checkpoint cannot be written; no temporary file stays."""
    resource = pytest.importorskip("resource")
    import signal

    from labelfix.commands.distill import distill

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, hard))
    try:
        with pytest.raises(OSError) as info:
            distill(run, DistillConfig(epochs=1, batch_size=32, device="cpu", precision="fp32"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert info.value.errno == errno.EFBIG  # the CLI turns it into one line (tests/test_hostile.py)
    assert _leftovers(run) == [] and not (run / "student.pt").exists()


def test_distill_resolves_no_runtime_when_given_one(run, monkeypatch):
    import labelfix.runtime as runtime_mod
    from labelfix.commands.distill import distill

    rt = resolve_runtime("cpu", "fp32")

    def refuse(*a, **k):
        raise AssertionError("resolved again")

    monkeypatch.setattr(runtime_mod, "resolve_runtime", refuse)
    monkeypatch.setattr(runtime_mod, "resolve_device", refuse)
    monkeypatch.setattr(runtime_mod, "resolve_precision", refuse)
    report = distill(run, DistillConfig(epochs=1, batch_size=32), runtime=rt)
    assert report["device"] == "cpu" and report["precision"] == "fp32"
    assert json.loads((run / "student.json").read_text())["precision"] == "fp32"


# ---------------------------------------------------------------------------------------------
# predict


@pytest.fixture
def student(tmp_path):
    """A random-init student.pt with its student.json, and a folder of two 8x8 images."""
    import torch
    from PIL import Image

    from labelfix.models.nets import build_student

    model, size, stem = build_student("resnet18", 2, 8)
    folder = tmp_path / "student"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "student.pt")
    meta = {
        "arch": "resnet18",
        "num_classes": 2,
        "class_names": ["a", "b"],
        "image_size": 8,
        "channels": 1,
        "input_size": size,
        "stem": stem,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "precision": "fp32",
    }
    (folder / "student.json").write_text(json.dumps(meta))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8), "L").save(images / f"{i}.png")
    return folder / "student.pt", meta, images


def test_predict_runs_and_names_no_flag_it_lacks(student, tmp_path):
    model, meta, images = student
    r = run_cli(["predict", images, "--model", model, "--out", tmp_path / "pred", "--json"])
    assert r.exit_code == 0, stderr_of(r)
    assert json.loads(r.stdout)["images"] == 2
    meta_path = model.with_name("student.json")
    meta_path.write_text(json.dumps(dict(meta, arch="resnet_does_not_exist")))
    r = run_cli(["predict", images, "--model", model, "--out", tmp_path / "pred2"])
    err = stderr_of(r).strip()
    assert r.exit_code == 4 and len(err.splitlines()) == 1, err
    assert "--student" not in err and "student.json" in err and "resnet_does_not_exist" in err


@pytest.mark.parametrize(
    "damage",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"arch": "resnet18"}),
        json.dumps({"arch": 5, "num_classes": 2}),
    ],
)
def test_predict_refuses_a_damaged_student_json_in_one_line(student, tmp_path, damage):
    model, _, images = student
    model.with_name("student.json").write_text(damage)
    r = run_cli(["predict", images, "--model", model, "--out", tmp_path / "pred"])
    err = stderr_of(r).strip()
    assert r.exit_code == 4 and len(err.splitlines()) == 1 and "student.json" in err, err


def test_predict_out_that_is_a_file_fails_before_inference(student, tmp_path):
    model, _, images = student
    (tmp_path / "taken").write_text("mine")
    r = run_cli(["predict", images, "--model", model, "--out", tmp_path / "taken"])
    err = stderr_of(r).strip()
    assert r.exit_code == 2 and len(err.splitlines()) == 1 and "--out" in err, err
    assert (tmp_path / "taken").read_text() == "mine"


def test_runtime_type_is_exported():
    assert Runtime.__dataclass_params__.frozen
