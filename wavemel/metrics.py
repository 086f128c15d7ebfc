"""Ranking and classification metrics as pure numpy functions.

Every function takes ``scores`` of shape ``(N, C)`` (any real numbers where larger means more
likely: probabilities, logits) and ``targets`` either as ``(N,)`` integer class indices or as an
``(N, C)`` multi-hot matrix (any non-zero entry marks a true label).

Ranking convention: classes are ranked by descending score and **ties are broken by class index**
(the lower index ranks first), so every metric is deterministic even for constant scores.

No answer: a row that is entirely ``NaN`` stands for a clip that got no prediction (its file is
missing or could not be decoded). It counts as a miss, as Kaggle scores a missing answer: AP 0 in
MAP@k, not a hit in top-k accuracy, ranked below every answered clip in per-class AP, and left out
of the confusion matrix. A row that mixes ``NaN`` and numbers is an error.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "average_precision_at_k",
    "average_precision_per_class",
    "confusion_matrix",
    "map_at_k",
    "per_class_map_at_k",
    "rank_classes",
    "top_k_accuracy",
    "unanswered",
]


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got {scores.shape}")
    if scores.shape[1] == 0:
        raise ValueError("scores must have at least one class column")
    nan = np.isnan(scores)
    if (nan.any(axis=1) & ~nan.all(axis=1)).any():
        raise ValueError("scores contain NaN in a row that also holds numbers")
    return scores


def unanswered(scores: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the rows that are entirely ``NaN`` (clips without an answer)."""
    return np.isnan(np.asarray(scores, dtype=np.float64)).all(axis=1)


def _multi_hot(targets: np.ndarray, num_clips: int, num_classes: int) -> np.ndarray:
    """``(N,)`` class indices or ``(N, C)`` multi-hot -> ``(N, C)`` bool."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        if targets.shape[0] != num_clips:
            raise ValueError(f"targets have {targets.shape[0]} entries but scores {num_clips} rows")
        if targets.size and not np.issubdtype(targets.dtype, np.integer):
            if not np.all(np.equal(np.mod(targets, 1), 0)):
                raise ValueError("1-D targets must be integer class indices")
        index = targets.astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= num_classes):
            raise ValueError(f"target class index out of range [0, {num_classes})")
        hot = np.zeros((num_clips, num_classes), dtype=bool)
        hot[np.arange(num_clips), index] = True
        return hot
    if targets.ndim == 2:
        if targets.shape != (num_clips, num_classes):
            raise ValueError(
                f"multi-hot targets must have the scores' shape {(num_clips, num_classes)}, "
                f"got {targets.shape}"
            )
        return targets != 0
    raise ValueError(f"targets must have shape (N,) or (N, C), got {targets.shape}")


def _check(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = _check_scores(scores)
    hot = _multi_hot(targets, *scores.shape)
    return scores, hot


def rank_classes(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Class indices of each row sorted by descending score, ties by ascending class index.

    Args:
        scores: ``(N, C)`` scores.
        k: Keep only the first ``k`` columns (all when ``None``).

    Returns:
        ``(N, min(k, C))`` int64 class indices, best first.
    """
    scores = _check_scores(scores)
    # A stable sort of the negated scores keeps equal scores in class-index order.
    order = np.argsort(-scores, axis=1, kind="stable")
    return order if k is None else order[:, :k]


