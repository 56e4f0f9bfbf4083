"""Large label spaces: per-row scores on a few candidate classes instead of dense N x C arrays.

Above SPARSE_ABOVE classes, labelfix.core.detect keeps for every row a fixed-width candidate set
S_i of M = 1 + m P + k G classes (P probability experts, G graphs): the given label (slot 0),
the top-m classes of each probability expert, and the given labels of the row's k neighbours
in each graph; a class listed twice keeps its first slot, the others are empty (class -1).
Every expert is a proper distribution over all C classes: its values on S_i plus one value
`out` shared by each of the C - |S_i| classes outside (the mass it leaves there, spread
evenly). A probability expert's values are exact on S_i (scan keeps them: its top-m, its value
at the given label and at each neighbour's label, so refine rebuilds the same numbers); the
vote's are exact wherever a neighbour carries the class. Log-pools, the likelihood of the given
label and the posterior are exact on that representation, the outside classes one bucket:
memory O(N (k + m)), computed in chunks of rows; T stays dense C x C.

Why 64 classes: with m = 10 and k = 20 a row has M = 31 candidate slots (about 23 distinct
classes on clustered data), so below about 2M = 62 classes the candidates are half the classes
or more and nothing is saved; at C = 64 a million rows cost 0.5 GB per dense float64 array,
which the dense path still affords. Up to 64 classes everything stays dense and bit-identical
to before (all of the benchmark matrix); above, measured against the dense path on the same
inputs, flag F1 was equal or higher (C = 100, 300, 1,000: tests/test_large_c.py, README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPARSE_ABOVE = 64  # classes above which detection, refine and the outputs go sparse
TOP_M = 10  # classes listed per row for each probability expert and in the outputs
# scan.parquet's teacher columns above SPARSE_ABOVE (teacher_probs below), refined.parquet's soft label
TOP_COLUMNS = ("teacher_top_classes", "teacher_top_probs", "teacher_given_prob", "teacher_neighbour_probs")
SOFT_COLUMNS = ("soft_top_classes", "soft_top_probs")


def is_sparse(c: int) -> bool:
    return int(c) > SPARSE_ABOVE


def chunk_rows(width: int) -> int:
    """Rows per chunk so a chunk of float64 scores stays near 8 MB whatever the width."""
    return max(256, (1 << 20) // max(int(width), 1))


def chunks(n: int, width: int):
    step = chunk_rows(width)
    for lo in range(0, n, step):
        yield slice(lo, min(n, lo + step))


def read_rows(arr, s: slice, dtype=np.float32) -> np.ndarray:
    """A copy of arr[s] in `dtype`. Where `arr` is a read-only memory map (--pred-probs,
    --embeddings), the pages just read are then dropped from this process (they stay in the
    page cache): a pass over a 4 GB input adds a block to the resident set, not 4 GB."""
    view = arr[s]
    with np.errstate(over="ignore"):
        out = np.array(view, dtype=dtype)
    drop_pages(view)
    return out


def drop_pages(view) -> None:
    """madvise(MADV_DONTNEED) over a read-only np.memmap's bytes (Linux). Only a read-only file
    mapping qualifies: its pages are reread from the file when next touched, never lost."""
    import sys

    if not (isinstance(view, np.memmap) and view.mode == "r" and sys.platform.startswith("linux") and view.nbytes):
        return
    if not view.flags.c_contiguous:  # a Fortran-ordered file's row block is spread over all of it
        return
    import ctypes
    import mmap

    addr = view.__array_interface__["data"][0]
    start = addr - addr % mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(addr + view.nbytes - start), 4)  # MADV_DONTNEED


@dataclass(frozen=True)
class TopM:
    """Per row, the m most probable classes (most probable first) and their probabilities; the
    rest of the row's mass is spread evenly over the C - m classes not listed.

    A probability expert of detection also carries `given`, its probability at the row's given
    label, and `neighbours`, its probability at each graph neighbour's given label (aligned
    with the graph's columns): every candidate class of the row then has its exact value.

    Array-like: `shape` is (N, C) and np.asarray(top) gives the dense rows (N x C float32:
    large); `to_dense(rows)` densifies a subset."""

    classes: np.ndarray  # (N, m) int32 (-1: an empty slot, probability 0)
    probs: np.ndarray  # (N, m) float32
    num_classes: int
    given: np.ndarray | None = None  # (N,) float32
    neighbours: np.ndarray | None = None  # (N, k) float32

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.classes), int(self.num_classes))

    def __len__(self) -> int:
        return len(self.classes)

    def argmax(self, axis: int = 1) -> np.ndarray:
        if axis != 1:
            raise ValueError("TopM.argmax works along rows (axis=1) only")
        return self.classes[:, 0].astype(np.int64)

    def to_dense(self, rows=None) -> np.ndarray:
        cls = self.classes if rows is None else self.classes[rows]
        val = self.probs if rows is None else self.probs[rows]
        listed = cls >= 0  # -1: no class in that slot
        mass = np.where(listed, val, 0.0).astype(np.float64).sum(axis=1)
        rest = np.clip(1.0 - mass, 0.0, 1.0) / np.maximum(self.num_classes - listed.sum(axis=1), 1)
        out = np.repeat(rest.astype(np.float32)[:, None], self.num_classes, axis=1)
        r, j = np.nonzero(listed)
        out[r, cls[r, j]] = val[r, j]
        return out

    def __array__(self, dtype=None, copy=None):
        dense = self.to_dense()
        return dense if dtype is None else dense.astype(dtype)


def top_m(probs, m: int = TOP_M, y: np.ndarray | None = None, ids: np.ndarray | None = None) -> TopM:
    """The top-m of (N, C) scores, in chunks of rows (ties: argpartition's order, then stable);
    with `y`, the value at each row's given label too, and with `ids` (a kNN graph) at each
    neighbour's given label."""
    n, c = probs.shape
    m = min(int(m), c)
    cls = np.empty((n, m), dtype=np.int32)
    val = np.empty((n, m), dtype=np.float32)
    given = None if y is None else np.empty(n, dtype=np.float32)
    near = None if ids is None else np.empty(ids.shape, dtype=np.float32)
    for s in chunks(n, c):
        block = read_rows(probs, s)
        part = np.argpartition(-block, m - 1, axis=1)[:, :m] if m < c else np.tile(np.arange(c), (len(block), 1))
        v = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-v, axis=1, kind="stable")
        cls[s] = np.take_along_axis(part, order, axis=1)
        val[s] = np.take_along_axis(v, order, axis=1)
        if y is not None:
            given[s] = block[np.arange(len(block)), y[s]]
        if ids is not None:
            near[s] = np.take_along_axis(block, y[np.maximum(np.asarray(ids[s]), 0)], axis=1)
    return TopM(cls, val, c, given, near)


