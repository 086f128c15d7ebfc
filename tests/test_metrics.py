"""MAP@k and friends on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from wavemel.metrics import (
    average_precision_at_k,
    average_precision_per_class,
    confusion_matrix,
    map_at_k,
    per_class_map_at_k,
    rank_classes,
    top_k_accuracy,
)

# Ranking of every row: class 3, then 1, then 0, then 2.
ROW = [0.2, 0.3, 0.1, 0.4]


@pytest.mark.parametrize(("target", "expected"), [(3, 1.0), (1, 0.5), (0, 1 / 3), (2, 0.0)])
def test_single_label_hit_at_rank_or_miss(target, expected):
    assert map_at_k(np.array([ROW]), np.array([target])) == pytest.approx(expected)


def test_map_is_the_mean_over_clips():
    scores = np.array([ROW, ROW, ROW, ROW])
    targets = np.array([3, 1, 0, 2])
    assert map_at_k(scores, targets) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    np.testing.assert_allclose(average_precision_at_k(scores, targets), [1, 1 / 2, 1 / 3, 0])


def test_k_changes_the_cut_off():
    scores = np.array([ROW])
    assert map_at_k(scores, np.array([0]), k=2) == 0.0
    assert map_at_k(scores, np.array([2]), k=4) == pytest.approx(0.25)
    assert map_at_k(scores, np.array([1]), k=1) == 0.0


def test_ties_are_broken_by_class_index():
    scores = np.array([[0.5, 0.5, 0.5, 0.1]])
    np.testing.assert_array_equal(rank_classes(scores), [[0, 1, 2, 3]])
    assert map_at_k(scores, np.array([0])) == 1.0
    assert map_at_k(scores, np.array([1])) == 0.5
    assert map_at_k(scores, np.array([2])) == pytest.approx(1 / 3)
    # Constant scores: the ranking is the class order.
    flat = np.zeros((1, 5))
    assert map_at_k(flat, np.array([4])) == 0.0
    assert map_at_k(flat, np.array([1])) == 0.5


def test_multi_label_average_precision():
    # Ranking 3, 1, 0, 2. Labels {1, 0}: hits at ranks 2 and 3 -> (1/2 + 2/3) / 2.
    scores = np.array([ROW])
    assert map_at_k(scores, np.array([[1, 1, 0, 0]])) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Labels {3, 2}: hit at rank 1 only (2 is ranked 4th) -> (1) / 2.
    assert map_at_k(scores, np.array([[0, 0, 1, 1]])) == pytest.approx(0.5)
    # Four labels, k=3: all three top predictions hit -> 3 / min(4, 3) = 1.
    assert map_at_k(scores, np.ones((1, 4))) == pytest.approx(1.0)
    # One-hot matrix equals the index form.
    assert map_at_k(scores, np.array([[0, 1, 0, 0]])) == map_at_k(scores, np.array([1]))


def test_per_class_map():
    scores = np.array([ROW, ROW, ROW, [0.9, 0.0, 0.0, 0.0]])
    targets = np.array([3, 1, 1, 0])
    per_class = per_class_map_at_k(scores, targets)
    assert per_class[0] == 1.0
    assert per_class[1] == pytest.approx(0.5)
    assert np.isnan(per_class[2])
    assert per_class[3] == 1.0
    # Multi-label clip counts for both of its classes.
    multi = per_class_map_at_k(np.array([ROW]), np.array([[1, 1, 0, 0]]))
    np.testing.assert_allclose(multi[:2], [(1 / 2 + 2 / 3) / 2] * 2)


def test_average_precision_matches_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.random((40, 5))
    targets = rng.integers(0, 4, size=40)  # class 4 never occurs
    ap = average_precision_per_class(scores, targets)
    for c in range(4):
        assert ap[c] == pytest.approx(average_precision_score(targets == c, scores[:, c]))
    assert np.isnan(ap[4])
    # Hand-worked: positives ranked 1st and 3rd of 4 -> (1 + 2/3) / 2.
    ap_hand = average_precision_per_class(
        np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9]]), np.array([0, 1, 0, 1])
    )
    assert ap_hand[0] == pytest.approx((1 + 2 / 3) / 2)


def test_top_k_accuracy():
    scores = np.array([ROW, ROW, ROW])
    targets = np.array([3, 1, 2])
    assert top_k_accuracy(scores, targets) == pytest.approx(1 / 3)
    assert top_k_accuracy(scores, targets, k=2) == pytest.approx(2 / 3)
    assert top_k_accuracy(scores, targets, k=4) == 1.0


def test_confusion_matrix():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), num_classes=3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    from_scores = confusion_matrix(np.array([3, 0]), np.array([ROW, [0.5, 0.5, 0, 0]]))
    assert from_scores.shape == (4, 4)
    assert from_scores[3, 3] == 1 and from_scores[0, 0] == 1 and from_scores.sum() == 2


@pytest.mark.parametrize(
    ("scores", "targets"),
    [
        (np.zeros(4), np.array([0])),  # 1-D scores
        (np.zeros((2, 4)), np.array([0])),  # row count mismatch
        (np.zeros((1, 4)), np.zeros((1, 3))),  # multi-hot width mismatch
        (np.zeros((1, 4)), np.array([4])),  # index out of range
        (np.zeros((1, 4)), np.zeros((1, 4))),  # clip without label
        (np.zeros((1, 4)), np.array([0.5])),  # fractional index
    ],
)
def test_shape_and_value_errors(scores, targets):
    with pytest.raises(ValueError):
        map_at_k(scores, targets)


def test_other_errors():
    with pytest.raises(ValueError):
        map_at_k(np.zeros((1, 2)), np.array([0]), k=0)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError):
        top_k_accuracy(np.zeros((2, 2, 2)), np.array([0, 1]))


def test_a_clip_without_an_answer_counts_as_a_miss():
    # Kaggle scores a missing answer as 0: an undecodable clip must lower MAP@3, not vanish.
    scores = np.array([[0.9, 0.1, 0.0], [np.nan, np.nan, np.nan], [0.1, 0.2, 0.7]])
    targets = np.array([0, 0, 2])
    np.testing.assert_allclose(average_precision_at_k(scores, targets), [1.0, 0.0, 1.0])
    assert map_at_k(scores, targets) == pytest.approx(2 / 3)
    assert top_k_accuracy(scores, targets, k=3) == pytest.approx(2 / 3)
    # Per-class AP: the unanswered clip of class 0 ranks below every answered clip.
    ap = average_precision_per_class(scores, targets)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert confusion_matrix(targets, scores).sum() == 2
    with pytest.raises(ValueError, match="NaN"):
        map_at_k(np.array([[np.nan, 0.5, 0.5]]), np.array([0]))
