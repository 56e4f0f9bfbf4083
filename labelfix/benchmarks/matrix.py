"""The no-images generalisation matrix (issue 10): rows of (probabilities, optional embeddings,
noisy labels, true labels), each run through labelfix's scan + refine exactly as a user would
(Python API, files in a work folder) and through every cleanlab variant on the same inputs.

Row catalogue, command line and tables live in `examples/matrix.py`; this module holds what a
row needs: synthetic sets, subsets, the cleanlab side and the scoring."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labelfix.core.metrics import precision_recall_f1

CLEANLAB_FILTERS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)


@dataclass
class Row:
    """One matrix row. `probs` (N, C) out-of-sample probabilities; `emb` (N, D) or None;
    `noisy` the labels a user would have; `true` the truth for scoring; `info` describes the row
    (noise kind and rate, model, classes, imbalance...) for the tables."""

    name: str
    probs: np.ndarray
    noisy: np.ndarray
    true: np.ndarray
    emb: np.ndarray | None = None
    class_names: list[str] | None = None
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Building rows


def renormalise(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum(1, keepdims=True)
    c = p.shape[1]
    return np.where(s > 0, p / np.maximum(s, 1e-300), 1.0 / c)


def restrict_classes(
    probs: np.ndarray, y_true: np.ndarray, classes: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples whose true class is in `classes`, their probabilities restricted to those columns
    and renormalised, and the true labels re-indexed 0..len(classes)-1. Returns (rows, probs, y)."""
    classes = list(classes)
    rows = np.flatnonzero(np.isin(y_true, classes))
    remap = np.full(probs.shape[1], -1)
    remap[classes] = np.arange(len(classes))
    return rows, renormalise(np.asarray(probs)[rows][:, classes]), remap[np.asarray(y_true)[rows]]


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of about n rows with the class proportions of y."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng([seed, 9091])
    out = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        out.append(rng.choice(idx, max(2, int(round(n * len(idx) / len(y)))), replace=False))
    return np.sort(np.concatenate(out))