def average_precision_at_k(scores: np.ndarray, targets: np.ndarray, k: int = 3) -> np.ndarray:
    """Per-clip average precision at ``k`` (the quantity MAP@k averages).

    For one clip with true-label set ``L`` and predicted ranking ``p_1, p_2, ...``::

        AP@k = sum_{i <= k, p_i in L} precision@i / min(|L|, k)

    With a single true label this is ``1 / rank`` of that label, or 0 when it is not in the top
    ``k`` (the Kaggle FSDKaggle2018 metric).

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N,)`` class indices or ``(N, C)`` multi-hot.
        k: Number of ranked predictions scored.

    Returns:
        ``(N,)`` float64 in ``[0, 1]``.

    Raises:
        ValueError: Bad shapes, ``k < 1``, out-of-range indices or a clip without any label.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scores, hot = _check(scores, targets)
    n_labels = hot.sum(axis=1)
    if (n_labels == 0).any():
        raise ValueError(f"{int((n_labels == 0).sum())} clip(s) have no true label")
    top = rank_classes(scores, k)
    hits = np.take_along_axis(hot, top, axis=1).astype(np.float64)  # (N, k')
    ranks = np.arange(1, top.shape[1] + 1, dtype=np.float64)
    hits[unanswered(scores)] = 0.0
    precision_at_i = np.cumsum(hits, axis=1) / ranks
    return (precision_at_i * hits).sum(axis=1) / np.minimum(n_labels, k)


def map_at_k(scores: np.ndarray, targets: np.ndarray, k: int = 3) -> float:
    """Mean average precision at ``k`` over clips (Kaggle's MAP@3 with the default ``k``).

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N,)`` class indices or ``(N, C)`` multi-hot.
        k: Number of ranked predictions scored per clip.

    Returns:
        The mean of :func:`average_precision_at_k`; ``nan`` for zero clips.
    """
    per_clip = average_precision_at_k(scores, targets, k)
    return float(per_clip.mean()) if per_clip.size else float("nan")


def per_class_map_at_k(scores: np.ndarray, targets: np.ndarray, k: int = 3) -> np.ndarray:
    """MAP@k of the clips of each true class (a multi-label clip counts for each of its labels).

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N,)`` class indices or ``(N, C)`` multi-hot.
        k: Number of ranked predictions scored per clip.

    Returns:
        ``(C,)`` float64; ``nan`` for classes without clips.
    """
    per_clip = average_precision_at_k(scores, targets, k)
    _, hot = _check(scores, targets)
    counts = hot.sum(axis=0)
    totals = hot.T.astype(np.float64) @ per_clip
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def average_precision_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Average precision of each class over the clip ranking (scikit-learn's definition).

    Each class is a binary retrieval problem: clips are ranked by that class's score and AP is
    ``sum_n (R_n - R_{n-1}) P_n`` over thresholds, as in
    ``sklearn.metrics.average_precision_score``.

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N,)`` class indices or ``(N, C)`` multi-hot.

    Returns:
        ``(C,)`` float64; ``nan`` for classes without a positive clip (AP is undefined there).
    """
    # lazy: scikit-learn takes ~0.7 s to import and only this function needs it; training and
    # MAP@3 scoring import this module without it
    from sklearn.metrics import average_precision_score

    scores, hot = _check(scores, targets)
    missing = unanswered(scores)
    if missing.any():
        # Ranked below every answered clip for every class.
        floor = np.nanmin(scores) - 1.0 if not missing.all() else 0.0
        scores = np.where(missing[:, None], floor, scores)
    result = np.full(scores.shape[1], np.nan)
    for c in np.flatnonzero(hot.any(axis=0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result[c] = average_precision_score(hot[:, c], scores[:, c])
    return result


def top_k_accuracy(scores: np.ndarray, targets: np.ndarray, k: int = 1) -> float:
    """Fraction of clips with at least one true label among the ``k`` best-ranked classes.

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N,)`` class indices or ``(N, C)`` multi-hot.
        k: How many ranked classes count as a hit.

    Returns:
        A float in ``[0, 1]``; ``nan`` for zero clips.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scores, hot = _check(scores, targets)
    if scores.shape[0] == 0:
        return float("nan")
    top = rank_classes(scores, k)
    hit = np.take_along_axis(hot, top, axis=1).any(axis=1) & ~unanswered(scores)
    return float(hit.mean())


def confusion_matrix(
    targets: np.ndarray, predictions: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        targets: ``(N,)`` true class indices.
        predictions: ``(N,)`` predicted class indices, or ``(N, C)`` scores whose top-ranked
            class (ties by class index) is the prediction.
        num_classes: Matrix size; by default one more than the largest index seen (or ``C``).

    Returns:
        ``(C, C)`` int64, rows are true classes and columns predicted classes. Clips without an
        answer (all-``NaN`` score rows) are left out.
    """
    targets = np.asarray(targets)
    predictions = np.asarray(predictions)
    if predictions.ndim == 2 and targets.ndim == 1 and len(targets) == len(predictions):
        answered = ~unanswered(predictions)
        targets, predictions = targets[answered], predictions[answered]
    if targets.ndim != 1:
        raise ValueError(f"targets must be (N,) class indices, got shape {targets.shape}")
    if predictions.ndim == 2:
        if num_classes is None:
            num_classes = predictions.shape[1]
        predictions = rank_classes(predictions, 1)[:, 0]
    if predictions.ndim != 1 or predictions.shape[0] != targets.shape[0]:
        raise ValueError(
            f"predictions must be (N,) or (N, C) with N={targets.shape[0]}, "
            f"got shape {predictions.shape}"
        )
    targets = targets.astype(np.int64)
    predictions = predictions.astype(np.int64)
    if num_classes is None:
        num_classes = int(max(targets.max(initial=-1), predictions.max(initial=-1))) + 1
    for name, values in (("targets", targets), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} hold a class index outside [0, {num_classes})")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix
