"""infer.Ensemble: the mean of its members' clip probabilities, each file decoded once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

import wavemel.infer as infer
from wavemel.errors import WavemelError
from wavemel.infer import Ensemble, Tagger

LABELS = ["a", "b", "c", "d"]
RATE = 8000


class Probe(torch.nn.Module):
    """Deterministic logits of a window: a fixed random projection (no training needed)."""

    def __init__(self, input_samples: int, seed: int) -> None:
        super().__init__()
        self.num_classes = len(LABELS)
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(input_samples, 4, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x @ self.weight)


def _tagger(input_samples=100, seed=0, labels=LABELS, **kwargs) -> Tagger:
    kwargs.setdefault("sample_rate", RATE)
    kwargs.setdefault("decode_workers", 0)
    return Tagger(
        Probe(input_samples, seed), labels, input_samples=input_samples, device="cpu", **kwargs
    )


@pytest.fixture
def files(tmp_path):
    """Clips shorter than, about and several times the windows; an empty and a corrupt one."""
    rng = np.random.default_rng(3)
    paths = []
    for name, samples in (("short", 40), ("one", 120), ("long", 1234), ("empty", 0)):
        path = tmp_path / f"{name}.wav"
        sf.write(path, (0.3 * rng.standard_normal(samples)).astype(np.float32), RATE)
        paths.append(path)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio\n" * 20)
    paths.insert(2, bad)
    return paths


def _answers(tagger, files):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(tagger.predict_many(files))


def test_mean_of_members_with_their_own_windows_and_label_order(files):
    first = _tagger(100, seed=0, hop_samples=37, fill="pad")
    # Another window length, hop, fill and aggregation, and the labels in another order.
    second = _tagger(160, seed=1, labels=["d", "b", "a", "c"], aggregate="geometric")
    ensemble = Ensemble([first, second], names=["A", "B"])
    assert ensemble.labels == LABELS
    to_first_order = [2, 1, 3, 0]  # second's column of a, b, c, d

    one, two, both = _answers(first, files), _answers(second, files), _answers(ensemble, files)
    for (path, p1, e1), (_, p2, _), (item, mean, error) in zip(one, two, both):
        assert item == path
        if e1 is not None:
            assert mean is None and error == e1
            continue
        assert error is None
        np.testing.assert_allclose(mean, (p1 + p2[to_first_order]) / 2, rtol=0, atol=1e-12)
        assert mean.sum() == pytest.approx(1.0)
    # Hand-checked numbers for one clip: the mean really is the mean, not e.g. a renormalised one.
    p1, p2, mean = one[1][1], two[1][1][to_first_order], both[1][1]
    assert mean[0] == pytest.approx(0.5 * p1[0] + 0.5 * p2[0], abs=1e-15)


def test_one_member_answers_as_the_tagger_does(files):
    tagger = _tagger(100, seed=2, hop_samples=50, prior=[4, 3, 2, 1])
    alone, ensemble = _answers(tagger, files), _answers(Ensemble([tagger]), files)
    for (_, expected, expected_error), (_, got, error) in zip(alone, ensemble):
        assert error == expected_error
        if expected is not None:
            np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(Ensemble([tagger]).empty_distribution, tagger.empty_distribution)


def test_each_file_is_decoded_once_and_a_bad_one_fails_once(files, monkeypatch):
    opened = []
    real = infer.stream_audio

    def counting(path, *args, **kwargs):
        opened.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(infer, "stream_audio", counting)
    members = [_tagger(100, seed=0), _tagger(160, seed=1), _tagger(90, seed=4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = list(Ensemble(members).predict_many(files))
    assert sorted(opened) == sorted(p.name for p in files)
    assert [item.name for item, _, error in answers if error is not None] == ["bad.wav"]
    empty = [w for w in caught if "empty clip" in str(w.message)]
    assert len(empty) == 1 and "empty.wav" in str(empty[0].message)


def test_empty_clip_gets_the_mean_of_the_members_priors(files):
    first = _tagger(100, seed=0, prior=[1, 1, 1, 1])
    second = _tagger(100, seed=1, prior=[5, 1, 1, 1])
    ensemble = Ensemble([first, second])
    expected = ([0.25] * 4 + np.array([5, 1, 1, 1]) / 8) / 2
    [(_, probabilities, _)] = _answers(ensemble, [files[-1]])
    np.testing.assert_allclose(probabilities, expected, atol=1e-15)


def test_multi_label_thresholds_are_the_members_mean_in_the_common_order():
    first = _tagger(100, seed=0, activation="sigmoid", thresholds=[0.1, 0.2, 0.3, 0.4])
    second = _tagger(
        100, seed=1, labels=["b", "a", "c", "d"], activation="sigmoid", thresholds=[0.6, 0.5, 1, 0]
    )
    ensemble = Ensemble([first, second])
    assert ensemble.multi_label
    np.testing.assert_allclose(ensemble.thresholds, [0.3, 0.4, 0.65, 0.2])
    assert [label for label, _ in ensemble.above_threshold(np.array([0.3, 0.39, 1, 0.2]))] == [
        "c",
        "a",
        "d",
    ]


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        ({"labels": ["a", "b", "c", "e"]}, "the labels differ (only A has d; only B has e)"),
        ({"sample_rate": 16000}, "the sample rates differ (8000 vs 16000 Hz)"),
        ({"activation": "sigmoid"}, "A is single-label (softmax), B multi-label (sigmoid)"),
    ],
)
def test_members_that_cannot_be_averaged_are_a_one_line_error(other, expected):
    with pytest.raises(WavemelError) as caught:
        Ensemble([_tagger(), _tagger(seed=1, **other)], names=["A", "B"])
    message = str(caught.value)
    assert message == f"ensemble of A and B: {expected}"
    assert "\n" not in message
