"""kNN graph on L2-normalised embeddings with FAISS (inner product = cosine similarity).

Exact (flat) search while N is below `exact_limit`, HNSW (CPU) or IVF (GPU) above it; a GPU
index whenever a CUDA device and faiss-gpu are both present. Memory is O(N k) for the result
plus the index itself; queries run in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfix.progress import NullProgress, Progress


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
    rows: np.ndarray | None = None,
) -> KnnGraph:
    """k nearest neighbours of every row of `emb` (N, D), excluding the row itself; with `rows`,
    of those rows only (the result then has len(rows) rows, neighbours still among all N).

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
    query = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    m = len(query)
    ids = np.empty((m, k), dtype=np.int64)
    sims = np.empty((m, k), dtype=np.float32)
    with progress.task(f"kNN graph ({kind})", total=m) as task:
        for s in range(0, m, chunk):
            own = query[s : s + chunk, None]
            q = emb[own[:, 0]]
            dist, nbr = index.search(q, k + 1)
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
        ids[missing] = np.broadcast_to(query[:, None], ids.shape)[missing]
        sims[missing] = 0.0
    return KnnGraph(ids, sims, kind)


def build_knn_out_of_fold(
    emb: np.ndarray, fold_of_row: np.ndarray, k: int, device: str = "cpu", progress: Progress | None = None
) -> KnnGraph:
    """A kNN graph in which no row is placed by a model that trained on its own label.

    For a K-fold cross-fitted teacher `emb` is the K fold models' L2-normalised features side
    by side (K equal blocks). A row held out from fold model f finds its neighbours (among all
    rows) in block f, the space of the model that never saw its label. Measured on the image
    benchmark rows: in the whole concatenated space (half of each row's features trained on its
    own label) the neighbour vote echoed the given labels and the noise rate was underestimated
    (digits 3 classes, 30% noise: 0.175 estimated vs 0.26 true, flag F1 0.774); out of fold 0.274
    and F1 0.938 (cleanlab's best 0.898). Linking held-out rows only among themselves did as
    well on digits but halves the neighbour pool, which cost small sets (400 digits: refined
    accuracy 0.82 instead of 0.86) and Fashion-MNIST long-tail (F1 0.823 instead of 0.840).
    """
    folds = np.unique(fold_of_row)
    n, dim = emb.shape
    if dim % len(folds):
        raise ValueError(f"embeddings of width {dim} cannot hold {len(folds)} equal fold blocks")
    d = dim // len(folds)
    k_eff = max(1, min(k, n - 1))
    ids = np.empty((n, k_eff), dtype=np.int64)
    sims = np.empty((n, k_eff), dtype=np.float32)
    kind = None
    for j, f in enumerate(folds):
        held = np.flatnonzero(fold_of_row == f)
        block = np.asarray(emb[:, j * d : (j + 1) * d], dtype=np.float32)
        block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        g = build_knn(block, k_eff, device, progress=progress, rows=held)
        ids[held] = g.ids
        sims[held] = g.sims
        kind = g.index_kind
    return KnnGraph(ids, sims, f"{kind} out of fold ({len(folds)} folds)")