def cross_fitted_probe(
    x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, folds: int = 2, c_reg: float = 1.0
) -> np.ndarray:
    """Out-of-sample probabilities of a linear probe (multinomial logistic regression) trained on
    labels `y` (the noisy ones, as a user's model would be) with K-fold cross-fitting: each row's
    probabilities come from the model that did not see it. Columns follow 0..num_classes-1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-12)
    out = np.zeros((len(y), num_classes))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        m = LogisticRegression(C=c_reg, max_iter=300, tol=1e-3)
        m.fit(x[tr], y[tr])
        out[np.ix_(te, m.classes_)] = m.predict_proba(x[te])
    return renormalise(out + 1e-6)


def synthetic_row(
    name: str,
    n: int = 12_000,
    dim: int = 128,
    num_classes: int = 10,
    subclusters: int = 3,
    emb_noise: float = 1.0,
    probe_dim: int = 8,
    probe_noise: float = 1.0,
    probe_from: str = "latent",
    noise: str = "symmetric",
    rate: float = 0.3,
    seed: int = 0,
) -> Row:
    """Clustered embeddings and a weak cross-fitted linear probe's probabilities.

    Each class has a centre drawn from N(0, I_dim) and `subclusters` sub-centres around it
    (offsets N(0, 0.6^2 I)); a sample's latent point is its sub-centre plus a small instance
    offset (N(0, 0.3^2 I)). Embeddings = latent + N(0, emb_noise^2 I): with 128 dims and 10
    classes, emb_noise 2.5 / 3 / 3.5 / 4 give a leave-one-out 10-NN accuracy of about 0.99 /
    0.96 / 0.88 / 0.78. The probe sees a degraded view: `probe_from="latent"`: a random
    projection of the latent point to `probe_dim` dims plus N(0, probe_noise^2) noise
    independent of the embedding noise (so the probabilities can be the stronger signal);
    `probe_from="embeddings"`: the same projection of the embeddings plus noise (probabilities
    strictly weaker than the embeddings). The probe (multinomial logistic regression, 2-fold
    cross-fitting) trains on the noisy labels, as a user's model would.
    Noise: "symmetric", "pair" (k -> k+1) or "random-pair" (a seeded pairing of the classes).
    """
    from labelfix.core.noise import asymmetric_noise, random_pairs, symmetric_noise

    rng = np.random.default_rng([seed, 5150, num_classes, dim])
    c = num_classes
    y = np.repeat(np.arange(c), int(np.ceil(n / c)))[:n]
    y = y[rng.permutation(n)]
    centres = rng.normal(0, 1, (c, dim))
    subs = centres[:, None, :] + 0.6 * rng.normal(0, 1, (c, subclusters, dim))
    sub_of = rng.integers(0, subclusters, n)
    latent = subs[y, sub_of] + 0.3 * rng.normal(0, 1, (n, dim))
    emb = latent + emb_noise * rng.normal(0, 1, (n, dim))
    proj = rng.normal(0, 1, (dim, probe_dim)) / np.sqrt(dim)
    base = latent if probe_from == "latent" else emb
    view = base @ proj + probe_noise * rng.normal(0, 1, (n, probe_dim))
    if noise == "symmetric":
        noisy = symmetric_noise(y, rate, c, seed)
    elif noise == "pair":
        noisy = asymmetric_noise(y, rate, c, seed)
    elif noise == "random-pair":
        noisy = asymmetric_noise(y, rate, c, seed, random_pairs(c, seed))
    else:
        raise ValueError(f"unknown synthetic noise {noise!r}")
    probs = cross_fitted_probe(view, noisy, c, seed)
    info = {
        "group": "synthetic",
        "noise": noise,
        "rate": rate,
        "classes": c,
        "n": n,
        "model": f"probe{probe_dim}d/{probe_from} sigma {probe_noise:g}; emb {dim}d sigma {emb_noise:g}",
    }
    return Row(name, probs.astype(np.float32), noisy, y, emb.astype(np.float32), [f"c{k:02d}" for k in range(c)], info)


def knn_accuracy(emb: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-NN majority vote accuracy of the embeddings against labels `y` (cosine):
    how strong the embedding signal is, for the table."""
    import faiss

    x = np.ascontiguousarray(emb, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, ids = index.search(x, k + 1)
    c = int(y.max()) + 1
    votes = np.zeros((len(y), c))
    nb = ids[:, 1:]
    np.add.at(votes, (np.repeat(np.arange(len(y)), k), y[nb].ravel()), 1.0)
    return float((votes.argmax(1) == y).mean())


# ---------------------------------------------------------------------------------------------
# Running and scoring


def _f(x, nd=4):
    return None if x is None else round(float(x), nd)


def _prf(flags: np.ndarray, truth: np.ndarray) -> dict:
    m = precision_recall_f1(flags, truth)
    return {
        "precision": _f(m["precision"]),
        "recall": _f(m["recall"]),
        "f1": _f(m["f1"]),
        "flagged": int(np.sum(flags)),
    }


def cleanlab_all(y: np.ndarray, probs: np.ndarray, emb: np.ndarray | None, truth: np.ndarray) -> dict:
    """Every cleanlab find_label_issues filter on `probs`, and Datalab's features-only label check
    on `emb` when given; each scored against `truth`. A failing variant is recorded, not raised."""
    out: dict = {}
    try:
        from cleanlab.filter import find_label_issues
    except ImportError as exc:
        return {"cleanlab": {"error": f"cleanlab not importable: {exc}"}}
    for fb in CLEANLAB_FILTERS:
        t = time.perf_counter()
        try:
            flags = find_label_issues(y, probs, filter_by=fb, n_jobs=1)
            out[fb] = dict(_prf(flags, truth), seconds=_f(time.perf_counter() - t, 2))
        except Exception as exc:  # noqa: BLE001 - one variant failing is a recorded outcome
            out[fb] = {"error": f"{type(exc).__name__}: {exc}"[:300], "seconds": _f(time.perf_counter() - t, 2)}
    if emb is not None:
        t = time.perf_counter()
        try:
            from cleanlab import Datalab

            lab = Datalab(data={"label": np.asarray(y)}, label_name="label", verbosity=0)
            lab.find_issues(features=np.asarray(emb, dtype=np.float32), issue_types={"label": {}})
            flags = lab.get_issues("label")["is_label_issue"].to_numpy()
            out["Datalab(features)"] = dict(_prf(flags, truth), seconds=_f(time.perf_counter() - t, 2))
        except Exception as exc:  # noqa: BLE001
            out["Datalab(features)"] = {
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "seconds": _f(time.perf_counter() - t, 2),
            }
    return out


def run_labelfix(row: Row, work: Path, seed: int = 0) -> dict:
    """Write the row as a user's files (labels CSV, probabilities .npy, embeddings .npy), then
    labelfix.commands.scan.scan and labelfix.commands.refine.refine into `work/run`. Returns timings and, on a
    LabelfixError (bad input, a weak-teacher refusal...), the error as an outcome."""
    import pandas as pd

    from labelfix.commands.refine import refine
    from labelfix.commands.scan import ScanInputs, scan
    from labelfix.config import ScanConfig
    from labelfix.errors import LabelfixError

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    c = row.probs.shape[1]
    names = row.class_names or [f"c{k:02d}" for k in range(c)]
    pd.DataFrame({"path": [f"row{i:07d}" for i in range(len(row.noisy))], "label": np.array(names)[row.noisy]}).to_csv(
        work / "labels.csv", index=False
    )
    np.save(work / "probs.npy", np.asarray(row.probs))
    emb_path = None
    if row.emb is not None:
        emb_path = work / "emb.npy"
        np.save(emb_path, np.asarray(row.emb))
    run = work / "run"
    out: dict = {"run": str(run), "class_names": names}
    t = time.perf_counter()
    try:
        scan(
            ScanInputs(
                labels_csv=work / "labels.csv", pred_probs=work / "probs.npy", embeddings=emb_path, classes=names
            ),
            ScanConfig(seed=seed),
            run,
        )
        out["scan_s"] = _f(time.perf_counter() - t, 2)
        t = time.perf_counter()
        refine(run)
        out["refine_s"] = _f(time.perf_counter() - t, 2)
    except LabelfixError as exc:
        out["error"] = {
            "type": type(exc).__name__,
            "exit_code": getattr(exc, "exit_code", None),
            "message": str(exc)[:500],
            "stage": "refine" if "scan_s" in out else "scan",
        }
        out.setdefault("scan_s", _f(time.perf_counter() - t, 2))
    return out


def evaluate_row(row: Row, work: Path, seed: int = 0, with_cleanlab: bool = True) -> dict:
    """Run labelfix and cleanlab on `row` and score both against the truth."""
    import pandas as pd

    from labelfix.files.outputs import list_column

    t_row = time.perf_counter()
    y, true = np.asarray(row.noisy, dtype=np.int64), np.asarray(row.true, dtype=np.int64)
    truth = y != true
    probs = np.asarray(row.probs)
    res: dict = {
        "name": row.name,
        **row.info,
        "n": int(len(y)),
        "classes": int(probs.shape[1]),
        "has_embeddings": row.emb is not None,
        "actual_noise_rate": _f(truth.mean()),
        "given_accuracy": _f((~truth).mean()),
        "teacher_accuracy": _f((probs.argmax(1) == true).mean()),
        "teacher_agreement_with_given": _f((probs.argmax(1) == y).mean()),
    }
    res["floor"] = max(res["given_accuracy"], res["teacher_accuracy"])
    if row.emb is not None:
        res["emb_knn_accuracy"] = _f(knn_accuracy(row.emb, true))
    t = time.perf_counter()
    lf = run_labelfix(row, Path(work), seed)
    res["labelfix_s"] = _f(time.perf_counter() - t, 2)
    res["scan_s"], res["refine_s"] = lf.get("scan_s"), lf.get("refine_s")
    if "error" in lf:
        res["labelfix_error"] = lf["error"]
    run = Path(lf["run"])
    if (run / "scan.parquet").is_file() and lf.get("error", {}).get("stage") != "scan":
        import json

        scan_df = pd.read_parquet(run / "scan.parquet")
        summary = json.loads((run / "summary.json").read_text())
        flags = scan_df["is_issue"].to_numpy().astype(bool)
        res["labelfix"] = _prf(flags, truth)
        if truth.any() and not truth.all():
            from labelfix.core.metrics import auroc

            res["labelfix"]["auroc"] = _f(auroc(scan_df["issue_score"].to_numpy(), truth))
        res["estimated_noise_rate"] = summary.get("estimated_noise_rate")
        res["labelfix_warnings"] = summary.get("warnings", [])
        # the probabilities labelfix read back must be the row's (same inputs for both sides)
        res["labelfix_teacher_accuracy"] = _f((list_column(scan_df, "teacher_probs").argmax(1) == true).mean())
        if (run / "refined.parquet").is_file():
            ref = pd.read_parquet(run / "refined.parquet")
            idx = ref["refined_index"].to_numpy()
            res["refined_argmax_accuracy"] = _f((idx == true).mean())
            index = {n: j for j, n in enumerate(lf["class_names"])}
            csv = pd.read_csv(run / "labels.refined.csv", dtype=str, keep_default_na=False)
            csv_y = np.array([index[v] for v in csv["label"]])
            res["refined_csv_accuracy"] = _f((csv_y == true).mean())
            res["refined_actions"] = {a: int((ref["action"] == a).sum()) for a in ("keep", "relabel", "review")}
            res["refined_argmax_ok"] = bool(res["refined_argmax_accuracy"] >= res["floor"])
            res["refined_csv_ok"] = bool(res["refined_csv_accuracy"] >= res["floor"])
    if with_cleanlab:
        t = time.perf_counter()
        res["cleanlab"] = cleanlab_all(y, probs, row.emb, truth)
        res["cleanlab_s"] = _f(time.perf_counter() - t, 2)
        scored = {k: v for k, v in res["cleanlab"].items() if v.get("f1") is not None}
        if scored:
            best = max(scored, key=lambda k: (scored[k]["f1"], k))
            res["best_cleanlab"], res["best_cleanlab_f1"] = best, scored[best]["f1"]
        lf_f1 = res.get("labelfix", {}).get("f1")
        if truth.any() and lf_f1 is not None and res.get("best_cleanlab_f1"):
            res["ratio"] = _f(lf_f1 / res["best_cleanlab_f1"], 3)
        else:
            res["ratio"] = None  # no wrong labels (F1 undefined), a labelfix error, or no cleanlab result
        if scored:
            res["cleanlab_min_flagged"] = min(v["flagged"] for v in scored.values())
    res["row_s"] = _f(time.perf_counter() - t_row, 1)
    return res


def safe_evaluate(build, name: str, work: Path, seed: int = 0) -> dict:
    """Build a row with `build()` and evaluate it; anything unexpected becomes a recorded crash."""
    t = time.perf_counter()
    try:
        row = build()
        t_build = time.perf_counter() - t
        res = evaluate_row(row, work, seed)
        res["build_s"] = _f(t_build, 2)
        return res
    except Exception as exc:  # noqa: BLE001 - the matrix records a crashed row and goes on
        return {
            "name": name,
            "crash": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-2000:],
            "row_s": _f(time.perf_counter() - t, 1),
        }


