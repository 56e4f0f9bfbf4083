"""Command line: parse, build a config, call one library function, render. Nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from labelfix import cli_support as cs
from labelfix import options as opt
from labelfix.config import check_finite, check_seed
from labelfix.errors import InputError
from labelfix.files.paths import check_path_flag


def _exit_codes() -> str:
    from labelfix.errors import EXIT_CODES

    return "Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."


app = typer.Typer(
    cls=opt.OneLineGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Find and fix wrong labels in image classification datasets.",
    epilog=_exit_codes(),
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(version: opt.Version = False) -> None:
    """Find and fix wrong labels in image classification datasets."""
    import signal

    signal.signal(signal.SIGTERM, cs.on_terminate)


@app.command(cls=opt.OneLineCommand)
def scan(
    images_dir: opt.ImagesDir = None,
    labels: opt.LabelsCsv = None,
    path_col: opt.PathCol = "path",
    label_col: opt.LabelCol = "label",
    classes: opt.Classes = None,
    pred_probs: opt.PredProbs = None,
    embeddings: opt.Embeddings = None,
    out: opt.ScanOut = Path("labelfix-out"),
    teacher: opt.Teacher = "auto",
    weights: opt.Weights = None,
    arch: opt.Arch = None,
    folds: opt.Folds = 2,
    epochs: opt.TeacherEpochs = 0,
    image_size: opt.ImageSize = 0,
    teacher_loss: opt.TeacherLoss = "gce",
    augment: opt.TeacherAugment = "auto",
    width: opt.Width = 24,
    precision: opt.Precision = "auto",
    k: opt.K = 20,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
    fail_above: opt.FailAbove = None,
    allow_weak_teacher: opt.AllowWeakTeacher = False,
    baseline: opt.Baseline = None,
    fail_on_new: opt.FailOnNew = None,
    summary_md: opt.SummaryMd = None,
    strict: opt.Strict = False,
    report: opt.Report = False,
    skip_unreadable: opt.SkipUnreadable = False,
    json_out: opt.ScanJson = False,
) -> None:
    """Embed with a teacher, build a kNN graph, estimate noise and flag likely wrong labels."""
    from labelfix.commands.scan import ScanInputs
    from labelfix.commands.scan import scan as run_scan
    from labelfix.config import ScanConfig, TeacherConfig
    from labelfix.files.inputs import read_class_list
    from labelfix.render import render_scan

    prob_files = tuple(pred_probs or ())
    given = {"IMAGES_DIR": images_dir, "--labels": labels, "--embeddings": embeddings, "--baseline": baseline}
    given.update(
        {"--pred-probs" if len(prob_files) == 1 else f"--pred-probs #{i + 1}": p for i, p in enumerate(prob_files)}
    )
    with cs.one_line({"--out": out, "--summary-md": summary_md}, given):
        cs.check_gates(fail_above, fail_on_new, baseline)
        for flag, value in given.items():
            check_path_flag(value, flag)
        cs.check_output_file(summary_md, "--summary-md")
        cs.prepare_out(out)
        tcfg = TeacherConfig(
            teacher=teacher,
            weights=weights,
            arch=arch,
            folds=folds,
            epochs=epochs,
            image_size=image_size,
            loss=teacher_loss,
            augment=augment,
            width=width,
            precision=precision,
        )
        cfg = ScanConfig(k=k, seed=seed, device=device, allow_weak_teacher=allow_weak_teacher, teacher=tcfg)
        cfg.validate()
        classes_list = read_class_list(classes)
        inputs = ScanInputs(
            images_dir,
            labels,
            path_col,
            label_col,
            classes_list,
            (prob_files[0] if len(prob_files) == 1 else prob_files) or None,
            embeddings,
            baseline,
            skip_unreadable,
        )
        result = run_scan(inputs, cfg, out, cs.progress(not json_out))
        cs.after_scan(result, out, report, summary_md)
    render_scan(result.summary, json_out)
    if json_out:
        cs.warn(result.summary.get("warnings", []))
    else:
        cs.next_steps(out, report)
    cs.gates(result, fail_above, fail_on_new, strict)


@app.command(cls=opt.OneLineCommand)
def report(run_dir: opt.ReportRunDir, out: opt.ReportOut = None) -> None:
    """Write one self-contained HTML report of a run (summary, noise matrix, galleries, review queue)."""
    from labelfix.report import write_report

    with cs.one_line({"--out": out}, {"RUN_DIR": run_dir}):
        check_path_flag(run_dir, "RUN_DIR")
        cs.check_output_file(out, "--out")
        path = write_report(run_dir, out)
    typer.echo(f"labelfix: report written to {path}")


@app.command(cls=opt.OneLineCommand)
def env(json_out: opt.EnvJson = False) -> None:
    """Print Python, torch, CUDA, faiss (and its GPUs), numpy, cleanlab, OS and CPU threads, for bug reports."""
    from labelfix.environment import environment
    from labelfix.files.outputs import to_json

    info = environment()
    if json_out:
        typer.echo(to_json(info))
        return
    for name, version in info["versions"].items():
        typer.echo(f"{name:14s} {version or 'not installed'}")
    for name, value in info["hardware"].items():
        typer.echo(f"{name:14s} {value}")


@app.command(cls=opt.OneLineCommand)
def refine(
    run_dir: opt.RunDirArg,
    rounds: opt.RefineRounds = 3,
    temperature: opt.Temperature = 0.5,
    max_ambiguity: opt.MaxAmbiguity = 0.5,
    min_confidence: opt.MinConfidence = 0.95,
    drop_review: opt.DropReview = False,
    no_mutual: opt.NoMutual = False,
    json_out: opt.RefineJson = False,
) -> None:
    """Refined soft labels, ambiguity scores and actions (keep / relabel / review)."""
    from labelfix.commands.refine import RefineConfig
    from labelfix.commands.refine import refine as run_refine
    from labelfix.render import render_refine

    with cs.one_line({"RUN_DIR": run_dir}):
        floats = {"--temperature": temperature, "--max-ambiguity": max_ambiguity, "--min-confidence": min_confidence}
        check_finite(floats)
        cs.prepare_out(run_dir, "RUN_DIR")
        cfg = RefineConfig(
            rounds=rounds,
            temperature=temperature,
            relabel_max_ambiguity=max_ambiguity,
            relabel_min_confidence=min_confidence,
            drop_review=drop_review,
        )
        stats = run_refine(run_dir, cfg, cs.progress(not json_out), mutual=not no_mutual)
    render_refine(stats, json_out)
    cs.warn(stats.get("warnings", []))


@app.command(cls=opt.OneLineCommand)
def distill(
    run_dir: opt.DistillRunDir,
    student: opt.Student = "resnet18",
    epochs: opt.DistillEpochs = 10,
    batch_size: opt.BatchSize = 128,
    lr: opt.Lr = 0.05,
    kd_weight: opt.KdWeight = 0.0,
    augment: opt.StudentAugment = "on",
    rounds: opt.DistillRounds = 1,
    device: opt.Device = "auto",
    precision: opt.Precision = "auto",
    seed: opt.Seed = 0,
    json_out: opt.DistillJson = False,
) -> None:
    """Train a student on the refined labels, then refine again with its view (mutual round)."""
    from labelfix.commands.distill import DistillConfig
    from labelfix.commands.distill import distill as run_distill
    from labelfix.render import render_distill

    with cs.one_line({"RUN_DIR": run_dir}):
        check_finite({"--lr": lr, "--kd-weight": kd_weight})
        check_seed(seed)
        cs.prepare_out(run_dir, "RUN_DIR")
        cfg = DistillConfig(
            student=student,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            kd_weight=kd_weight,
            augment=augment,
            rounds=rounds,
            device=device,
            precision=precision,
            seed=seed,
        )
        report = run_distill(run_dir, cfg, cs.progress(not json_out))
    render_distill(report, run_dir, json_out)
    cs.warn(report.get("warnings", []))


@app.command(cls=opt.OneLineCommand)
def predict(
    images_dir: opt.PredictImages,
    model: opt.Model,
    out: opt.PredictOut = Path("labelfix-predictions"),
    labels: opt.TrueLabelsCsv = None,
    path_col: opt.PathCol = "path",
    label_col: opt.LabelCol = "label",
    device: opt.Device = "auto",
    json_out: opt.PredictJson = False,
) -> None:
    """Classify images with a distilled student."""
    from labelfix.commands.distill import predict as run_predict
    from labelfix.files.outputs import leave_no_trace
    from labelfix.render import render_predict

    given = {"IMAGES_DIR": images_dir, "--model": model, "--labels": labels}
    with cs.one_line({"--out": out}, given):
        for flag, value in given.items():
            check_path_flag(value, flag)
        cs.prepare_out(out)  # before inference: a file at --out used to fail only after it
        with leave_no_trace(out):
            report = run_predict(images_dir, model, out, labels, path_col, label_col, device, cs.progress(not json_out))
    render_predict(report, json_out)


@app.command(cls=opt.OneLineCommand)
def bench(
    npz: opt.Npz = None,
    class_names: opt.ClassNames = None,
    n: opt.SubsetN = None,
    noise: opt.NoiseKind = "symmetric",
    rate: opt.Rate = 0.4,
    pred_probs: opt.BenchPredProbs = None,
    noisy_labels: opt.NoisyLabels = None,
    true_labels: opt.TrueLabels = None,
    embeddings: opt.BenchEmbeddings = None,
    out: opt.BenchOut = Path("labelfix-bench"),
    no_cleanlab: opt.NoCleanlab = False,
    seed: opt.NoiseSeed = 0,
    json_out: opt.BenchJson = False,
) -> None:
    """Inject label noise into clean data (or use real noise), run scan + refine, score against the truth."""
    from labelfix.commands.bench import bench_from_flags
    from labelfix.files.inputs import read_class_list
    from labelfix.render import render_bench

    given = {"--npz": npz, "--pred-probs": pred_probs, "--noisy-labels": noisy_labels}
    given.update({"--true-labels": true_labels, "--embeddings": embeddings})
    with cs.one_line({"--out": out}, given):
        if noise not in ("symmetric", "asymmetric", "instance"):
            raise InputError(f"--noise must be symmetric, asymmetric or instance (got {noise!r})")
        check_finite({"--rate": rate})
        if not 0.0 <= rate < 1.0:
            raise InputError(f"--rate must be in [0, 1) (got {rate})")
        check_seed(seed)
        for flag, value in given.items():
            check_path_flag(value, flag)
        cs.prepare_out(out)
        row = bench_from_flags(
            given, read_class_list(class_names), n, noise, rate, out, seed, not no_cleanlab, cs.progress(not json_out)
        )
    render_bench(row, json_out)


@app.command(cls=opt.OneLineCommand)
def demo(out: opt.DemoOut = Path("labelfix-demo"), noise: opt.DemoNoise = 0.2, seed: opt.NoiseSeed = 0) -> None:
    """Inject label noise into scikit-learn's digits, scan them, and score the flags."""
    from labelfix.commands.demo import run_demo
    from labelfix.render import render_demo

    with cs.one_line({"--out": out}):
        check_finite({"--noise": noise})
        if not 0.0 <= noise < 1.0:
            raise InputError(f"--noise must be in [0, 1) (got {noise})")
        check_seed(seed)
        cs.prepare_out(out)
        result, metrics = run_demo(out, noise, seed, cs.progress())
    render_demo(result.summary, metrics, out)


