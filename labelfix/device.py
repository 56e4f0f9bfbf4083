"""The one place that asks torch about hardware."""

from __future__ import annotations

from .errors import InputError


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda (got {name!r})")
    return name


def seed_everything(seed: int) -> None:
    """Seed torch's generators (labelfix passes explicit numpy Generators everywhere else)."""
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
