"""Cross-fitting: a sample's teacher probabilities never depend on its own label."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from labelfix.config import TeacherConfig
from labelfix.models.crossfit import crossfit_linear_head, fold_assignment
from labelfix.models.teacher import train_auto_teacher

SEED = 11
CFG = TeacherConfig(epochs=2, width=8, folds=2)


@pytest.fixture(scope="module")
def digits300():
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.sort(np.random.default_rng(0).permutation(len(d.target))[:300])
    images = (d.images[keep] / 16 * 255).round().astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    return images, d.target[keep].astype(np.int64)


@pytest.fixture(scope="module")
def base_run(digits300):
    images, y = digits300
    return train_auto_teacher(images, y, 10, CFG, SEED, "cpu")


def test_flipping_one_label_leaves_its_own_probs_unchanged(digits300, base_run):
    images, y = digits300
    folds = fold_assignment(len(y), CFG.folds, SEED)
    i = 17
    flipped = y.copy()
    flipped[i] = (y[i] + 3) % 10
    other = train_auto_teacher(images, flipped, 10, CFG, SEED, "cpu")
    same_fold = folds == folds[i]
    # the sample itself, and everything scored by the same fold model, is untouched
    assert np.allclose(other.probs[i], base_run.probs[i], atol=1e-6, rtol=0)
    assert np.allclose(other.probs[same_fold], base_run.probs[same_fold], atol=1e-6, rtol=0)
    # the other fold's model trained on the flipped label, so its held-out rows move somewhere
    diff = np.abs(other.probs[~same_fold] - base_run.probs[~same_fold]).max()
    assert diff > 1e-6, diff


def test_runtime_object_gives_the_same_teacher_as_a_device_string(digits300, base_run):
    """The 0.2 signature (a device string) and a Runtime resolved once by the command agree."""
    from labelfix.runtime import resolve_runtime

    images, y = digits300
    out = train_auto_teacher(images, y, 10, CFG, SEED, runtime=resolve_runtime("cpu", CFG.precision))
    np.testing.assert_array_equal(out.probs, base_run.probs)
    np.testing.assert_array_equal(out.embeddings, base_run.embeddings)


def test_teacher_output_shapes(digits300, base_run):
    _images, y = digits300
    assert base_run.probs.shape == (len(y), 10) and base_run.probs.dtype == np.float32
    assert np.allclose(base_run.probs.sum(1), 1, atol=1e-5)
    assert base_run.embeddings.shape == (len(y), 2 * 4 * CFG.width)
    assert np.allclose(np.linalg.norm(base_run.embeddings, axis=1), 1, atol=1e-5)
    folds = fold_assignment(len(y), CFG.folds, SEED)
    for st in base_run.stats["folds"]:
        assert st["n_scored"] == int((folds == st["fold"]).sum())
        assert st["n_train"] == len(y) - st["n_scored"]
        assert st["epochs"] == 2


def test_fold_assignment_does_not_depend_on_labels():
    assert list(inspect.signature(fold_assignment).parameters) == ["n", "folds", "seed"]
    a = fold_assignment(101, 3, 5)
    assert np.array_equal(a, fold_assignment(101, 3, 5))
    assert sorted(np.bincount(a, minlength=3)) == [33, 34, 34]
    assert not np.array_equal(a, fold_assignment(101, 3, 6))  # the seed does matter
    # each row keeps its fold when rows are only relabelled: the assignment is a pure function
    # of (n, folds, seed); and held-out sets of the linear head follow it for any labels
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 5)).astype(np.float32)
    y1 = rng.integers(0, 3, 60)
    y2 = rng.permutation(y1)
    f = fold_assignment(60, 2, 1)
    _, s1 = crossfit_linear_head(feats, y1, 3, 2, 1, "cpu", epochs=2)
    _, s2 = crossfit_linear_head(feats, y2, 3, 2, 1, "cpu", epochs=2)
    assert (
        [s["n_scored"] for s in s1["folds"]]
        == [s["n_scored"] for s in s2["folds"]]
        == [int((f == k).sum()) for k in range(2)]
    )


def test_linear_head_is_out_of_sample():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 40)
    feats = (np.eye(3)[y] * 2 + rng.normal(size=(120, 3))).astype(np.float32)
    base, _ = crossfit_linear_head(feats, y, 3, 2, 4, "cpu", epochs=5)
    folds = fold_assignment(120, 2, 4)
    i = 50
    flipped = y.copy()
    flipped[i] = (y[i] + 1) % 3
    other, _ = crossfit_linear_head(feats, flipped, 3, 2, 4, "cpu", epochs=5)
    same = folds == folds[i]
    assert np.allclose(other[same], base[same], atol=1e-6, rtol=0)
    assert np.abs(other[~same] - base[~same]).max() > 1e-6
