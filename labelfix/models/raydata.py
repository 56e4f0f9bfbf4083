"""`labelfix embed --ray ADDRESS`: labelfix.models.extract's feature extraction as a Ray Data
pipeline. Rows {"row", "path"} in CSV order -> map_batches(probe_batch) (image headers, tasks)
-> map_batches(RayEmbedder) (decode + forward, one actor per worker holding the model) -> batches
gathered on the driver by their row index, so the output is in CSV order whatever order the
workers finish in. Ray is an optional extra (`pip install 'labelfix[ray]'`); nothing here imports
it at module level, so workers and the single-process path load this module without it."""

from __future__ import annotations

import logging
import math
import os
import socket
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from labelfix.errors import InputError, LabelfixError
from labelfix.models.extract import Embedder, Gathered, ModelSpec, batch_rows, decode_side, probe_batch
from labelfix.progress import NullProgress, Progress

RAY_HINT = "pip install 'labelfix[ray]'"
ADDRESS_FORMS = "auto, local, ray://HOST:PORT (Ray Client, port 10001) or HOST:PORT (the head's GCS, port 6379)"
PROBE_TIMEOUT_S = 5.0  # a dead address fails in seconds here; ray.init retried for 30 s to over 3 minutes
MAX_BLOCKS = 1000  # source blocks of row/path pairs (each worker batch is `chunk` rows of a block)


