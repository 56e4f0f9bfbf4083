"""Frozen teachers: a torchvision model with pretrained weights from the user's torch cache, or a
user checkpoint (TorchScript, or a torchvision state dict; never unpickles code). Features come
from the frozen network; probabilities from a linear head cross-fitted on them."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from labelfix.config import TeacherConfig
from labelfix.errors import InputError, TeacherUnavailable
from labelfix.models.batches import Batches, as_rgb, infer
from labelfix.models.crossfit import TeacherOutput, crossfit_linear_head, l2_normalise
from labelfix.progress import NullProgress, Progress
from labelfix.runtime import Runtime, ensure_runtime

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def load_torchvision(arch: str, weights: str | None, num_classes_hint: int | None = None):
    """A torchvision classification model with pretrained `weights` from the user's torch cache."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"--teacher {arch!r}: not a torchvision classification model or an existing checkpoint path")
    try:
        w = (
            torchvision.models.get_model_weights(arch)[weights]
            if weights and weights != "DEFAULT"
            else (torchvision.models.get_model_weights(arch).DEFAULT if weights else None)
        )
    except KeyError:
        names = ", ".join(m.name for m in torchvision.models.get_model_weights(arch))
        raise InputError(f"--weights {weights!r}: unknown for {arch} (known: {names})") from None
    if w is None:
        raise InputError(f"--teacher {arch}: pass --weights (e.g. DEFAULT); a random-init teacher knows nothing")
    try:
        model = torchvision.models.get_model(arch, weights=w)
    except Exception as exc:
        import torch.hub

        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        raise TeacherUnavailable(
            f"--teacher {arch} --weights {w.name}: weights not in the torch cache ({cache}) and could not be "
            f"downloaded ({exc.__class__.__name__}); copy {Path(w.url).name} there, or give a local checkpoint as --teacher (scan also has --teacher auto)"
        ) from None
    return model, w


def strip_head(model):
    """Replace the final classification layer of a torchvision model with Identity, in place."""
    import torch.nn as nn

    for attr in ("fc", "classifier", "head", "heads"):
        mod = getattr(model, attr, None)
        if mod is None:
            continue
        if isinstance(mod, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model
        if isinstance(mod, nn.Sequential):
            for i in range(len(mod) - 1, -1, -1):
                if isinstance(mod[i], nn.Linear):
                    mod[i] = nn.Identity()
                    return model
    raise InputError(f"cannot find the classification head of {model.__class__.__name__} to take features from")


def load_checkpoint(path: Path, arch: str | None, device: str):
    """A TorchScript archive, or a torchvision state dict with `arch`; never unpickles code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise TeacherUnavailable(f"{path}: checkpoint not found")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                is_script = any(n.endswith("/code/") or "/code/" in n for n in z.namelist())
        except zipfile.BadZipFile:
            is_script = False
        if is_script:
            try:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    return torch.jit.load(str(path), map_location=device), "torchscript"
            except Exception as exc:
                raise TeacherUnavailable(f"{path}: not a loadable TorchScript archive ({exc})") from None
    if not arch:
        raise InputError(f"{path}: a state-dict checkpoint needs --arch (a torchvision architecture name)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = (
            "it pickles Python objects, which labelfix never executes: save model.state_dict() or a TorchScript archive"
            if "Weights only load failed" in str(exc)
            else f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        raise TeacherUnavailable(f"{path}: cannot be loaded as a state dict ({hint})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"--arch {arch!r}: not a torchvision classification model")
    heads = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    num_classes = int(heads[-1].shape[0]) if heads else 1000
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path}: does not match --arch {arch}: {str(exc).splitlines()[0]}") from None
    return model, "state_dict"


def frozen_runtime(runtime: Runtime) -> Runtime:
    """The runtime a frozen teacher computes with: "auto" precision stays float32 on CPU
    (bfloat16 was measured for the auto teacher only)."""
    if runtime.requested_precision == "auto" and runtime.device == "cpu":
        return replace(runtime, precision="fp32")
    return runtime


def load_frozen_model(cfg: TeacherConfig, device: str):
    """(model without its head, input size, mean, std) of `cfg.teacher`: a checkpoint path or a
    torchvision architecture with `cfg.weights`."""
    size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
    if Path(cfg.teacher).exists():
        model, kind = load_checkpoint(Path(cfg.teacher), cfg.arch, device)
        if kind == "state_dict":
            model = strip_head(model)
    else:
        model, w = load_torchvision(cfg.teacher, cfg.weights)
        model = strip_head(model)
        tf = w.transforms()
        size = int(getattr(tf, "crop_size", [224])[0])
        mean, std = list(tf.mean), list(tf.std)
    return model, size, mean, std


def frozen_teacher(
    images: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    cfg: TeacherConfig,
    seed: int,
    device: str | None = None,
    progress: Progress | None = None,
    *,
    runtime: Runtime | None = None,
) -> TeacherOutput:
    """Features from a pretrained or user model, probabilities from a cross-fitted linear head.
    `runtime` (else one resolved from `device` and cfg.precision) says where; see frozen_runtime."""
    import torch

    progress = progress or NullProgress()
    rt = frozen_runtime(ensure_runtime(runtime, device, cfg.precision))
    model, size, mean, std = load_frozen_model(cfg, rt.device)
    model = model.to(rt.device).eval()
    batches = Batches(as_rgb(images), rt.device, size=size, mean=mean, std=std)
    with progress.task("embed (frozen teacher)", total=len(y)) as task:
        outs = infer(
            lambda x: model(x).float().flatten(1), batches, np.arange(len(y)), cfg.batch_size, task, rt.precision
        )
    feats = torch.cat(outs).cpu().numpy()
    probs, stats = crossfit_linear_head(feats, y, num_classes, cfg.folds, seed, rt.device)
    stats["precision"] = rt.precision
    return TeacherOutput(probs, l2_normalise(feats).astype(np.float32), stats)


def validate_teacher(cfg: TeacherConfig) -> None:
    """Check `--teacher`, `--weights` and `--arch` before any image is decoded."""
    if cfg.teacher == "auto":
        unused = [f for f, v in (("--weights", cfg.weights), ("--arch", cfg.arch)) if v]
        if unused:
            raise InputError(
                f"{'/'.join(unused)}: the auto teacher is trained here from scratch; they go with --teacher "
                "(a torchvision name with --weights, a state-dict checkpoint with --arch)"
            )
        return
    path = Path(cfg.teacher)
    if path.exists():
        if not path.is_file():
            raise InputError(f"--teacher {cfg.teacher}: a directory, not a checkpoint file")
        return
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if cfg.teacher not in known:
        looks_like_path = "/" in cfg.teacher or path.suffix in (".pt", ".pth", ".ckpt", ".bin")
        raise InputError(
            f"--teacher {cfg.teacher}: checkpoint file not found"
            if looks_like_path
            else f"--teacher {cfg.teacher!r}: not 'auto', a checkpoint path, or a torchvision classification model"
        )
    if not cfg.weights:
        raise InputError(f"--teacher {cfg.teacher}: pass --weights (e.g. DEFAULT); a random-init teacher knows nothing")
    if cfg.weights != "DEFAULT":
        names = [m.name for m in torchvision.models.get_model_weights(cfg.teacher)]
        if cfg.weights not in names:
            raise InputError(f"--weights {cfg.weights!r}: unknown for {cfg.teacher} (known: {', '.join(names)})")