# ---------------------------------------------------------------------------------------------
# CIFAR-10 rows from the published out-of-sample probabilities (no images)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MODELS = {"r18": "resnet18", "eb1": "efficientnet_b1", "r50": "resnet50d", "twins": "twins", "swin": "swin"}


def cifar_row(
    data: Path,
    name: str,
    model: str,
    noise: str = "given",
    rate: float = 0.0,
    n: int | None = None,
    seed: int = 0,
    classes: list[int] | None = None,
    imbalance: float | None = None,
    max_per_class: int = 2500,
    confusion_model: str | None = None,
) -> Row:
    """A row from `data/cifar10s-pred-probs`. `noise="given"`: the published noisy labels (all
    50,000 rows unless n). Otherwise NEW noise is injected from the true labels into a subset,
    the model's probabilities kept as fixed evidence: "symmetric", "pair" (k -> k+1),
    "random-pair" (a seeded pairing), "human" (flips drawn from `confusion_model`'s confusion
    matrix P(pred | true), off-diagonal renormalised). `classes`: keep samples whose true class is
    listed, probabilities restricted to those columns and renormalised. `imbalance`: a
    long-tailed subset, class sizes decaying geometrically from `max_per_class` by that factor;
    else `n`: a stratified subset."""
    from labelfix.core.noise import (
        asymmetric_noise,
        confusion_from_probs,
        confusion_noise,
        long_tail_indices,
        random_pairs,
        symmetric_noise,
    )

    d = Path(data) / "cifar10s-pred-probs"
    probs = np.load(d / f"pred_probs_{CIFAR_MODELS.get(model, model)}.npy")
    true = np.load(d / "true_labels.npy").astype(np.int64)
    given = np.load(d / "noisy_labels.npy").astype(np.int64)
    names = list(CIFAR10_CLASSES)
    other = (
        None
        if confusion_model is None
        else np.load(d / f"pred_probs_{CIFAR_MODELS.get(confusion_model, confusion_model)}.npy")
    )
    if classes is not None:
        if noise == "given":
            raise ValueError("a class subset needs re-injected noise (the given noisy labels leave the subset)")
        rows, probs, true = restrict_classes(probs, true, classes)
        if other is not None:
            other = renormalise(other[rows][:, classes])
        names = [CIFAR10_CLASSES[k] for k in classes]
    c = probs.shape[1]
    if imbalance is not None:
        keep = long_tail_indices(true, imbalance, max_per_class, seed)
    elif n is not None:
        keep = stratified_subset(true, n, seed)
    else:
        keep = np.arange(len(true))
    if noise == "given":
        noisy = given[keep]
    elif noise == "symmetric":
        noisy = symmetric_noise(true[keep], rate, c, seed)
    elif noise == "pair":
        noisy = asymmetric_noise(true[keep], rate, c, seed)
    elif noise == "random-pair":
        noisy = asymmetric_noise(true[keep], rate, c, seed, random_pairs(c, seed))
    elif noise == "human":
        if other is None:
            raise ValueError("human-like noise needs confusion_model")
        noisy = confusion_noise(true[keep], rate, confusion_from_probs(other, true, c), seed)
    else:
        raise ValueError(f"unknown noise {noise!r}")
    info = {
        "group": "cifar-given" if noise == "given" else "cifar",
        "noise": noise if confusion_model is None else f"human({confusion_model})",
        "rate": None if noise == "given" else rate,
        "model": model,
        "imbalance": imbalance,
        "class_subset": None if classes is None else [CIFAR10_CLASSES[k] for k in classes],
    }
    return Row(name, renormalise(probs[keep]).astype(np.float32), noisy, true[keep], None, names, info)