def import_ray():
    """The ray module, or the one-line error naming the extra (exit 2)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--ray: Ray is not installed: {RAY_HINT}") from None
    return ray


def check_address(address: str) -> str:
    """The address to give ray.init: `auto` (RAY_ADDRESS, else the cluster `ray start` left on
    this machine), `local` (a new single-machine cluster), or an explicit one, whose port must
    answer a TCP connect within PROBE_TIMEOUT_S."""
    a = address.strip()
    if a == "local":
        return a
    if a == "auto":
        found = _auto_address()
        return check_address(found) if found else a
    client = a.startswith("ray://")
    host, sep, port = a[len("ray://") if client else 0 :].rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise InputError(f"--ray {a!r}: not a Ray address (expected {ADDRESS_FORMS})")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or exc.__class__.__name__
        raise InputError(f"--ray {a}: nothing answers at {host}:{port} ({why}); is the Ray cluster running?") from None
    if client:
        try:
            import grpc  # noqa: F401  (Ray Client's transport, in ray[client])
        except ImportError:
            raise InputError(f"--ray {a}: Ray Client (ray://) needs ray[client]: {RAY_HINT}") from None
    return a


def _auto_address() -> str | None:
    """What `auto` means: RAY_ADDRESS, else the cluster `ray start` last started on this
    machine (Ray's own lookup; a stale record of a stopped cluster then fails the port probe)."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    try:
        from ray._private.services import get_ray_address_from_environment

        found = get_ray_address_from_environment("auto", None)
    except ConnectionError:
        found = None
    except Exception:  # pragma: no cover (Ray moved its private helper): ray.init looks itself
        return None
    if not found or found == "auto":
        raise InputError(
            "--ray auto: no Ray cluster found (set RAY_ADDRESS, start one with `ray start --head`, or use --ray local)"
        )
    return found


@contextmanager
def connected(address: str) -> Iterator[tuple[object, str]]:
    """(ray, the address used): connect for the block and disconnect after it; a session the
    caller already opened (ray.init in a notebook) is used as it is and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray, "(already connected)"
        return
    target = check_address(address)
    try:
        ray.init(address=target, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        msg = " ".join(str(exc).split())[:300]
        raise InputError(
            f"--ray {address}: cannot connect to a Ray cluster ({exc.__class__.__name__}: {msg})"
        ) from None
    try:
        yield ray, target
    finally:
        ray.shutdown()


def _quiet(ray) -> None:
    """Ray Data's progress bars and execution logs off: labelfix reports progress itself."""
    import warnings

    with warnings.catch_warnings():  # Ray's own defaults trip its deprecation warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
    for name, value in (("enable_progress_bars", False), ("print_on_execution_start", False)):
        if hasattr(ctx, name):
            setattr(ctx, name, value)
    if hasattr(ctx, "enable_auto_log_stats"):
        ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # else a warning that the bars are off


def _cause(exc: BaseException) -> LabelfixError | None:
    """The labelfix error a worker raised (an unreadable image...), out of Ray's wrappers."""
    seen = 0
    while exc is not None and seen < 20:
        inner = getattr(exc, "cause", None)
        if isinstance(exc, LabelfixError) and not isinstance(inner, BaseException):
            return exc
        exc = inner if isinstance(inner, BaseException) else (exc.__cause__ or exc.__context__)
        seen += 1
    return None


class RayEmbedder(Embedder):
    """Embedder whose model bytes come from Ray's object store (`blob` = [ObjectRef]): one
    ray.put on the driver, fetched once per worker; workers need no copy of the checkpoint."""

    @staticmethod
    def _bytes(blob):
        import ray

        return ray.get(blob[0])


def _gather(ds, n: int, task) -> Gathered:
    got = Gathered(n)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            task.advance(got.add(batch))
    except Exception as exc:
        cause = _cause(exc)
        if cause is not None:
            raise cause from None
        raise
    return got.check()


def extract_ray(paths: list[str], spec: ModelSpec, opts: dict, address: str, progress: Progress | None = None) -> dict:
    """extract.extract_local's result, computed by a Ray Data pipeline on the cluster at
    `address`. `opts` as extract_local's, plus `workers` (0: one per CPU, or per GPU when the
    workers compute on CUDA). Adds "workers", "nodes", "device" and "address" to the result.
    Through Ray Client (ray://), whose drivers cannot run Ray Data, the pipeline's driver runs as
    one task on the cluster and sends the features back."""
    progress = progress or NullProgress()
    with connected(address) as (ray, target):
        if _is_client(ray):
            with progress.task("embed on Ray (through Ray Client: the pipeline runs on the cluster)", total=None):
                try:
                    got = ray.get(ray.remote(num_cpus=0)(run_pipeline).remote(paths, spec, opts))
                    got["feats"] = np.array(got["feats"])  # writable: ray.get's arrays are read-only views
                except Exception as exc:
                    cause = _cause(exc)
                    if cause is not None:
                        raise cause from None
                    raise
        else:
            got = run_pipeline(paths, spec, opts, progress)
    return dict(got, address=target)


def _is_client(ray) -> bool:
    try:
        return bool(ray.util.client.ray.is_connected())
    except AttributeError:  # pragma: no cover (older layouts)
        return False


def run_pipeline(paths: list[str], spec: ModelSpec, opts: dict, progress: Progress | None = None) -> dict:
    """The Ray Data pipeline, driven from this process (connected to the cluster)."""
    import pandas as pd
    import ray

    progress = progress or NullProgress()
    _quiet(ray)
    res = ray.cluster_resources()
    gpu = opts["device"] == "cuda" or (opts["device"] == "auto" and res.get("GPU", 0) >= 1)
    if gpu and res.get("GPU", 0) < 1:
        raise InputError("--device cuda: the Ray cluster has no GPU")
    unit = "GPU" if gpu else "CPU"
    workers = int(opts["workers"] or max(1, int(res.get(unit, 1))))
    if workers > res.get(unit, 0):  # Ray Data would wait for them forever
        have = int(res.get(unit, 0))
        raise InputError(f"--workers {workers}: the Ray cluster has {have} {unit}s (each worker takes one)")
    n = len(paths)
    chunk = max(1, min(opts["batch_size"], math.ceil(n / (2 * workers))))
    block = max(chunk, math.ceil(n / MAX_BLOCKS))
    frames = [pd.DataFrame({"row": r, "path": [paths[i] for i in r]}) for r in batch_rows(n, block)]
    source = ray.data.from_pandas(frames)
    csv_name = opts["csv_name"]
    probes = source.map_batches(probe_batch, fn_kwargs={"csv_name": csv_name}, batch_size=chunk, num_cpus=1)
    with progress.task("probe images (Ray)", total=n) as task:
        c = _gather(probes, n, task).columns
    side = decode_side(c["width"], c["height"], opts["image_size"])
    device = "cuda" if gpu else "cpu"
    args = dict(blob=[ray.put(spec.blob)], arch=spec.arch, size=spec.size, mean=spec.mean, std=spec.std)
    args.update(side=side, device=device, precision=opts["precision"])
    args.update(batch_size=opts["batch_size"], csv_name=csv_name, threads=2)
    feats = source.map_batches(
        RayEmbedder,
        fn_constructor_kwargs=args,
        batch_size=chunk,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
    )
    with progress.task(f"embed (frozen teacher) on Ray, {workers} workers", total=n) as task:
        got = _gather(feats, n, task)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    cols = got.columns
    return {
        "feats": cols["feat"],
        "sha256": cols["sha256"],
        "side": side,
        "channels": int(cols["channels"].max()),
        "runtimes": got.runtimes,
        "workers": workers,
        "nodes": nodes,
        "device": device,
    }
