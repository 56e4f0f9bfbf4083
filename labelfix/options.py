"""The command line's option definitions, and typer classes that keep every error on one line.

cli.py builds its commands from these aliases; each alias carries its flag name and help text.
Typer's own usage errors (`--folds abc`, a missing argument, an unknown command) print a usage
block and a boxed message; `OneLineGroup` and `OneLineCommand` print them as one line instead,
`labelfix: error: ...`, with exit code 2 like every other input error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer vendors click from 0.20 on
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError, UsageError


def usage_error_exit(exc: UsageError) -> typer.Exit:
    """Print a usage error as one line on stderr; the Exit to raise (code 2)."""
    msg = " ".join(exc.format_message().split())
    typer.echo(f"labelfix: error: {msg}", err=True)
    return typer.Exit(exc.exit_code)


class OneLineGroup(TyperGroup):
    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            raise usage_error_exit(exc) from None

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:
            raise usage_error_exit(exc) from None


class OneLineCommand(TyperCommand):
    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            raise usage_error_exit(exc) from None


# --------------------------------------------------------------------------- shared

Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
Precision = Annotated[
    str, typer.Option(help="auto | fp32 | bf16 (auto: bfloat16 where the hardware runs it natively).")
]
Seed = Annotated[int, typer.Option(help="Seed for every random choice (0 .. 2^63-1).")]
NoiseSeed = Annotated[int, typer.Option(help="Seed for the noise and the pipeline (0 .. 2^63-1).")]
PathCol = Annotated[str, typer.Option(help="Name of the CSV's path column.")]
LabelCol = Annotated[str, typer.Option(help="Name of the CSV's label column.")]
LabelsCsv = Annotated[Optional[Path], typer.Option("--labels", help="CSV with a path and a label column.")]
Classes = Annotated[Optional[str], typer.Option(help="Class names in order: comma list or a file, one per line.")]

# --------------------------------------------------------------------------- scan

ImagesDir = Annotated[Optional[Path], typer.Argument(help="Folder of images (paths in the CSV are relative to it).")]
PredProbs = Annotated[
    Optional[List[Path]],
    typer.Option(
        "--pred-probs",
        help="(N, C) .npy of out-of-sample probabilities; replaces the teacher. Give it once per model "
        "(same rows, same columns) to use several models: their fitted pool, or the one model whose "
        "posteriors expect the best F1 (README).",
    ),
]
Embeddings = Annotated[
    Optional[Path], typer.Option(help="(N, D) .npy of embeddings for the graph (with --pred-probs).")
]
ScanOut = Annotated[Path, typer.Option("--out", help="Run directory.")]
Teacher = Annotated[str, typer.Option(help="auto | torchvision architecture | checkpoint path.")]
Weights = Annotated[
    Optional[str], typer.Option(help="torchvision weights name for a pretrained teacher (e.g. DEFAULT).")
]
Arch = Annotated[Optional[str], typer.Option(help="torchvision architecture of a state-dict checkpoint.")]
Folds = Annotated[int, typer.Option(help="K of the K-fold cross-fitting (2 .. number of samples).")]
TeacherEpochs = Annotated[int, typer.Option(help="Epochs per fold for the auto teacher (0 = from data size).")]
ImageSize = Annotated[int, typer.Option(help="Resize images to this side (0 = from the data; at most 1024).")]
TeacherLoss = Annotated[
    str, typer.Option("--teacher-loss", help="Auto-teacher loss: gce (robust to wrong labels) | ce.")
]
TeacherAugment = Annotated[
    str,
    typer.Option(help="Auto-teacher random-shift augmentation: auto (on below 5,000 images per fold) | on | off."),
]
Width = Annotated[int, typer.Option(help="Auto-teacher width (channels of its first stage, 1 .. 1024).")]
K = Annotated[int, typer.Option("--k", help="Neighbours per sample in the kNN graph.")]
FailAbove = Annotated[
    Optional[float],
    typer.Option("--fail-above", help="Exit 10 if the estimated share of wrong labels exceeds this."),
]
AllowWeakTeacher = Annotated[
    bool,
    typer.Option(
        "--allow-weak-teacher",
        help="Write flags even when the teacher is at chance (else exit 5, nothing written).",
    ),
]
ScanJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout instead of a table.")]
Baseline = Annotated[
    Optional[Path],
    typer.Option(help="An earlier run folder (or its scan.parquet): report new, fixed and unchanged issues."),
]
FailOnNew = Annotated[
    Optional[int],
    typer.Option("--fail-on-new", help="Exit 11 when more than this many issues are new against --baseline."),
]
SummaryMd = Annotated[
    Optional[Path],
    typer.Option("--summary-md", help="Write a short Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)."),
]
Strict = Annotated[bool, typer.Option("--strict", help="Exit 12 when the run has warnings (a weak teacher...).")]
Report = Annotated[bool, typer.Option("--report", help="Also write report.html into the run folder.")]
SkipUnreadable = Annotated[
    bool,
    typer.Option("--skip-unreadable", help="Leave out images that cannot be decoded (listed in summary.json)."),
]

# --------------------------------------------------------------------------- report, env

ReportRunDir = Annotated[Path, typer.Argument(help="Run directory written by scan (and refine).")]
ReportOut = Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default RUN_DIR/report.html).")]
EnvJson = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def _print_version(value: bool) -> None:
    if value:
        from labelfix import __version__

        typer.echo(f"labelfix {__version__}")
        raise typer.Exit(0)


Version = Annotated[
    bool, typer.Option("--version", help="Print labelfix's version and exit.", is_eager=True, callback=_print_version)
]

# --------------------------------------------------------------------------- refine

RunDirArg = Annotated[Path, typer.Argument(help="Run directory written by scan.")]
RefineRounds = Annotated[
    int, typer.Option(help="Refit rounds of the noise posterior on an embedding graph (scan uses 3).")
]
Temperature = Annotated[float, typer.Option(help="Sharpening temperature for confident rows.")]
MaxAmbiguity = Annotated[float, typer.Option(help="Relabel only below this ambiguity (else review).")]
MinConfidence = Annotated[
    float,
    typer.Option(
        help="Relabel only when the refined label's posterior probability reaches this (and the evidence's argmax agrees); else review."
    ),
]
DropReview = Annotated[bool, typer.Option("--drop-review", help="Leave review rows out of labels.refined.csv.")]
NoMutual = Annotated[bool, typer.Option("--no-mutual", help="Ignore distill's student view: teacher-only refinement.")]
RefineJson = Annotated[bool, typer.Option("--json", help="Print the refine statistics as JSON.")]

# --------------------------------------------------------------------------- distill and predict

DistillRunDir = Annotated[Path, typer.Argument(help="Run directory after scan and refine.")]
Student = Annotated[str, typer.Option(help="torchvision classification architecture.")]
DistillEpochs = Annotated[int, typer.Option(help="Training epochs.")]
BatchSize = Annotated[int, typer.Option(help="Batch size.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate (SGD, cosine schedule).")]
KdWeight = Annotated[
    float,
    typer.Option(
        help="Weight of distillation from the teacher (0..1); raise it for a strong, e.g. pretrained, teacher."
    ),
]
StudentAugment = Annotated[
    str, typer.Option(help="Random-shift augmentation (shifts of up to 1/8 of the image): on | off.")
]
DistillRounds = Annotated[
    int,
    typer.Option(help="Train a fresh student this many times, each on the labels the previous mutual round left."),
]
DistillJson = Annotated[bool, typer.Option("--json", help="Print distill.json on stdout.")]
PredictImages = Annotated[Path, typer.Argument(help="Folder of images to classify.")]
Model = Annotated[Path, typer.Option("--model", help="student.pt written by distill (student.json beside it).")]
PredictOut = Annotated[Path, typer.Option("--out", help="Output folder for predictions.parquet.")]
TrueLabelsCsv = Annotated[Optional[Path], typer.Option("--labels", help="CSV of true labels: also report accuracy.")]
PredictJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]

# --------------------------------------------------------------------------- bench and demo

Npz = Annotated[
    Optional[Path], typer.Option(help="Clean data: .npz with `images` (N,H,W[,C]) uint8 and `labels` (N,).")
]
ClassNames = Annotated[
    Optional[str], typer.Option("--class-names", help="Class names for --npz labels 0..C-1 (comma list or file).")
]
SubsetN = Annotated[Optional[int], typer.Option("--n", help="Stratified subset size of --npz.")]
NoiseKind = Annotated[str, typer.Option(help="symmetric | asymmetric | instance.")]
Rate = Annotated[float, typer.Option(help="Noise rate to inject.")]
BenchPredProbs = Annotated[
    Optional[Path], typer.Option("--pred-probs", help="(N, C) .npy out-of-sample probabilities (real noise).")
]
NoisyLabels = Annotated[
    Optional[Path], typer.Option("--noisy-labels", help="(N,) .npy given labels, with --pred-probs.")
]
TrueLabels = Annotated[Optional[Path], typer.Option("--true-labels", help="(N,) .npy true labels, with --pred-probs.")]
BenchEmbeddings = Annotated[Optional[Path], typer.Option(help="(N, D) .npy embeddings, with --pred-probs.")]
BenchOut = Annotated[Path, typer.Option("--out", help="Work folder (PNGs, run directory, bench.json).")]
NoCleanlab = Annotated[bool, typer.Option("--no-cleanlab", help="Skip the cleanlab comparison.")]
BenchJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
DemoOut = Annotated[Path, typer.Option("--out", help="Folder for the demo data and run.")]
DemoNoise = Annotated[float, typer.Option(help="Share of labels flipped at random.")]

# --------------------------------------------------------------------------- embed

EmbedImages = Annotated[Path, typer.Argument(help="Folder of images (a --labels CSV's paths are relative to it).")]
EmbedTeacher = Annotated[
    str,
    typer.Option(help="Frozen teacher: checkpoint path (TorchScript, or state dict with --arch) | torchvision name."),
]
EmbedOut = Annotated[Path, typer.Option("--out", help="Folder for embeddings.npy, probs.npy and embed.json.")]
RayAddress = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        help="Run the feature extraction as a Ray Data pipeline: auto (RAY_ADDRESS) | local | ray://HOST:10001 | HOST:PORT.",
    ),
]
RayWorkers = Annotated[int, typer.Option(help="Ray workers (0 = one per cluster CPU, or per GPU on CUDA).")]
EmbedJson = Annotated[bool, typer.Option("--json", help="Print embed.json on stdout.")]
