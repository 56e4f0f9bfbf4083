"""The only module that knows the order of the stages."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labelfix import __version__
from labelfix.config import ScanConfig
from labelfix.errors import InputError, WeakTeacher
from labelfix.files.inputs import (
    LabelSet,
    check_pred_probs,
    decode_images,
    load_npy,
    read_image_folder,
    read_labels_csv,
    resolve_paths,
    sha256_file,
    sha256_json,
)
from labelfix.files.outputs import atomic_save_npy, atomic_write_json, staged_run, write_parquet
from labelfix.progress import NullProgress, Progress

SCAN_FILE = "scan.parquet"
SUMMARY_FILE = "summary.json"
GRAPH_IDS = "graph_ids.npy"
GRAPH_SIMS = "graph_sims.npy"
EMBEDDINGS_FILE = "embeddings.npy"
# What later steps wrote into a run directory; a new scan makes it stale (removed on success).
DOWNSTREAM = (
    EMBEDDINGS_FILE,
    "refined.parquet",
    "labels.refined.csv",
    "student_embeddings.npy",
    "student_probs.npy",
    "student.pt",
    "student.json",
    "distill.json",
    "checkpoints/student-last.pt",
)


@dataclass(frozen=True)
class ScanInputs:
    """What the user pointed scan at. Either `images_dir`, or `labels_csv` with `pred_probs`."""

    images_dir: Path | None = None
    labels_csv: Path | None = None
    path_col: str = "path"
    label_col: str = "label"
    classes: list[str] | None = None
    pred_probs: Path | None = None
    embeddings: Path | None = None


@dataclass
class ScanResult:
    out_dir: Path
    summary: dict
    table: dict = field(repr=False)


class _Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = round(timer.times.get(name, 0.0) + time.perf_counter() - self.t, 3)

        return _T()


def _posterior_matrix(y: np.ndarray, posterior: np.ndarray, c: int) -> np.ndarray:
    """(C, C) mean of P(true class | x, given) over the rows given each class."""
    sums = np.zeros((c, c))
    np.add.at(sums, y, posterior)
    total = np.bincount(y, minlength=c).astype(np.float64)[:, None]
    return np.divide(sums, total, out=np.zeros_like(sums), where=total > 0)


def load_labels(inputs: ScanInputs) -> LabelSet:
    if inputs.labels_csv is not None:
        return read_labels_csv(inputs.labels_csv, inputs.path_col, inputs.label_col, inputs.classes)
    if inputs.images_dir is None:
        raise InputError("give IMAGES_DIR, or --labels CSV with --pred-probs")
    if not Path(inputs.images_dir).is_dir():
        raise InputError(f"{inputs.images_dir}: images folder not found")
    return read_image_folder(inputs.images_dir, inputs.classes)


def scan(inputs: ScanInputs, cfg: ScanConfig, out: Path, progress: Progress | None = None) -> ScanResult:
    """Embed (or read model outputs), build the kNN graph, estimate noise, flag issues.

    Writes `scan.parquet`, `summary.json`, the graph and the embedding cache into `out`,
    all or nothing.
    """
    from labelfix.core.detect import detect
    from labelfix.core.graph import build_knn
    from labelfix.core.scoring import alternative_label, label_quality
    from labelfix.core.selection import confident_joint, per_sample_loss, small_loss_mask
    from labelfix.models.teacher import TeacherOutput, agreement_check, run_teacher, weak_teacher_message
    from labelfix.runtime import resolve_device, resolve_precision, seed_everything

    progress = progress or NullProgress()
    cfg.validate()
    if inputs.pred_probs is None and inputs.embeddings is not None:
        raise InputError("--embeddings needs --pred-probs (or leave both out to use a teacher)")
    if inputs.pred_probs is not None and inputs.labels_csv is None:
        raise InputError("--pred-probs needs --labels CSV (its rows follow the CSV's rows)")
    if inputs.pred_probs is None and inputs.images_dir is None:
        raise InputError("give IMAGES_DIR (the folder the CSV's paths are relative to), or --pred-probs")
    if inputs.pred_probs is None:
        from labelfix.models.teacher import validate_teacher

        validate_teacher(cfg.teacher)
    timer = _Timer()
    out = Path(out)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    with timer("read inputs"):
        labels = load_labels(inputs)
    c = len(labels.class_names)
    y = labels.y
    hashes = {"labels_sha256": labels.labels_sha256}
    csv_name = str(inputs.labels_csv or inputs.images_dir)
    teacher_stats: dict = {}
    image_info = None
    inputs_used = (inputs.labels_csv, inputs.pred_probs, inputs.embeddings)
    with staged_run(out, stale=DOWNSTREAM, protect=inputs_used) as stage:
        if inputs.pred_probs is not None:
            with timer("read inputs"):
                probs = check_pred_probs(load_npy(inputs.pred_probs, "--pred-probs", labels.n, c), inputs.pred_probs)
                hashes["pred_probs_sha256"] = sha256_file(inputs.pred_probs)
                if inputs.embeddings is not None:
                    emb = load_npy(inputs.embeddings, "--embeddings", labels.n)
                    hashes["embeddings_sha256"] = sha256_file(inputs.embeddings)
                    source = "embeddings"
                else:
                    emb = np.sqrt(probs)  # Hellinger geometry on the given probabilities
                    source = "pred_probs"
                emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
                teacher = TeacherOutput(probs, emb.astype(np.float32), {"source": source})
                if inputs.images_dir is not None:
                    resolve_paths(inputs.images_dir, labels, csv_name)
        else:
            with timer("decode images"):
                files = resolve_paths(inputs.images_dir, labels, csv_name)
                tmp_img = stage / "cache" / "images.u8.partial"
                arr = decode_images(files, tmp_img, cfg.teacher.image_size, csv_name, progress)
                img_name = f"images-{arr.images_sha256[:16]}-{arr.shape[1]}x{arr.shape[2]}x{arr.shape[3]}.u8"
                tmp_img.rename(stage / "cache" / img_name)
                hashes["images_sha256"] = arr.images_sha256
                image_info = {"cache": f"cache/{img_name}", "shape": list(arr.shape)}
                images = np.memmap(stage / "cache" / img_name, dtype=np.uint8, mode="r", shape=arr.shape)
            key = sha256_json(
                {
                    "v": __version__,
                    "images": arr.images_sha256,
                    "shape": arr.shape,
                    "y": hashlib.sha256(y.tobytes()).hexdigest(),
                    "teacher": cfg.teacher.__dict__,
                    "seed": cfg.seed,
                    # outputs differ by device and precision: a folder moved to another host recomputes
                    "device": device,
                    "precision": resolve_precision(device, cfg.teacher.precision),
                }
            )[:20]
            cache_dir = out / "cache" / f"teacher-{key}"
            if all((cache_dir / f).is_file() for f in ("probs.npy", EMBEDDINGS_FILE, "stats.json")):
                teacher = TeacherOutput(
                    np.load(cache_dir / "probs.npy"),
                    np.load(cache_dir / EMBEDDINGS_FILE),
                    json.loads((cache_dir / "stats.json").read_text()),
                )
                teacher.stats["cache_hit"] = True
            else:
                with timer("teacher"):
                    teacher = run_teacher(images, y, c, cfg.teacher, cfg.seed, device, progress)
                staged = stage / "cache" / f"teacher-{key}"
                atomic_save_npy(staged / "probs.npy", teacher.probs)
                atomic_save_npy(staged / EMBEDDINGS_FILE, teacher.embeddings)
                atomic_write_json(staged / "stats.json", teacher.stats)
                teacher.stats["cache_hit"] = False
            teacher_stats = dict(teacher.stats, cache=f"cache/teacher-{key}")
            del images

        probs, emb = teacher.probs, teacher.embeddings
        with timer("graph"):
            if inputs.pred_probs is None and cfg.teacher.teacher == "auto":
                from labelfix.core.graph import build_knn_out_of_fold
                from labelfix.models.teacher import fold_assignment

                # the auto teacher's features are trained on half the labels: link rows only in
                # the space of the fold model that never saw them (graph.build_knn_out_of_fold)
                graph = build_knn_out_of_fold(
                    emb, fold_assignment(len(y), cfg.teacher.folds, cfg.seed), cfg.k, device, progress=progress
                )
            else:
                graph = build_knn(emb, cfg.k, device, progress=progress)
        # The weak-teacher gate, for every source of probabilities: flags from evidence that agrees
        # with the given labels no better than chance would be noise. With --embeddings the
        # graph's vote of the neighbours' labels is a second, independent source: the run is weak
        # only when both are (uniform probabilities with informative embeddings are a good run).
        warnings = []
        check = agreement_check(probs, y, c)
        source = (
            "the --pred-probs probabilities"
            if inputs.pred_probs is not None
            else "the auto teacher's out-of-sample probabilities"
            if cfg.teacher.teacher == "auto"
            else f"the --teacher {cfg.teacher.teacher} probabilities"
        )
        if inputs.embeddings is not None:
            from labelfix.core.detect import neighbour_vote

            vote = agreement_check(neighbour_vote(graph.ids, graph.sims, y, c, np.ones(len(y)), cfg.gamma), y, c)
            check = dict(check, embedding_vote=vote, weak=bool(check["weak"] and vote["weak"]))
            source += " and the --embeddings neighbours' labels"
        if check["weak"]:
            if not cfg.allow_weak_teacher:
                raise WeakTeacher(weak_teacher_message(check, source))
            warnings.append(weak_teacher_message(check, source, allowed=True))
        elif not check["testable"]:
            warnings.append(
                f"with {check['samples']} samples no teacher can be told apart from chance ({check['chance']:.1%}): "
                "the weak-teacher check was skipped; flags are unreliable"
            )
        for fold in teacher_stats.get("folds", []):
            if fold.get("stalled"):
                warnings.append(
                    f"teacher fold {fold['fold'] + 1} stalled (its training agreement with its labels stayed near the "
                    "majority-class share): see teacher.folds in summary.json"
                )
        with timer("selection"):
            noise = confident_joint(probs, y)
            small = small_loss_mask(per_sample_loss(probs, y), y, noise.rates)
        with timer("detection"):
            # A graph built from the given probabilities themselves only smooths them; one from
            # embeddings is independent evidence (detect.detect's docstring has the measurements).
            graph_from_probs = teacher.stats.get("source") == "pred_probs"
            det = detect(probs, y, graph.ids, graph.sims, not graph_from_probs, gamma=cfg.gamma, seed=cfg.seed)
            clean = (1.0 - det.p_wrong).astype(np.float32)
            flags = det.flags
            quality = label_quality(det.evidence, y)
            score = det.p_wrong
            suggested = np.where(flags, alternative_label(det.posterior, y), y)

        names = np.array(labels.class_names, dtype=object)
        table = {
            "path": labels.paths.astype(str),
            "given_label": labels.given.astype(str),
            "given_index": y,
            "teacher_probs": probs,
            "clean_prob": clean,
            "is_issue": flags,
            "issue_score": score,
            "label_quality": quality,
            "suggested_label": names[suggested].astype(str),
            "suggested_index": suggested.astype(np.int64),
            "partition": np.where(clean >= 0.5, "clean", "noisy"),
            "in_small_loss": small,
        }
        counts = np.bincount(y, minlength=c)
        per_class = [
            {
                "class": labels.class_names[k],
                "n": int(counts[k]),
                "issues": int(flags[y == k].sum()),
                "estimated_noise_rate": round(float(det.p_wrong[y == k].mean()) if counts[k] else 0.0, 4),
            }
            for k in range(c)
        ]
        summary = {
            "labelfix_version": __version__,
            "command": "scan",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": cfg.seed,
            "device": device,
            "config": cfg.to_dict(),
            "inputs": {
                "images_dir": str(Path(inputs.images_dir).resolve()) if inputs.images_dir else None,
                "labels_csv": str(Path(inputs.labels_csv).resolve()) if inputs.labels_csv else None,
                "path_col": inputs.path_col,
                "label_col": inputs.label_col,
                "pred_probs": str(Path(inputs.pred_probs).resolve()) if inputs.pred_probs else None,
                "embeddings": str(Path(inputs.embeddings).resolve()) if inputs.embeddings else None,
                **hashes,
            },
            "images": image_info,
            "class_names": labels.class_names,
            "counts": {
                "samples": int(labels.n),
                "classes": c,
                "issues": int(flags.sum()),
                "clean_partition": int((clean >= 0.5).sum()),
                "small_loss": int(small.sum()),
            },
            # The expected share of wrong labels under the fitted noise model (mean P(wrong)).
            "estimated_noise_rate": round(float(det.p_wrong.mean()), 4),
            "flagged_share": round(float(flags.mean()), 4),
            "per_class": per_class,
            "evidence": "teacher probabilities and their own neighbour graph"
            if graph_from_probs
            else "teacher probabilities and the embedding graph's neighbour vote",
            "detection": det.report(),
            "noise_matrix": {
                "description": "P(true class = column | given class = row): mean posterior of the rows given each class",
                "values": np.round(_posterior_matrix(y, det.posterior, c), 4),
            },
            "confident_joint": {
                "description": "Confident Learning's calibrated estimate of the teacher probabilities (the noise model's starting T)",
                "noise_rate": round(noise.overall, 4),
                "per_class": np.round(noise.rates, 4),
                "matrix": np.round(noise.matrix, 4),
            },
            "teacher": teacher_stats,
            "teacher_heldout_agreement_with_given": round(float((probs.argmax(1) == y).mean()), 4),
            "teacher_check": check,
            "weak_teacher": check["weak"],
            "graph": {
                "k": int(graph.ids.shape[1]),
                "index": graph.index_kind,
                "built_from": "pred_probs" if graph_from_probs else "embeddings",
            },
            "warnings": warnings,
            "timings_s": timer.times,
        }
        meta = {
            "labelfix_version": __version__,
            "class_names": labels.class_names,
            "config": cfg.to_dict(),
            "seed": cfg.seed,
        }
        atomic_save_npy(stage / GRAPH_IDS, graph.ids)
        atomic_save_npy(stage / GRAPH_SIMS, graph.sims)
        if inputs.pred_probs is not None:
            atomic_save_npy(stage / EMBEDDINGS_FILE, emb)
        write_parquet(stage / SCAN_FILE, table, meta)
        summary["timings_s"]["total"] = round(sum(v for k, v in timer.times.items() if k != "total"), 3)
        atomic_write_json(stage / SUMMARY_FILE, summary)
    return ScanResult(out, summary, table)
