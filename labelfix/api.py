"""The Python API on arrays, in the shape cleanlab users know.

    import labelfix
    issues = labelfix.find_label_issues(labels, pred_probs=pred_probs)
    issues[issues.is_label_issue].sort_values("issue_score", ascending=False)

`find_label_issues` and `refine_labels` run the same core as `labelfix scan --pred-probs` and
`labelfix refine` (labelfix.core.issues, labelfix.core.refine) on arrays in memory: on the same
inputs they flag the same rows. Nothing is written and nothing is printed. The file-based
commands are `labelfix.scan`, `labelfix.refine`, `labelfix.distill` and `labelfix.predict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import InputError


@dataclass(frozen=True)
class _Evidence:
    y: np.ndarray
    probs: np.ndarray
    graph: object
    from_probs: bool
    with_features: bool
    source: str


def _check_labels(labels) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise InputError(f"labels: must be a non-empty 1-D array, got shape {y.shape}")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise InputError(f"labels: must be integer class indices 0..C-1 (got dtype {y.dtype})")
    if y.min() < 0:
        raise InputError(f"labels: row {int(np.argmin(y))} is {int(y.min())}; class indices start at 0")
    return y.astype(np.int64)


def _check_matrix(arr, name: str, n: int, cols: int | None = None) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        raise InputError(f"{name}: must be a real-valued numeric array (got dtype {a.dtype})")
    if a.ndim != 2 or a.shape[0] != n or a.shape[1] == 0:
        raise InputError(f"{name}: must have shape ({n}, {cols or 'd'}) to match labels, got {a.shape}")
    if cols is not None and a.shape[1] != cols:
        raise InputError(f"{name}: {a.shape[1]} columns, but labels use {cols} classes")
    a = a.astype(np.float32)
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise InputError(f"{name}: row {int(np.flatnonzero(bad)[0])} has NaN or infinite values")
    return a


def _evidence(labels, pred_probs, features, *, k, num_classes, folds, seed, device) -> _Evidence:
    """Validated arrays and the kNN graph, built exactly as `scan --pred-probs [--embeddings]` does."""
    from labelfix.core.graph import build_knn
    from labelfix.core.issues import feature_space
    from labelfix.runtime import resolve_device

    y = _check_labels(labels)
    if pred_probs is None and features is None:
        raise InputError("give pred_probs (out-of-sample probabilities), features (embeddings), or both")
    if k < 1:
        raise InputError(f"k: must be >= 1 (got {k})")
    device = resolve_device(device)
    feats = None if features is None else _check_matrix(features, "features", len(y))
    if pred_probs is not None:
        from labelfix.files.npy import check_pred_probs

        if isinstance(pred_probs, (list, tuple)):  # several models' probabilities of the same rows: their mean
            if not pred_probs:
                raise InputError("pred_probs: an empty list (give one (N, C) array per model)")
            parts = []
            for i, p in enumerate(pred_probs):  # every model with the first one's columns
                width = num_classes if not parts else parts[0].shape[1]
                m = _check_matrix(p, f"pred_probs[{i}]", len(y), width)
                parts.append(check_pred_probs(m, None, f"pred_probs[{i}]"))
            shapes = {p.shape for p in parts}
            if len(shapes) > 1:
                raise InputError(
                    f"pred_probs: the models' arrays differ in shape ({', '.join(map(str, sorted(shapes)))})"
                )
            from labelfix.core.detect import pool_models

            probs, _ = pool_models(parts, y, seed)
            source = f"pred_probs (pool of {len(parts)} models)"
        else:
            probs = check_pred_probs(_check_matrix(pred_probs, "pred_probs", len(y), num_classes), None, "pred_probs")
            source = "pred_probs"
    else:
        from labelfix.models.crossfit import crossfit_linear_head

        c = int(num_classes or y.max() + 1)
        probs, _ = crossfit_linear_head(feats, y, c, folds, seed, device)
        source = "features (out-of-sample probabilities of a cross-fitted linear head)"
    if y.max() >= probs.shape[1]:
        raise InputError(f"labels: class {int(y.max())} but pred_probs has {probs.shape[1]} columns")
    emb, built_from = feature_space(probs, feats)
    graph = build_knn(emb, k, device)
    return _Evidence(y, probs, graph, built_from == "pred_probs", feats is not None, f"the {source}")


def find_label_issues(
    labels,
    pred_probs=None,
    features=None,
    *,
    k: int = 20,
    gamma: float = 3.0,
    seed: int = 0,
    num_classes: int | None = None,
    folds: int = 5,
    allow_weak_teacher: bool = False,
    device: str = "auto",
) -> pd.DataFrame:
    """Find the rows whose given label is probably wrong.

    Args:
        labels: (N,) integer class indices 0..C-1, the labels you do not fully trust.
        pred_probs: (N, C) out-of-sample predicted probabilities (each row from a model that did
            not train on that row, e.g. K-fold cross-validation), as for cleanlab; or a list of
            such arrays, one per model, combined as `scan --pred-probs A --pred-probs B` does
            (labelfix.core.detect.pool_models).
        features: (N, D) embeddings. With pred_probs they add a neighbour graph that is
            independent evidence; alone, a cross-fitted linear head on them gives the
            probabilities (`folds` folds).
        k, gamma, seed: the neighbour graph's k, its weight exponent, the random seed (as in
            `labelfix scan`).
        allow_weak_teacher: return flags even when the evidence agrees with the labels no better
            than chance (otherwise labelfix.errors.WeakTeacher is raised).

    Returns:
        A DataFrame in row order: `is_label_issue` (bool), `label_score` (P(given label is right),
        high = clean), `issue_score` (P(given label is wrong)), `given_label`, `predicted_label`
        (the most probable other class where flagged, else the given one), `label_quality`.
        `df.attrs["summary"]` holds the estimated noise rate, the weak-teacher check and warnings.
    """
    from labelfix.core.issues import find_issues

    ev = _evidence(labels, pred_probs, features, k=k, num_classes=num_classes, folds=folds, seed=seed, device=device)
    found = find_issues(
        ev.y,
        ev.probs,
        ev.graph,
        graph_from_probs=ev.from_probs,
        source=ev.source,
        with_features=ev.with_features,
        allow_weak=allow_weak_teacher,
        gamma=gamma,
        seed=seed,
    )
    df = pd.DataFrame(
        {
            "is_label_issue": found.flags,
            "label_score": found.clean_prob,
            "issue_score": found.p_wrong.astype(np.float32),
            "given_label": ev.y,
            "predicted_label": found.suggested,
            "label_quality": found.quality,
        }
    )
    df.attrs["summary"] = {
        "estimated_noise_rate": float(found.p_wrong.mean()),
        "flagged_share": float(found.flags.mean()),
        "teacher_check": found.check,
        "warnings": list(found.warnings),
        "detection": found.detection.report(),
    }
    return df


def refine_labels(
    labels,
    pred_probs=None,
    features=None,
    *,
    k: int = 20,
    gamma: float = 3.0,
    seed: int = 0,
    num_classes: int | None = None,
    folds: int = 5,
    rounds: int = 3,
    min_confidence: float = 0.95,
    max_ambiguity: float = 0.5,
    allow_weak_teacher: bool = False,
    device: str = "auto",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Refined labels with an action per row, as `labelfix refine` computes them.

    Same arguments as `find_label_issues`, plus refine's `rounds`, `min_confidence` and
    `max_ambiguity`. Returns (table, soft_labels): the table has `refined_label`, `action`
    ("keep", "relabel" or "review"), `label` (the refined label where relabel, else the given
    one), `ambiguity`, `label_score`, `is_label_issue` and `weight`; soft_labels is (N, C)."""
    from labelfix.core.issues import teacher_gate
    from labelfix.core.refine import WEAK_NO_RELABEL, RefineConfig, refine_arrays

    cfg = RefineConfig(
        rounds=rounds, relabel_min_confidence=min_confidence, relabel_max_ambiguity=max_ambiguity, gamma=gamma
    )
    cfg.validate()
    ev = _evidence(labels, pred_probs, features, k=k, num_classes=num_classes, folds=folds, seed=seed, device=device)
    c = ev.probs.shape[1]
    check, warnings = teacher_gate(
        ev.probs,
        ev.y,
        ev.graph,
        num_classes=c,
        source=ev.source,
        with_features=ev.with_features,
        allow_weak=allow_weak_teacher,
        gamma=gamma,
    )
    if check.get("weak"):  # flags from evidence at chance: nothing is relabelled without a person
        from dataclasses import replace

        cfg = replace(cfg, allow_relabel=False)
        warnings = [*warnings, WEAK_NO_RELABEL]
    res = refine_arrays(
        ev.y, ev.probs, ev.graph.ids, ev.graph.sims, independent_graph=not ev.from_probs, cfg=cfg, seed=seed
    )
    df = pd.DataFrame(
        {
            "given_label": ev.y,
            "refined_label": res.refined,
            "action": res.action,
            "label": res.label,
            "ambiguity": res.ambiguity,
            "label_score": res.clean_prob,
            "is_label_issue": res.flags,
            "weight": res.weight,
        }
    )
    df.attrs["summary"] = {"teacher_check": check, "warnings": warnings, "detection": res.detection.report()}
    return df, res.soft