@app.command(cls=opt.OneLineCommand)
def embed(
    images_dir: opt.EmbedImages,
    teacher: opt.EmbedTeacher,
    labels: opt.LabelsCsv = None,
    path_col: opt.PathCol = "path",
    label_col: opt.LabelCol = "label",
    classes: opt.Classes = None,
    weights: opt.Weights = None,
    arch: opt.Arch = None,
    folds: opt.Folds = 2,
    image_size: opt.ImageSize = 0,
    batch_size: opt.BatchSize = 256,
    precision: opt.Precision = "auto",
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
    ray: opt.RayAddress = None,
    workers: opt.RayWorkers = 0,
    out: opt.EmbedOut = Path("labelfix-embed"),
    json_out: opt.EmbedJson = False,
) -> None:
    """Frozen-teacher embeddings and cross-fitted probabilities for scan --pred-probs (here, or on Ray)."""
    from labelfix.commands.embed import EmbedConfig, EmbedInputs, summary_line
    from labelfix.commands.embed import embed as run_embed
    from labelfix.files.inputs import read_class_list
    from labelfix.files.outputs import to_json

    given = {"IMAGES_DIR": images_dir, "--labels": labels}
    with cs.one_line({"--out": out}, given):
        for flag, value in given.items():
            check_path_flag(value, flag)
        cfg = EmbedConfig(teacher, weights, arch, folds, image_size, batch_size, precision, device, seed, ray, workers)
        cfg.validate()
        cs.prepare_out(out)
        inputs = EmbedInputs(images_dir, labels, path_col, label_col, read_class_list(classes))
        result = run_embed(inputs, cfg, out, cs.progress(not json_out))
    typer.echo(to_json(result.meta) if json_out else summary_line(result, images_dir, labels))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
