"""Label issues from arrays: the pure core of `scan`.

Arrays in (given labels, out-of-sample probabilities, a kNN graph), a typed result out; no files,
no printing. `labelfix.commands.scan` (files) and `labelfix.api.find_label_issues` (arrays) both
call `find_issues`, so the CLI and the Python API flag the same rows on the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfix.core.detect import Detection, detect, neighbour_vote
from labelfix.core.graph import KnnGraph
from labelfix.core.scoring import alternative_label, label_quality
from labelfix.core.selection import NoiseEstimate, confident_joint, per_sample_loss, small_loss_mask
from labelfix.core.sparse import TopM, chunks, is_sparse, read_rows, vote_argmax
from labelfix.errors import WeakTeacher


def feature_space(probs: np.ndarray, features: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Unit-norm float32 rows to build the kNN graph in, and what they come from; made block by
    block into one new array (the input may be a memory map in any real dtype).

    With features (embeddings) the graph is independent evidence; without, it is built on the
    square roots of the probabilities (Hellinger geometry), which only smooths them."""
    src, source = (features, "embeddings") if features is not None else (probs, "pred_probs")
    out = np.empty(src.shape, dtype=np.float32)
    for s in chunks(*src.shape):
        block = read_rows(src, s)
        block = np.sqrt(block) if features is None else block
        with np.errstate(over="ignore", under="ignore"):
            norm = np.linalg.norm(block, axis=1, keepdims=True)
        out[s] = block / np.maximum(norm, 1e-12)
        far = np.flatnonzero(~np.isfinite(norm[:, 0]) | ((norm[:, 0] < 1e-12) & block.any(axis=1)))
        if len(far):  # float32 squares overflowed (|x| ~ 1e19+) or underflowed: the norm in float64
            wide = block[far].astype(np.float64)
            out[s.start + far] = wide / np.linalg.norm(wide, axis=1, keepdims=True)
    return out, source


@dataclass(frozen=True)
class Issues:
    """What `find_issues` found, one entry per row (arrays of length N) plus the run-level facts."""

    flags: np.ndarray  # bool: the given label is probably wrong
    p_wrong: np.ndarray  # P(given label wrong | evidence): the issue score
    posterior: np.ndarray  # (N, C) P(true class | evidence, given label)
    suggested: np.ndarray  # int: most probable other class where flagged, else the given class
    quality: np.ndarray  # label quality of the given label under the fitted evidence
    small_loss: np.ndarray  # bool: in the small-loss (probably clean) selection
    noise: NoiseEstimate  # Confident Learning's estimate (the noise model's starting point)
    detection: Detection
    check: dict  # the weak-teacher check
    warnings: tuple[str, ...]
    graph_from_probs: bool
    teacher_top: TopM | None = None  # above SPARSE_ABOVE classes: the probabilities' top-m (scan.parquet)

    @property
    def clean_prob(self) -> np.ndarray:
        return (1.0 - self.p_wrong).astype(np.float32)

    def dense_posterior(self) -> np.ndarray:
        """(N, C) posterior; densified above SPARSE_ABOVE classes (N x C float32: image runs need it
        for the duplicates' consensus)."""
        det = self.detection
        if det.candidates is None:
            return self.posterior
        from labelfix.core.detect_sparse import dense_rows

        return dense_rows(self.posterior, det.candidates)

    def noise_matrix(self, y: np.ndarray) -> np.ndarray:
        """(C, C) mean of P(true class | x, given) over the rows given each class."""
        det = self.detection
        if det.candidates is not None:
            from labelfix.core.detect_sparse import noise_matrix

            return noise_matrix(
                self.posterior, det.candidates, np.asarray(y, dtype=np.int64), det.transition**det.label_weight
            )
        c = self.posterior.shape[1]
        sums = np.zeros((c, c))
        np.add.at(sums, y, self.posterior)
        total = np.bincount(y, minlength=c).astype(np.float64)[:, None]
        return np.divide(sums, total, out=np.zeros_like(sums), where=total > 0)


