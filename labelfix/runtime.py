"""The one place that asks torch about hardware."""

from __future__ import annotations

from labelfix.errors import InputError


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


PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> None:
    """The one-line error for a --precision value that is not one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")


def resolve_precision(device: str, precision: str = "auto") -> str:
    """ "fp32" or "bf16". auto = bfloat16 where the hardware computes it natively (CUDA GPUs with
    bf16, CPUs with AVX512-BF16 or AMX: about 2x faster training at the same accuracy, measured in
    docs/experiments.md), else float32."""
    import torch

    check_precision(precision)
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX instructions (CPUs without them emulate bfloat16, slower than fp32)."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast(device: str, precision: str):
    """Context for forward passes: bfloat16 autocast when `precision` (resolved) is bf16."""
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()
