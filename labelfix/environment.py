"""What labelfix runs on: library versions and hardware, for `labelfix env`, bug reports and
every run's summary.json. Never imports a library that is not installed (it says so instead)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from labelfix import __version__

LIBRARIES = ("torch", "torchvision", "numpy", "faiss", "pandas", "pyarrow", "scikit-learn", "cleanlab", "typer", "rich")
DISTRIBUTIONS = {"faiss": ("faiss-gpu", "faiss-gpu-cuvs", "faiss-cpu", "faiss")}


def library_versions() -> dict[str, str | None]:
    """Installed version of each library labelfix uses (None when not installed)."""
    versions: dict[str, str | None] = {"labelfix": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        versions[name] = None
        for dist in DISTRIBUTIONS.get(name, (name,)):
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def hardware() -> dict:
    """OS, CPU threads, CUDA and faiss's GPU count (imports torch and faiss)."""
    info: dict = {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["cuda_version"] = torch.version.cuda
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        info["torch_threads"] = None
    try:
        import faiss

        info["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        info["faiss_gpus"] = None
    return info


def environment() -> dict:
    """Everything `labelfix env` prints."""
    return {"versions": library_versions(), "hardware": hardware(), "executable": sys.executable}
