"""The one place that asks torch about hardware.

A command resolves its `Runtime` once (`resolve_runtime`: device, precision, thread count) and
passes it down; models never resolve a device or a precision themselves. `Runtime.cache_key()`
holds the fields that change numerical results, for every cache key and resumable checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from labelfix.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Runtime:
    """Where and how a command computes, resolved once.

    Attributes:
        device: "cpu" or "cuda".
        precision: "fp32" or "bf16" (resolved: never "auto").
        threads: torch's intra-op thread count (set by `resolve_runtime`).
        torch_version: torch.__version__.
        requested_precision: what the user asked for ("auto", "fp32", "bf16"); frozen teachers
            stay in float32 on CPU when it is "auto".
        native_bf16: the device computes bfloat16 natively (what "auto" picks bf16 on).
    """

    device: str
    precision: str
    threads: int
    torch_version: str
    requested_precision: str = "auto"
    native_bf16: bool = False

    def cache_key(self) -> dict:
        """The fields that change numerical results (the thread count moves float sums)."""
        return {
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
            "torch": self.torch_version,
        }

    def autocast(self, precision: str | None = None):
        """Forward-pass context: bfloat16 autocast when `precision` (default: this runtime's) is bf16."""
        return autocast(self.device, precision or self.precision)


def resolve_runtime(device: str = "auto", precision: str = "auto", threads: int | None = None) -> Runtime:
    """Resolve device and precision once for a command, and set torch's thread count
    (default: the current one, which OMP_NUM_THREADS sets at start-up)."""
    import torch

    if threads is not None and int(threads) < 1:
        raise InputError(f"--threads must be >= 1 (got {threads})")
    dev = resolve_device(device)
    check_precision(precision)
    n = int(threads) if threads is not None else torch.get_num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    native = _native_bf16(dev)
    resolved = precision if precision != "auto" else ("bf16" if native else "fp32")
    return Runtime(dev, resolved, n, torch.__version__, precision, native)


def resolve_device(name: str = "auto") -> str:
    import torch

    if name not in DEVICES:
        raise InputError(f"--device must be auto, cpu or cuda (got {name!r})")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch")
    return name


def seed_everything(seed: int) -> None:
    """Seed torch's generators (labelfix passes explicit numpy Generators everywhere else)."""
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def check_precision(precision: str) -> None:
    """The one-line error for a --precision value that is not one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")


def resolve_precision(device: str, precision: str = "auto") -> str:
    """ "fp32" or "bf16". auto = bfloat16 where the hardware computes it natively (CUDA GPUs with
    bf16, CPUs with AVX512-BF16 or AMX: about 2x faster training at the same accuracy, measured in
    docs/experiments.md), else float32. Commands use `resolve_runtime`, which applies this rule."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if _native_bf16(device) else "fp32"


def _native_bf16(device: str) -> bool:
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return cpu_has_native_bf16()


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


def ensure_runtime(runtime: Runtime | None, device: str | None = None, precision: str = "auto") -> Runtime:
    """`runtime` itself, or (callers of the 0.2 signatures, which passed a device string) one
    resolved from `device` and `precision` without touching the thread count."""
    if runtime is None:
        return resolve_runtime(device or "auto", precision)
    if device not in (None, "auto", runtime.device):
        raise ValueError(f"device {device!r} contradicts the runtime's {runtime.device!r}")
    return runtime
