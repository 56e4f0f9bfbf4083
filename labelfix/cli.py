"""Command line: parse, build a config, call one library function, render. Nothing else."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from labelfix.errors import GateFailed, InputError, LabelfixError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find and fix wrong labels in image classification datasets.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """Find and fix wrong labels in image classification datasets."""
    import signal

    # SIGTERM (CI time-outs, kill) unwinds like Ctrl-C, so staged outputs are removed.
    def _terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)


class RichProgress:
    """Progress bars on stderr."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal

    @contextmanager
    def task(self, description: str, total):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if not self.enabled:
            from labelfix.progress import _NullTask

            yield _NullTask()
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as prog:
            tid = prog.add_task(description, total=total)

            class _T:
                def advance(self, n: int = 1):
                    prog.advance(tid, n)

            yield _T()

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)


def _fail(exc: LabelfixError) -> None:
    msg = " ".join(str(exc).split())
    typer.echo(f"labelfix: error: {msg}", err=True)
    raise typer.Exit(exc.exit_code)


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        typer.echo(f"labelfix: warning: {w}", err=True)


def _classes(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    p = Path(value)
    if p.is_file():
        names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    else:
        names = [s.strip() for s in value.split(",") if s.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        _fail(InputError("--classes: needs at least two distinct class names"))
    return names


@app.command()
def scan(
    images_dir: Annotated[
        Optional[Path], typer.Argument(help="Folder of images (paths in the CSV are relative to it).")
    ] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="CSV with a path and a label column.")] = None,
    path_col: Annotated[str, typer.Option(help="Name of the CSV's path column.")] = "path",
    label_col: Annotated[str, typer.Option(help="Name of the CSV's label column.")] = "label",
    classes: Annotated[
        Optional[str], typer.Option(help="Class names in order: comma list or a file, one per line.")
    ] = None,
    pred_probs: Annotated[
        Optional[Path],
        typer.Option("--pred-probs", help="(N, C) .npy of out-of-sample probabilities; replaces the teacher."),
    ] = None,
    embeddings: Annotated[
        Optional[Path], typer.Option(help="(N, D) .npy of embeddings for the graph (with --pred-probs).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("labelfix-out"),
    teacher: Annotated[str, typer.Option(help="auto | torchvision architecture | checkpoint path.")] = "auto",
    weights: Annotated[
        Optional[str], typer.Option(help="torchvision weights name for a pretrained teacher (e.g. DEFAULT).")
    ] = None,
    arch: Annotated[Optional[str], typer.Option(help="torchvision architecture of a state-dict checkpoint.")] = None,
    folds: Annotated[int, typer.Option(help="K of the K-fold cross-fitting.")] = 2,
    epochs: Annotated[int, typer.Option(help="Epochs per fold for the auto teacher (0 = from data size).")] = 0,
    image_size: Annotated[int, typer.Option(help="Resize images to this side (0 = from the data).")] = 0,
    teacher_loss: Annotated[
        str, typer.Option("--teacher-loss", help="Auto-teacher loss: gce (robust to wrong labels) | ce.")
    ] = "gce",
    augment: Annotated[
        str,
        typer.Option(help="Auto-teacher random-shift augmentation: auto (on below 5,000 images per fold) | on | off."),
    ] = "auto",
    width: Annotated[int, typer.Option(help="Auto-teacher width (channels of its first stage).")] = 24,
    precision: Annotated[
        str, typer.Option(help="auto | fp32 | bf16 (auto: bfloat16 where the hardware runs it natively).")
    ] = "auto",
    k: Annotated[int, typer.Option("--k", help="Neighbours per sample in the kNN graph.")] = 20,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    fail_above: Annotated[
        Optional[float],
        typer.Option("--fail-above", help="Exit 10 if the estimated share of wrong labels exceeds this."),
    ] = None,
    allow_weak_teacher: Annotated[
        bool,
        typer.Option(
            "--allow-weak-teacher",
            help="Write flags even when the teacher is at chance (else exit 5, nothing written).",
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout instead of a table.")
    ] = False,
) -> None:
    """Embed with a teacher, build a kNN graph, estimate noise and flag likely wrong labels."""
    from labelfix.commands.scan import ScanInputs
    from labelfix.commands.scan import scan as run_scan
    from labelfix.config import ScanConfig, TeacherConfig
    from labelfix.render import render_scan

    if fail_above is not None and not 0.0 <= fail_above <= 1.0:
        _fail(InputError(f"--fail-above must be in [0, 1] (got {fail_above})"))
    if out.exists() and not out.is_dir():
        _fail(InputError(f"{out}: --out exists and is not a directory"))
    try:
        cfg = ScanConfig(
            k=k,
            seed=seed,
            device=device,
            allow_weak_teacher=allow_weak_teacher,
            teacher=TeacherConfig(
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
            ),
        )
        inputs = ScanInputs(images_dir, labels, path_col, label_col, _classes(classes), pred_probs, embeddings)
        result = run_scan(inputs, cfg, out, RichProgress(not json_out))
    except LabelfixError as exc:
        _fail(exc)
    render_scan(result.summary, json_out)
    if json_out:
        for w in result.summary.get("warnings", []):
            typer.echo(f"labelfix: warning: {w}", err=True)
    rate = result.summary["estimated_noise_rate"]
    if fail_above is not None and rate > fail_above:
        _fail(GateFailed(f"estimated share of wrong labels {rate:.4f} exceeds --fail-above {fail_above}"))


@app.command()
def refine(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by scan.")],
    rounds: Annotated[
        int, typer.Option(help="Refit rounds of the noise posterior on an embedding graph (scan uses 3).")
    ] = 3,
    temperature: Annotated[float, typer.Option(help="Sharpening temperature for confident rows.")] = 0.5,
    max_ambiguity: Annotated[float, typer.Option(help="Relabel only below this ambiguity (else review).")] = 0.5,
    min_confidence: Annotated[
        float, typer.Option(help="Relabel only when the refined label's probability reaches this.")
    ] = 0.5,
    drop_review: Annotated[
        bool, typer.Option("--drop-review", help="Leave review rows out of labels.refined.csv.")
    ] = False,
    no_mutual: Annotated[
        bool, typer.Option("--no-mutual", help="Ignore distill's student view: teacher-only refinement.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the refine statistics as JSON.")] = False,
) -> None:
    """Refined soft labels, ambiguity scores and actions (keep / relabel / review)."""
    from labelfix.commands.refine import RefineConfig
    from labelfix.commands.refine import refine as run_refine
    from labelfix.render import render_refine

    try:
        cfg = RefineConfig(
            rounds=rounds,
            temperature=temperature,
            relabel_max_ambiguity=max_ambiguity,
            relabel_min_confidence=min_confidence,
            drop_review=drop_review,
        )
        stats = run_refine(run_dir, cfg, RichProgress(not json_out), mutual=not no_mutual)
    except LabelfixError as exc:
        _fail(exc)
    render_refine(stats, json_out)
    _warn(stats.get("warnings", []))


@app.command()
def distill(
    run_dir: Annotated[Path, typer.Argument(help="Run directory after scan and refine.")],
    student: Annotated[str, typer.Option(help="torchvision classification architecture.")] = "resnet18",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, cosine schedule).")] = 0.05,
    kd_weight: Annotated[
        float,
        typer.Option(
            help="Weight of distillation from the teacher (0..1); raise it for a strong, e.g. pretrained, teacher."
        ),
    ] = 0.0,
    augment: Annotated[
        str, typer.Option(help="Random-shift augmentation (shifts of up to 1/8 of the image): on | off.")
    ] = "on",
    rounds: Annotated[
        int,
        typer.Option(help="Train a fresh student this many times, each on the labels the previous mutual round left."),
    ] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto | fp32 | bf16 (auto: bfloat16 where the hardware runs it natively).")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print distill.json on stdout.")] = False,
) -> None:
    """Train a student on the refined labels, then refine again with its view (mutual round)."""
    from labelfix.commands.distill import DistillConfig
    from labelfix.commands.distill import distill as run_distill
    from labelfix.render import render_distill

    try:
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
        report = run_distill(run_dir, cfg, RichProgress(not json_out))
    except LabelfixError as exc:
        _fail(exc)
    render_distill(report, run_dir, json_out)
    _warn(report.get("warnings", []))


