"""Shared fixtures: tiny datasets written into pytest's tmp folders, and a CLI runner helper."""

from __future__ import annotations

import os

# One BLAS/OpenMP thread unless the caller says otherwise: the models here are tiny, and on a
# 2-core machine shared with other work, spinning OpenMP threads made the teacher 4x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import inspect
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import labelfix.cli

# Small teacher settings: the CLI has no --width, so CLI runs use the default width with 2 epochs.
# Two epochs on 100-200 digits per fold leave the teacher near chance, which scan now refuses
# (exit 5); these tests are about scan's mechanics, so they write the outputs anyway. The gate
# itself is tested in test_teacher_robust.py, and flag quality in test_demo.py and test_pred_probs.py.
FAST_CLI = ["--epochs", "2", "--folds", "2", "--device", "cpu", "--allow-weak-teacher"]


def make_runner() -> CliRunner:
    """A runner that keeps stderr apart from stdout on every typer/click version."""
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def run_cli(args: list[str], progress: bool = False):
    """The CLI in-process. Progress lines (plain lines: stderr is not a terminal here) are off
    unless `progress`, so tests can assert that an error is the only line on stderr."""
    env = None if progress else {"LABELFIX_PROGRESS": "none"}
    return make_runner().invoke(labelfix.cli.app, [str(a) for a in args], env=env)


def stderr_of(result) -> str:
    try:
        return result.stderr
    except (ValueError, AttributeError):  # old click with mixed streams
        return result.output


def model_outputs(
    folder: Path,
    n: int,
    c: int,
    noise: float,
    seed: int,
    *,
    spread: float = 0.6,
    margin: float = 3.5,
    probs_name: str = "probs.npy",
    path_fmt: str = "img/{}.png",
    label_fmt: str = "c{}",
):
    """A fixed model's out-of-sample probabilities (true class boosted by `margin` over normal
    logits of sd `spread`) and labels with about `noise` of them moved to the next class, written
    to folder/probs_name and folder/labels.csv. Returns (true, given, csv path)."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    given = np.where(rng.random(n) < noise, (true + 1) % c, true)
    logits = rng.normal(0, spread, (n, c))
    logits[np.arange(n), true] += margin
    np.save(folder / probs_name, (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32))
    rows = [(path_fmt.format(i), label_fmt.format(g)) for i, g in enumerate(given)]
    return true, given, write_csv(folder / "labels.csv", ("path", "label"), rows)


def write_csv(path: Path, header: tuple[str, str], rows) -> Path:
    lines = [",".join(header)] + [f"{p},{g}" for p, g in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_tiny_images(root: Path, n_per_class: int = 3, classes=("a", "b"), size: int = 8, seed: int = 0):
    """Random grayscale PNGs; returns [(relative path, label)] in a fixed order."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in classes:
        for i in range(n_per_class):
            name = f"{c}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(root / name)
            rows.append((name, c))
    return rows


@pytest.fixture
def tiny_dataset(tmp_path):
    """(images dir, labels csv, rows) with 2 classes x 3 random 8x8 PNGs."""
    img = tmp_path / "images"
    rows = write_tiny_images(img)
    csv = write_csv(tmp_path / "labels.csv", ("path", "label"), rows)
    return img, csv, rows


@pytest.fixture(scope="session")
def digits200(tmp_path_factory):
    """200 scikit-learn digits as 8x8 PNGs with 20% injected noise: (root, csv, truth, noisy)."""
    from labelfix.commands.demo import write_digits_folder

    root = tmp_path_factory.mktemp("digits200")
    csv, y, noisy = write_digits_folder(root, 0.2, 0, n=200)
    return root, csv, y, noisy


@pytest.fixture(scope="session")
def digits300_scanned(tmp_path_factory):
    """One scan of 300 digits at 30% noise with a small teacher, shared by the refine, distill
    and mutual-guard tests: (root, truth, noisy) with root/"data" and root/"run". Read-only:
    a module copies it (copy_scanned) before writing into it."""
    from labelfix.commands.demo import write_digits_folder
    from labelfix.commands.scan import ScanInputs, scan
    from labelfix.config import ScanConfig, TeacherConfig

    root = tmp_path_factory.mktemp("digits300scan")
    csv, y, noisy = write_digits_folder(root / "data", 0.3, 0, n=300)
    cfg = ScanConfig(seed=0, teacher=TeacherConfig(epochs=15, width=8))
    scan(ScanInputs(images_dir=root / "data" / "images", labels_csv=csv), cfg, root / "run")
    return root, y, noisy


def copy_scanned(scanned, dst: Path) -> Path:
    """A private copy of digits300_scanned's folder (data and run) under `dst`."""
    import shutil

    shutil.copytree(scanned[0], dst)
    return dst
