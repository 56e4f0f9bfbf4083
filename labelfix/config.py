"""Frozen settings for each stage. Constructors store values; `validate` names the flag at fault."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from labelfix.errors import InputError
from labelfix.runtime import check_precision

SEED_MAX = 2**63 - 1  # torch, numpy and faiss all take a seed below 2^63
IMAGE_SIZE_MAX = 1024  # N x S x S x 3 bytes of decoded images on disk: 1024 px is 3 MB an image
WIDTH_MAX = 1024  # auto-teacher channels of the first stage (then 2x and 4x)


def check_seed(seed: int, flag: str = "--seed") -> None:
    """A seed every generator accepts: 0 <= seed < 2^63."""
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"{flag} must be in 0..2^63-1 (got {seed})")


def check_finite(values: dict[str, float | None]) -> None:
    """Refuse NaN and infinity in float flags ({flag: value}); a range check alone lets NaN
    through wherever it is written as `if value < low` (every comparison with NaN is false)."""
    for flag, value in values.items():
        if value is not None and not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number (got {value})")


@dataclass(frozen=True)
class TeacherConfig:
    """How teacher probabilities and embeddings are obtained.

    Attributes:
        teacher: "auto" (train a small ResNet with K-fold cross-fitting), a torchvision
            architecture name (with `weights`), or a path to a checkpoint.
        weights: torchvision weights name for a pretrained architecture ("DEFAULT", "IMAGENET1K_V1").
        arch: torchvision architecture of a state-dict checkpoint.
        folds: K of the K-fold cross-fitting.
        epochs: training epochs per fold for the auto teacher (0 = chosen from the data size).
        image_size: side the images are resized to (0 = chosen from the data).
        batch_size: training and inference batch size.
        lr: peak AdamW learning rate of the one-cycle schedule (the same for every data set).
        loss: "gce" (generalised cross-entropy, Zhang & Sabuncu 2018: robust to wrong labels)
            or "ce" (plain cross-entropy).
        warmup: share of each fold's epochs trained with plain cross-entropy before switching to
            `loss` (at least one epoch when > 0). GCE from a random start can stall at the
            uniform prediction (measured: 26 classes, 32 px RGB, stayed at chance).
        restart_on_stall: train a fold again from a fresh start with cross-entropy at a third of
            `lr` when its training agreement with its labels is not clearly above the
            majority-class share (one-sided binomial test) after the warm-up or at the end.
        curve_rows: at most this many held-out rows of each fold are scored after every epoch for
            the learning curve in summary.json (recorded only; never steers training).
        gce_q: the GCE exponent q in (0, 1]; q -> 0 is cross-entropy, q = 1 is MAE.
        elr_lambda: weight of the ELR regulariser (0 disables it).
        augment: random-shift augmentation while training the auto teacher: "on", "off", or
            "auto" = on when a fold model trains on fewer than 5,000 images (small data, many
            epochs: it fights over-fitting), off above (few epochs over more data: it only slows
            fitting). Measured: digits, 40 epochs, flag F1 0.89 -> 0.98 with it; Fashion-MNIST,
            8 epochs, teacher accuracy 0.815 -> 0.790 with it.
        width: channels of the auto teacher's first stage (then 2x and 4x).
        precision: auto | fp32 | bf16 (auto: bfloat16 where the hardware runs it natively).
    """

    teacher: str = "auto"
    weights: str | None = None
    arch: str | None = None
    folds: int = 2
    epochs: int = 0
    image_size: int = 0
    batch_size: int = 256
    lr: float = 0.003
    loss: str = "gce"
    warmup: float = 0.25
    restart_on_stall: bool = True
    curve_rows: int = 1000
    gce_q: float = 0.7
    elr_lambda: float = 0.0
    elr_beta: float = 0.7
    augment: str = "auto"
    width: int = 24
    precision: str = "auto"

    def validate(self) -> None:
        if self.folds < 2:
            raise InputError(f"--folds must be at least 2 (got {self.folds})")
        if self.epochs < 0:
            raise InputError(f"--epochs must be >= 0 (got {self.epochs})")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.loss not in ("gce", "ce"):
            raise InputError(f"--teacher-loss must be gce or ce (got {self.loss!r})")
        if not 0.0 <= self.warmup <= 1.0:
            raise InputError(f"warmup must be in [0, 1] (got {self.warmup})")
        if self.lr < 0:
            raise InputError(f"lr must be >= 0 (got {self.lr})")
        if self.curve_rows < 0:
            raise InputError(f"curve_rows must be >= 0 (got {self.curve_rows})")
        if not 0.0 < self.gce_q <= 1.0:
            raise InputError(f"gce_q must be in (0, 1] (got {self.gce_q})")
        if self.augment not in ("auto", "on", "off"):
            raise InputError(f"--augment must be auto, on or off (got {self.augment!r})")
        if not 1 <= self.width <= WIDTH_MAX:
            raise InputError(f"--width must be in 1..{WIDTH_MAX} (got {self.width})")
        check_precision(self.precision)
        if not 0 <= self.image_size <= IMAGE_SIZE_MAX:
            raise InputError(f"--image-size must be in 0..{IMAGE_SIZE_MAX} (0 = from the data; got {self.image_size})")
        check_finite({"lr": self.lr, "warmup": self.warmup, "gce_q": self.gce_q, "elr_lambda": self.elr_lambda})

    def check_rows(self, n: int) -> None:
        """Settings that depend on the number of samples: every fold must score at least one
        sample (an empty fold has no held-out rows: its statistics were NaN in summary.json)."""
        if self.folds > n:
            raise InputError(f"--folds {self.folds} is more than the {n} samples (each fold holds out at least one)")


@dataclass(frozen=True)
class ScanConfig:
    """Graph, selection and flagging settings of `scan`.

    k: neighbours per row in the kNN graph.
    gamma: exponent of the neighbour weights max(0, cosine)^gamma in the graph's vote.
    allow_weak_teacher: write flags even when the probabilities are not clearly above chance
        (otherwise scan stops with exit code 5 and writes nothing).
    """

    k: int = 20
    allow_weak_teacher: bool = False
    gamma: float = 3.0
    seed: int = 0
    device: str = "auto"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def validate(self) -> None:
        if self.k < 1:
            raise InputError(f"--k must be >= 1 (got {self.k})")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"--device must be auto, cpu or cuda (got {self.device!r})")
        check_seed(self.seed)
        check_finite({"gamma": self.gamma})
        self.teacher.validate()

    def check_rows(self, n: int, teacher: bool = True) -> None:
        """The checks that need the number of samples; `teacher` False for --pred-probs runs."""
        if teacher:
            self.teacher.check_rows(n)

    def to_dict(self) -> dict:
        return asdict(self)