# ---------------------------------------------------------------------------------------------
# The file-based commands, keyword-only.


def scan(
    images_dir: str | Path | None = None,
    *,
    out: str | Path,
    labels_csv: str | Path | None = None,
    pred_probs: str | Path | list | tuple | None = None,
    embeddings: str | Path | None = None,
    classes: list[str] | None = None,
    path_col: str = "path",
    label_col: str = "label",
    baseline: str | Path | None = None,
    config=None,
    progress=None,
):
    """`labelfix scan` as a function: writes the run folder `out`, returns a ScanResult
    (out_dir, summary, table, baseline diff). `config` is a labelfix.ScanConfig (defaults as the
    CLI's); `baseline` an earlier run folder or its scan.parquet (new, fixed, unchanged issues);
    `pred_probs` one .npy path, or a list of them (one per model, as `--pred-probs` repeated)."""
    from labelfix.commands.scan import ScanInputs
    from labelfix.commands.scan import scan as run_scan
    from labelfix.config import ScanConfig

    def opt(p):
        return None if p is None else Path(p)

    inputs = ScanInputs(
        images_dir=opt(images_dir),
        labels_csv=opt(labels_csv),
        path_col=path_col,
        label_col=label_col,
        classes=classes,
        pred_probs=_prob_paths(pred_probs),
        embeddings=opt(embeddings),
        baseline=opt(baseline),
    )
    return run_scan(inputs, config or ScanConfig(), Path(out), progress)


