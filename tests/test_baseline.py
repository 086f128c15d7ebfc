"""The MFCC + logistic-regression baseline on the built-in synthetic data set."""

from __future__ import annotations

import numpy as np
import pytest

from wavemel.data import load_dataset
from wavemel.data.records import ClipRecord
from wavemel.data.synthetic import SYNTHETIC_CLASSES, generate
from wavemel.study.baseline import FEATURE_DIM, mfcc_statistics, run_baseline


@pytest.fixture(scope="module")
def synthetic_index(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("synthetic") / "data", clips_per_class=12, seed=3)
    return load_dataset(root, "folder")


def test_mfcc_statistics_shape_and_empty_clip():
    rng = np.random.default_rng(0)
    features = mfcc_statistics(rng.standard_normal(8000).astype(np.float32), 16000)
    assert features.shape == (FEATURE_DIM,) and np.isfinite(features).all()
    assert features[FEATURE_DIM // 2 :].min() >= 0  # the second half are standard deviations
    assert not mfcc_statistics(np.zeros(0, np.float32), 16000).any()
    # A clip shorter than one FFT window still gives finite statistics.
    assert np.isfinite(mfcc_statistics(rng.standard_normal(100).astype(np.float32), 8000)).all()


def test_baseline_beats_chance_on_synthetic(synthetic_index):
    records = synthetic_index.records
    # Every third clip of each class is held out; the rest train.
    held_out = {r.path for r in records if int(r.path.stem.rsplit("_", 1)[1]) % 3 == 0}
    train = [r for r in records if r.path not in held_out]
    test = [r for r in records if r.path in held_out]
    labels = synthetic_index.labels
    assert sorted(labels) == sorted(SYNTHETIC_CLASSES)

    cache: dict = {}
    result = run_baseline(train, test, labels, sample_rate=16000, seed=0, feature_cache=cache)
    n_classes = len(labels)
    # Chance MAP@3 with C classes is (1 + 1/2 + 1/3) / C ~ 0.23 for 8 classes.
    chance = (1 + 1 / 2 + 1 / 3) / n_classes
    assert result["map3"] > 2.5 * chance
    assert result["n_clips"] == len(test) and result["n_train"] == len(train)
    probabilities = result["probabilities"]
    assert probabilities.shape == (len(test), n_classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert set(result["per_class"]) == set(labels)
    per_class_mean = np.mean([v["map3"] for v in result["per_class"].values()])
    # Balanced classes: the mean of per-class MAP@3 equals the overall MAP@3.
    assert per_class_mean == pytest.approx(result["map3"], abs=1e-9)
    assert "map3_public" not in result  # no usage column in this data

    # Features are cached per file, so a second fit (another fold) extracts nothing new.
    n_cached = len(cache)
    again = run_baseline(train, test, labels, sample_rate=16000, seed=0, feature_cache=cache)
    assert len(cache) == n_cached and again["map3"] == result["map3"]


def test_baseline_reports_public_private(synthetic_index):
    records = synthetic_index.records
    train = records[::2]
    test = [
        ClipRecord(path=r.path, labels=r.labels, split="test", usage=("Public", "Private")[i % 2])
        for i, r in enumerate(records[1::2])
    ]
    result = run_baseline(train, test, synthetic_index.labels, sample_rate=16000)
    assert {"map3_public", "map3_private"} <= set(result)
    # The total is the clip-weighted mean of the two parts.
    n_public = sum(r.usage == "Public" for r in test)
    n_private = len(test) - n_public
    total = (result["map3_public"] * n_public + result["map3_private"] * n_private) / len(test)
    assert result["map3"] == pytest.approx(total, abs=1e-9)
