"""Multi-label metrics (macro mAP, lwlrap, thresholds, F1) on hand-worked cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score

from wavemel.metrics import (
    choose_thresholds,
    f1_at_thresholds,
    label_ranking_precisions,
    lwlrap,
    lwlrap_per_class,
    mean_average_precision,
)

# Three clips, four classes. Rankings: A 0,1,2,3; B 2,1,0,3; C 1,0,2,3.
SCORES = np.array(
    [
        [0.9, 0.8, 0.1, 0.05],  # A, labels {0, 2}: label 0 at rank 1 (1/1), label 2 at rank 3 (2/3)
        [0.1, 0.2, 0.7, 0.0],  # B, label {2}: rank 1 (1/1)
        [0.3, 0.6, 0.2, 0.1],  # C, label {0}: rank 2 (1/2)
    ]
)
TARGETS = np.array([[1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]])


def test_label_ranking_precisions_by_hand():
    expected = [[1, 0, 2 / 3, 0], [0, 0, 1, 0], [1 / 2, 0, 0, 0]]
    np.testing.assert_allclose(label_ranking_precisions(SCORES, TARGETS), expected)


def test_lwlrap_weights_every_label_not_every_clip():
    # Four true labels in all: (1 + 2/3 + 1 + 1/2) / 4 = 19/24. The per-clip mean (LRAP) gives
    # clip A's two labels one vote between them: ((1 + 2/3) / 2 + 1 + 1/2) / 3 = 7/9.
    assert lwlrap(SCORES, TARGETS) == pytest.approx(19 / 24)
    assert label_ranking_average_precision_score(TARGETS, SCORES) == pytest.approx(7 / 9)
    per_class, weight = lwlrap_per_class(SCORES, TARGETS)
    # Class 0: clips A (1) and C (1/2); class 2: clips A (2/3) and B (1); each holds 2 of 4 labels.
    np.testing.assert_allclose(per_class, [0.75, np.nan, 5 / 6, np.nan])
    np.testing.assert_allclose(weight, [0.5, 0, 0.5, 0])
    assert np.nansum(per_class * weight) == pytest.approx(lwlrap(SCORES, TARGETS))


def test_per_clip_precision_matches_scikit_learn_without_ties():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 7))  # continuous: no ties, where sklearn's tie rule would differ
    targets = rng.random((50, 7)) < 0.3
    targets[np.arange(50), rng.integers(0, 7, 50)] = True  # every clip has a label
    per_clip = label_ranking_precisions(scores, targets).sum(axis=1) / targets.sum(axis=1)
    assert per_clip.mean() == pytest.approx(label_ranking_average_precision_score(targets, scores))
    # With one label per clip, lwlrap and LRAP coincide (and equal the MRR).
    single = np.zeros_like(targets)
    single[np.arange(50), rng.integers(0, 7, 50)] = True
    assert lwlrap(scores, single) == pytest.approx(
        label_ranking_average_precision_score(single, scores)
    )


def test_unanswered_clip_is_a_miss_for_each_of_its_labels():
    scores = np.vstack([SCORES, np.full((1, 4), np.nan)])
    targets = np.vstack([TARGETS, [[0, 1, 0, 1]]])
    # Two more labels, both scored 0.
    assert lwlrap(scores, targets) == pytest.approx(19 / 6 / 6)
    np.testing.assert_array_equal(label_ranking_precisions(scores, targets)[3], 0)


def test_ties_rank_by_class_index():
    scores = np.array([[0.5, 0.5, 0.5]])
    assert lwlrap(scores, np.array([[0, 0, 1]])) == pytest.approx(1 / 3)
    assert lwlrap(scores, np.array([[1, 0, 0]])) == pytest.approx(1.0)


def test_macro_map_by_hand_and_against_scikit_learn():
    # Class 0 ranks A(+), C(+), B: AP 1. Class 2 ranks B(+), C(-), A(+): AP (1 + 2/3) / 2.
    # Classes 1 and 3 have no positive clip and are left out.
    assert mean_average_precision(SCORES, TARGETS) == pytest.approx((1 + 5 / 6) / 2)
    rng = np.random.default_rng(1)
    scores = rng.random((40, 5))
    targets = rng.random((40, 5)) < 0.4
    expected = average_precision_score(targets, scores, average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(expected)


def test_thresholds_maximise_f1_at_the_midpoint_of_the_cut():
    # Cuts after 1, 2, 3, 4 clips: F1 2/3, 1/2, 4/5, 2/3 -> keep three, halfway to the fourth.
    scores = np.array([[0.9], [0.8], [0.4], [0.3]])
    targets = np.array([[1], [0], [1], [0]])
    np.testing.assert_allclose(choose_thresholds(scores, targets), [0.35])


def test_thresholds_never_cut_between_equal_scores():
    # The positive ties with a negative: the first possible cut keeps both (F1 2/3).
    scores = np.array([[0.5, 0.2], [0.5, 0.3], [0.1, 0.4]])
    targets = np.array([[1, 0], [0, 0], [0, 0]])
    thresholds = choose_thresholds(scores, targets, default=0.7)
    np.testing.assert_allclose(thresholds, [0.3, 0.7])  # class 1: no positive, the default


def test_thresholds_ignore_unanswered_clips():
    scores = np.array([[0.9], [np.nan], [0.1]])
    targets = np.array([[1], [1], [0]])
    np.testing.assert_allclose(choose_thresholds(scores, targets), [0.5])


def test_f1_at_thresholds_by_hand():
    scores = np.array([[0.6, 0.4], [0.7, 0.8], [0.2, 0.9], [0.1, 0.9], [np.nan, np.nan]])
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]])
    result = f1_at_thresholds(scores, targets, np.array([0.5, 0.5]))
    # Class 0: tp 1, fp 1, fn 2 (clip 2 below, clip 4 unanswered) -> 2/5.
    # Class 1: tp 2, fp 1, fn 0 -> 4/5.
    assert result["macro_f1"] == pytest.approx((2 / 5 + 4 / 5) / 2)
    # Pooled: tp 3, fp 2, fn 2 -> 6/10.
    assert result["micro_f1"] == pytest.approx(0.6)
    assert result["micro_precision"] == pytest.approx(3 / 5)
    assert result["micro_recall"] == pytest.approx(3 / 5)


def test_f1_rejects_a_wrong_number_of_thresholds():
    with pytest.raises(ValueError, match="thresholds"):
        f1_at_thresholds(SCORES, TARGETS, np.array([0.5]))
