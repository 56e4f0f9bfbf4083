"""kNN graph on L2-normalised embeddings with FAISS (inner product = cosine similarity).

Exact (flat) search while N is below `exact_limit`, HNSW (CPU) or IVF (GPU) above it; a GPU
index whenever a CUDA device and faiss-gpu are both present. Memory is O(N k) for the result
plus the index itself; queries run in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .progress import NullProgress, Progress


@dataclass(frozen=True)
class KnnGraph:
    """ids: (N, k) int64 neighbour rows (self excluded); sims: (N, k) float32 cosine similarities."""

    ids: np.ndarray
    sims: np.ndarray
    index_kind: str


def faiss_gpu_available() -> bool:
    import faiss

    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:
        return False


def build_knn(
    emb: np.ndarray,
    k: int,
    device: str = "cpu",
    exact_limit: int = 250_000,
    chunk: int = 65_536,
    progress: Progress | None = None,
) -> KnnGraph:
    """k nearest neighbours of every row of `emb` (N, D), excluding the row itself.

    Searches k+1 and removes the row's own id wherever it appears (duplicates may tie with it
    and come first); if it does not appear, the last neighbour is dropped instead.
    """
    import faiss

    progress = progress or NullProgress()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    k = min(k, n - 1)
    use_gpu = device == "cuda" and faiss_gpu_available()
    if n <= exact_limit:
        index = faiss.IndexFlatIP(d)
        kind = "flat"
    elif use_gpu:
        nlist = int(4 * np.sqrt(n))
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(emb[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))])
        index.nprobe = 32
        kind = f"ivf{nlist}"
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = max(64, 2 * k)
        kind = "hnsw32"
    if use_gpu:
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        kind = "gpu-" + kind
    for s in range(0, n, chunk):
        index.add(emb[s : s + chunk])
    ids = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    with progress.task(f"kNN graph ({kind})", total=n) as task:
        for s in range(0, n, chunk):
            q = emb[s : s + chunk]
            dist, nbr = index.search(q, k + 1)
            own = np.arange(s, s + len(q))[:, None]
            is_self = nbr == own
            # Drop the self hit if present, otherwise the last column.
            drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
            keep = np.ones_like(nbr, dtype=bool)
            keep[np.arange(len(q)), drop] = False
            ids[s : s + len(q)] = nbr[keep].reshape(len(q), k)
            sims[s : s + len(q)] = dist[keep].reshape(len(q), k)
            task.advance(len(q))
    # Approximate indexes may return -1 for missing neighbours: point them at self with weight 0.
    missing = ids < 0
    if missing.any():
        rows = np.nonzero(missing)[0]
        ids[missing] = rows
        sims[missing] = 0.0
    return KnnGraph(ids, sims, kind)