@dataclass(frozen=True)
class Candidates:
    """cls: (N, M) int32 candidate classes, -1 where a slot is empty; slot 0 is the given label.
    n_out: (N,) number of classes outside the row's candidates (C - listed)."""

    cls: np.ndarray
    n_out: np.ndarray
    num_classes: int

    def valid(self, s=slice(None)) -> np.ndarray:
        return self.cls[s] >= 0

    def transition_at(self, transition: np.ndarray, y: np.ndarray, s=slice(None), col=None):
        """(T[S_i, y_i] (n, M), 0 at empty slots; sum of T[j, y_i] over the classes outside).
        `col`: transition.sum(axis=0), when the caller has it."""
        cls, yy = self.cls[s], y[s]
        t = np.where(cls >= 0, transition[np.maximum(cls, 0), yy[:, None]], 0.0)
        col = transition.sum(axis=0) if col is None else col
        return t, np.clip(col[yy] - t.sum(axis=1), 0.0, None)


def candidates(y: np.ndarray, lists: list[TopM], graphs: list[np.ndarray], c: int) -> Candidates:
    """The given label, each list's classes and each graph's neighbours' labels, duplicates
    emptied (a class keeps its first slot)."""
    n = len(y)
    width = 1 + sum(t.classes.shape[1] for t in lists) + sum(g.shape[1] for g in graphs)
    cls = np.empty((n, width), dtype=np.int32)
    for s in chunks(n, width * 4):
        parts = [y[s, None]] + [t.classes[s] for t in lists]
        parts += [np.where(g[s] >= 0, y[np.maximum(g[s], 0)], -1) for g in graphs]
        block = np.concatenate(parts, axis=1).astype(np.int32)
        order = np.argsort(block, axis=1, kind="stable")  # equal classes: earlier slot first
        srt = np.take_along_axis(block, order, axis=1)
        dup = np.zeros_like(block, dtype=bool)
        dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
        later = np.zeros_like(dup)
        np.put_along_axis(later, order, dup, axis=1)
        block[later] = -1
        cls[s] = block
    n_out = (c - (cls >= 0).sum(axis=1)).astype(np.int64)
    return Candidates(cls, n_out, c)


@dataclass(frozen=True)
class Scores:
    """A per-row distribution over C classes on the candidates: val (N, M) at the candidate
    slots (0 where empty) and out (N,), the value of each class outside them."""

    val: np.ndarray
    out: np.ndarray