def _prob_paths(pred_probs):
    """scan's pred_probs: None, one path, or a tuple of paths (a list of one is that path)."""
    if pred_probs is None or isinstance(pred_probs, (str, Path)):
        return None if pred_probs is None else Path(pred_probs)
    paths = tuple(Path(p) for p in pred_probs)
    if not paths:
        raise InputError("pred_probs: an empty list (give one .npy path per model)")
    return paths[0] if len(paths) == 1 else paths


def refine(run_dir: str | Path, *, config=None, mutual: bool = True, progress=None) -> dict:
    """`labelfix refine RUN_DIR` as a function; `config` is a labelfix.RefineConfig."""
    from labelfix.commands.refine import refine as run_refine

    return run_refine(Path(run_dir), config, progress, mutual=mutual)


def distill(run_dir: str | Path, *, config=None, mutual: bool = True, progress=None) -> dict:
    """`labelfix distill RUN_DIR` as a function; `config` is a labelfix.DistillConfig."""
    from labelfix.commands.distill import distill as run_distill

    return run_distill(Path(run_dir), config, progress, mutual_refine=mutual)


def predict(
    images_dir: str | Path,
    *,
    model: str | Path,
    out: str | Path,
    labels_csv: str | Path | None = None,
    path_col: str = "path",
    label_col: str = "label",
    device: str = "auto",
    progress=None,
) -> dict:
    """`labelfix predict` as a function: predictions.parquet in `out` for the student `model`."""
    from labelfix.commands.distill import predict as run_predict

    csv = None if labels_csv is None else Path(labels_csv)
    return run_predict(Path(images_dir), Path(model), Path(out), csv, path_col, label_col, device, progress)
