"""Per-epoch checkpoints of a resumable training run (distill's student).

A checkpoint holds a key (what is trained on, how, and on which runtime), the last finished
epoch, the model and optimiser states and the epoch logs. `read_checkpoint` resumes only a
checkpoint with the same key and discards, with a warning, one that cannot be read or does not
fit the model (truncated, foreign, edited): a damaged file never blocks a later run.
Writes go through `labelfix.files.outputs.atomic_write_bytes` (or the `write` given), so a
failed write leaves no temporary file and the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

from labelfix.files.outputs import atomic_write_bytes
from labelfix.models.train import LoopState
from labelfix.runtime import Runtime


def checkpoint_key(config: dict, description: str, runtime: Runtime, arrays) -> str:
    """16 hex digits over the config, the run's description, the runtime's numerical fields and
    the training arrays (row indices, targets, weights): a checkpoint left by a run on other
    labels, or under another thread count or precision, is never resumed."""
    h = hashlib.sha256(json.dumps([config, description, runtime.cache_key()], sort_keys=True).encode())
    for arr in arrays:
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def torch_bytes(obj) -> bytes:
    """torch.save of `obj` (tensors, dicts, lists, strings), in memory."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_checkpoint(
    path: Path, key: str, state: LoopState, logs: list, write: Callable[[Path, bytes], None] | None = None
) -> None:
    """Save `state` after its last epoch, with `logs`, atomically."""
    payload = dict(state.state_dict(), key=key, logs=json.dumps(logs))
    if payload["sched"] is None:
        del payload["sched"]
    (write or atomic_write_bytes)(Path(path), torch_bytes(payload))


def read_checkpoint(path: Path, key: str, model, epochs: int) -> tuple[dict | None, str | None]:
    """(checkpoint to resume, None), (None, None) when there is none for this key, or (None,
    warning) when the file is damaged or foreign; that file is removed."""
    import torch

    path = Path(path)
    if not path.exists():
        return None, None
    try:
        if not path.is_file():
            raise ValueError("not a file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and state.get("key") != key and isinstance(state.get("key"), str):
            return None, None  # another run's checkpoint: replaced after this run's first epoch
        _check_checkpoint(state, model, epochs)
    except Exception as exc:  # torch.load raises many types for a damaged file
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        if path.is_file():
            path.unlink(missing_ok=True)
        return None, (
            f"{path}: damaged or not a labelfix checkpoint ({type(exc).__name__}: {reason}); "
            "discarded, training from the first epoch"
        )
    return state, None


def _check_checkpoint(state, model, epochs: int) -> None:
    """Raise ValueError unless `state` is a checkpoint `model` can resume from."""
    if not isinstance(state, dict) or not {"key", "epoch", "model", "opt", "logs"} <= set(state):
        raise ValueError("missing key, epoch, model, opt or logs")
    epoch = state["epoch"]
    if not isinstance(epoch, int) or not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch!r} outside 0..{epochs - 1}")
    logs = json.loads(state["logs"]) if isinstance(state["logs"], str) else None
    if not isinstance(logs, list) or len(logs) != epoch + 1 or not all(isinstance(x, dict) for x in logs):
        raise ValueError("logs do not list the finished epochs")
    own = model.state_dict()
    saved = state["model"]
    if not isinstance(saved, dict) or set(saved) != set(own):
        raise ValueError("model parameters do not match")
    for name, t in own.items():
        s = saved[name]
        if getattr(s, "shape", None) != t.shape or getattr(s, "dtype", None) != t.dtype:
            raise ValueError(f"{name}: shape or dtype does not match")
    params = list(model.parameters())
    opt = state["opt"]
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    if not isinstance(groups, list) or sum(len(g.get("params", [])) for g in groups) != len(params):
        raise ValueError("optimiser parameters do not match")
    for i, entry in (opt.get("state") or {}).items():
        for v in entry.values() if isinstance(entry, dict) else ():
            if getattr(v, "ndim", 0) and (not 0 <= int(i) < len(params) or v.shape != params[int(i)].shape):
                raise ValueError("optimiser state does not match the parameters")


def resume_from(state: dict | None) -> Callable:
    """A `fit(resume=...)` hook: loads `state` (from read_checkpoint) and returns the epoch
    after it, or 0 without one (optimiser state moves to the parameters' device on loading)."""

    def resume(model, optimizer, scheduler) -> int:
        if state is None:
            return 0
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["opt"])
        if scheduler is not None and state.get("sched") is not None:
            scheduler.load_state_dict(state["sched"])
        return int(state["epoch"]) + 1

    return resume