def probs_on(cands: Candidates, probs, top: TopM, y: np.ndarray, ids: np.ndarray | None) -> Scores:
    """A probability expert on the candidates: exact where it is known (every candidate with a
    dense (N, C) `probs`; with `probs` None, the classes of its TopM: top-m, the given label and,
    with `ids`, the neighbours' labels), its remaining mass spread evenly over the other classes."""
    n, c = top.shape
    val = np.zeros(cands.cls.shape, dtype=np.float32)
    out = np.zeros(n, dtype=np.float64)
    for s in chunks(n, cands.cls.shape[1] * 4):
        cls = cands.cls[s]
        if probs is not None:
            v = np.take_along_axis(read_rows(probs, s), np.maximum(cls, 0), axis=1)
        else:
            v = np.full(cls.shape, np.nan, dtype=np.float32)
            lists = [(top.classes[s], top.probs[s]), (y[s, None], top.given[s, None])]
            if ids is not None and top.neighbours is not None:
                lists.append((y[np.maximum(np.asarray(ids[s]), 0)], top.neighbours[s]))
            for lc, lv in lists:
                for j in range(lc.shape[1]):
                    v = np.where(cls == lc[:, j : j + 1], lv[:, j : j + 1], v)
        known = (cls >= 0) & ~np.isnan(v)
        mass = np.where(known, v, 0.0).astype(np.float64).sum(axis=1)
        u = np.clip(1.0 - mass, 0.0, None) / np.maximum(c - known.sum(axis=1), 1)
        val[s] = np.where(known, v, np.where(cls >= 0, u[:, None], 0.0))
        out[s] = u
    return Scores(val, out)


def neighbour_weights(ids, sims, trust: np.ndarray, gamma: float, s) -> np.ndarray:
    """max(0, s)^gamma * trust of each neighbour, as labelfix.core.detect.neighbour_vote."""
    return np.maximum(np.asarray(sims[s]), 0.0).astype(np.float64) ** gamma * trust[np.asarray(ids[s])]


def vote_on(cands: Candidates, ids, sims, y, trust: np.ndarray, gamma: float) -> Scores:
    """labelfix.core.detect.neighbour_vote on the candidates: (W_ij + s0 prior_j) / (total_i +
    s0) at every candidate (exact: each neighbour's label is a candidate); the smoothing mass
    of the classes outside spread evenly over them."""
    n, k = ids.shape
    c = cands.num_classes
    total = np.concatenate([neighbour_weights(ids, sims, trust, gamma, s).sum(axis=1) for s in chunks(n, k)])
    prior = np.bincount(y, minlength=c) / max(len(y), 1)
    s0 = max(float(total.mean()) / max(k, 1), 1e-12)
    val = np.zeros(cands.cls.shape, dtype=np.float32)
    out = np.zeros(n, dtype=np.float64)
    for s in chunks(n, cands.cls.shape[1] * k):
        cls = cands.cls[s]
        w = neighbour_weights(ids, sims, trust, gamma, s)
        lab = y[np.asarray(ids[s])]
        acc = np.zeros(cls.shape)
        for j in range(k):
            acc += w[:, j : j + 1] * (cls == lab[:, j : j + 1])
        p = np.where(cls >= 0, prior[np.maximum(cls, 0)], 0.0)
        den = total[s] + s0
        val[s] = np.where(cls >= 0, (acc + s0 * p) / den[:, None], 0.0)
        left = s0 * np.clip(1.0 - p.sum(axis=1), 0.0, None) / den
        out[s] = np.where(cands.n_out[s] > 0, left / np.maximum(cands.n_out[s], 1), 0.0)
    return Scores(val, out)


def vote_argmax(ids, sims, y: np.ndarray, c: int, gamma: float) -> np.ndarray:
    """argmax of the plain vote (every neighbour trusted) without an N x C array: the most
    weighted neighbour label (plus its prior share), or the largest class when no neighbour
    weighs more than the prior does."""
    n, k = ids.shape
    ones = np.ones(n)
    total = np.concatenate([neighbour_weights(ids, sims, ones, gamma, s).sum(axis=1) for s in chunks(n, k)])
    prior = np.bincount(y, minlength=c) / max(n, 1)
    s0 = max(float(total.mean()) / max(k, 1), 1e-12)
    pred = np.empty(n, dtype=np.int64)
    for s in chunks(n, k * k):
        w = neighbour_weights(ids, sims, ones, gamma, s)
        lab = y[np.asarray(ids[s])]
        score = (w[:, None, :] * (lab[:, :, None] == lab[:, None, :])).sum(axis=2) + s0 * prior[lab]
        best = score.argmax(axis=1)
        top = score[np.arange(len(lab)), best]
        pred[s] = np.where(top > s0 * prior.max(), lab[np.arange(len(lab)), best], int(prior.argmax()))
    return pred