def teacher_gate(
    probs: np.ndarray,
    y: np.ndarray,
    graph: KnnGraph,
    *,
    num_classes: int,
    source: str,
    with_features: bool,
    allow_weak: bool,
    gamma: float,
) -> tuple[dict, list[str]]:
    """The weak-teacher gate: flags from evidence that agrees with the given labels no better
    than chance would be noise, so it raises WeakTeacher (exit 5) unless `allow_weak`.

    With features the graph's vote of the neighbours' labels is a second, independent source:
    the run is weak only when both are (uniform probabilities with informative embeddings are
    a good run). Returns the check and the warnings to record."""
    from labelfix.models.teacher import agreement_check, weak_teacher_message

    check = agreement_check(probs, y, num_classes)
    if with_features and is_sparse(num_classes):
        vote = _agreement_of(vote_argmax(graph.ids, graph.sims, y, num_classes, gamma), y, num_classes)
        check = dict(check, embedding_vote=vote, weak=bool(check["weak"] and vote["weak"]))
        source += " and the neighbours' labels in the embedding graph"
    elif with_features:
        ones = np.ones(len(y))
        vote = agreement_check(neighbour_vote(graph.ids, graph.sims, y, num_classes, ones, gamma), y, num_classes)
        check = dict(check, embedding_vote=vote, weak=bool(check["weak"] and vote["weak"]))
        source += " and the neighbours' labels in the embedding graph"
    warnings = []
    if check["weak"]:
        if not allow_weak:
            raise WeakTeacher(weak_teacher_message(check, source))
        warnings.append(weak_teacher_message(check, source, allowed=True))
    elif with_features and check["embedding_vote"]["weak"]:
        vote = check["embedding_vote"]
        why = (
            f"the embeddings' nearest neighbours agree with the given labels no better than chance "
            f"({vote['agreement']:.1%} vs {vote['chance']:.1%} by chance, {vote['samples']} rows): their graph "
            "carries no label information and would only add noise to the flags (rows out of order with the "
            "CSV? all rows alike?)"
        )
        if not allow_weak:
            raise WeakTeacher(f"{why}; fix --embeddings, scan without them, or pass --allow-weak-teacher")
        warnings.append(f"{why}; kept because --allow-weak-teacher was given")
    elif not check["testable"]:
        warnings.append(
            f"with {check['samples']} samples no teacher can be told apart from chance ({check['chance']:.1%}): "
            "the weak-teacher check was skipped; flags are unreliable"
        )
    return check, warnings


def _agreement_of(pred: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """labelfix.models.agreement.agreement_check of predicted classes, without the (N, C) rows it
    takes the argmax of: the same counts and test, on a template of its record."""
    from labelfix.models.agreement import agreement_check, binomial_excess_p, majority_share

    record = agreement_check(np.eye(num_classes)[:1], y[:1], num_classes)  # the record's fixed fields
    n, alpha = len(y), record["alpha"]
    hits = int((pred == y).sum())
    q = np.bincount(pred, minlength=num_classes) / max(n, 1)
    chance = float(np.dot(q, np.bincount(y, minlength=num_classes) / max(n, 1)))
    p = binomial_excess_p(hits, n, chance)
    testable = binomial_excess_p(n, n, chance) < alpha
    return dict(
        record,
        agreement=round(hits / max(n, 1), 4),
        chance=round(chance, 4),
        majority_share=round(majority_share(y, num_classes), 4),
        samples=n,
        p_value=float(f"{p:.3g}"),
        testable=bool(testable),
        weak=bool(testable and p >= alpha),
    )


def find_issues(
    y: np.ndarray,
    probs: np.ndarray,
    graph: KnnGraph,
    *,
    graph_from_probs: bool,
    source: str = "the probabilities",
    with_features: bool = False,
    allow_weak: bool = False,
    gamma: float = 3.0,
    seed: int = 0,
) -> Issues:
    """Flag the rows whose given label `y` is probably wrong.

    `probs` are out-of-sample probabilities (N, C); `graph` a kNN graph over the same rows, built
    from embeddings (independent evidence) or from the probabilities (`graph_from_probs`, which
    only smooths them: labelfix.core.detect's docstring has the measurements). Raises WeakTeacher
    when the evidence is not clearly above chance and `allow_weak` is False."""
    y = np.asarray(y, dtype=np.int64)
    c = probs.shape[1]
    check, warnings = teacher_gate(
        probs, y, graph, num_classes=c, source=source, with_features=with_features, allow_weak=allow_weak, gamma=gamma
    )
    noise = confident_joint(probs, y)
    small = small_loss_mask(per_sample_loss(probs, y), y, noise.rates)
    det = detect(probs, y, graph.ids, graph.sims, not graph_from_probs, gamma=gamma, seed=seed)
    if det.candidates is not None:  # above SPARSE_ABOVE classes (labelfix.core.detect_sparse)
        from labelfix.core import detect_sparse as ds

        other, quality = (
            ds.alternative_label(det.posterior, det.candidates),
            ds.label_quality(det.evidence, det.candidates),
        )
    else:
        other, quality = alternative_label(det.posterior, y), label_quality(det.evidence, y)
    suggested = np.where(det.flags, other, y).astype(np.int64)
    return Issues(
        flags=det.flags,
        p_wrong=det.p_wrong,
        posterior=det.posterior,
        suggested=suggested,
        quality=quality,
        small_loss=small,
        noise=noise,
        detection=det,
        check=check,
        warnings=tuple(warnings),
        graph_from_probs=graph_from_probs,
        teacher_top=det.teacher,
    )