@app.command()
def predict(
    images_dir: Annotated[Path, typer.Argument(help="Folder of images to classify.")],
    model: Annotated[Path, typer.Option("--model", help="student.pt written by distill (student.json beside it).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for predictions.parquet.")] = Path(
        "labelfix-predictions"
    ),
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="CSV of true labels: also report accuracy.")
    ] = None,
    path_col: Annotated[str, typer.Option(help="Name of the CSV's path column.")] = "path",
    label_col: Annotated[str, typer.Option(help="Name of the CSV's label column.")] = "label",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Classify images with a distilled student."""
    from labelfix.commands.distill import predict as run_predict
    from labelfix.render import render_predict

    try:
        report = run_predict(images_dir, model, out, labels, path_col, label_col, device, RichProgress(not json_out))
    except LabelfixError as exc:
        _fail(exc)
    render_predict(report, json_out)


@app.command()
def bench(
    npz: Annotated[
        Optional[Path], typer.Option(help="Clean data: .npz with `images` (N,H,W[,C]) uint8 and `labels` (N,).")
    ] = None,
    class_names: Annotated[
        Optional[str], typer.Option("--class-names", help="Class names for --npz labels 0..C-1 (comma list or file).")
    ] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Stratified subset size of --npz.")] = None,
    noise: Annotated[str, typer.Option(help="symmetric | asymmetric | instance.")] = "symmetric",
    rate: Annotated[float, typer.Option(help="Noise rate to inject.")] = 0.4,
    pred_probs: Annotated[
        Optional[Path], typer.Option("--pred-probs", help="(N, C) .npy out-of-sample probabilities (real noise).")
    ] = None,
    noisy_labels: Annotated[
        Optional[Path], typer.Option("--noisy-labels", help="(N,) .npy given labels, with --pred-probs.")
    ] = None,
    true_labels: Annotated[
        Optional[Path], typer.Option("--true-labels", help="(N,) .npy true labels, with --pred-probs.")
    ] = None,
    embeddings: Annotated[Optional[Path], typer.Option(help="(N, D) .npy embeddings, with --pred-probs.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Work folder (PNGs, run directory, bench.json).")] = Path(
        "labelfix-bench"
    ),
    no_cleanlab: Annotated[bool, typer.Option("--no-cleanlab", help="Skip the cleanlab comparison.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the noise and the pipeline.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Inject label noise into clean data (or use real noise), run scan + refine, score against the truth."""
    import numpy as np

    from labelfix.commands.bench import bench_images, bench_pred_probs, default_pairs, load_npz
    from labelfix.config import ScanConfig
    from labelfix.render import render_bench

    if noise not in ("symmetric", "asymmetric", "instance"):
        _fail(InputError(f"--noise must be symmetric, asymmetric or instance (got {noise!r})"))
    if not 0.0 <= rate < 1.0:
        _fail(InputError(f"--rate must be in [0, 1) (got {rate})"))
    try:
        if npz is not None:
            images, labels = load_npz(npz, n, seed)
            names = _classes(class_names) or [str(k) for k in range(int(labels.max()) + 1)]
            row = bench_images(
                images,
                labels,
                names,
                noise,
                rate,
                out,
                ScanConfig(seed=seed),
                default_pairs(names),
                not no_cleanlab,
                RichProgress(not json_out),
            )
        elif pred_probs is not None:
            if noisy_labels is None or true_labels is None:
                raise InputError("--pred-probs needs --noisy-labels and --true-labels")
            row = bench_pred_probs(
                pred_probs,
                np.load(noisy_labels),
                np.load(true_labels),
                out,
                embeddings,
                ScanConfig(seed=seed),
                not no_cleanlab,
                RichProgress(not json_out),
            )
        else:
            raise InputError("give --npz (clean data) or --pred-probs with --noisy-labels and --true-labels")
    except LabelfixError as exc:
        _fail(exc)
    render_bench(row, json_out)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo data and run.")] = Path("labelfix-demo"),
    noise: Annotated[float, typer.Option(help="Share of labels flipped at random.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the noise and the pipeline.")] = 0,
) -> None:
    """Inject label noise into scikit-learn's digits, scan them, and score the flags."""
    from labelfix.commands.demo import run_demo
    from labelfix.render import render_demo

    if not 0.0 <= noise < 1.0:
        _fail(InputError(f"--noise must be in [0, 1) (got {noise})"))
    try:
        result, metrics = run_demo(out, noise, seed, RichProgress())
    except LabelfixError as exc:
        _fail(exc)
    render_demo(result.summary, metrics, out)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
