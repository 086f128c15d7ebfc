"""Whole-clip windowed inference: windowing math, aggregation, block-wise file scoring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.audio import load_audio
from wavemel.errors import AudioError
from wavemel.infer import Tagger, _WindowStream, fill_window, predict_waveforms, window_starts


class WindowProbe(torch.nn.Module):
    """A deterministic 'model' whose logits depend on the whole window (not just its mean)."""

    def __init__(self, num_classes: int = 4, input_samples: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(
            torch.randn(input_samples, num_classes, generator=generator)
        )
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.detach().clone())
        return 3.0 * torch.tanh(x @ self.weight)


@pytest.mark.parametrize(
    ("length", "width", "hop", "expected"),
    [
        (0, 4, 4, []),
        (3, 4, 4, [0]),
        (4, 4, 4, [0]),
        (8, 4, 4, [0, 4]),
        (10, 4, 4, [0, 4, 6]),  # tail window aligned to the end
        (10, 4, 2, [0, 2, 4, 6]),
        (11, 4, 3, [0, 3, 6, 7]),
        (20, 4, 10, [0, 10, 16]),  # hop longer than the window
    ],
)
def test_window_starts(length, width, hop, expected):
    assert window_starts(length, width, hop) == expected


def test_window_starts_validates():
    with pytest.raises(ValueError):
        window_starts(10, 0)
    with pytest.raises(ValueError):
        window_starts(10, 4, 0)


def test_fill_window():
    clip = np.array([1, 2, 3], dtype=np.float32)
    np.testing.assert_array_equal(fill_window(clip, 7, "replicate"), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(fill_window(clip, 5, "pad"), [1, 2, 3, 0, 0])
    with pytest.raises(ValueError):
        fill_window(clip, 5, "mirror")


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 17, 1000])
@pytest.mark.parametrize(
    ("length", "width", "hop"), [(23, 4, 4), (23, 5, 3), (40, 4, 9), (3, 4, 2)]
)
def test_stream_cuts_the_windows_window_starts_describes(chunk, length, width, hop):
    clip = np.arange(length, dtype=np.float32)
    stream = _WindowStream(width, hop, "pad")
    windows = []
    for begin in range(0, length, chunk):
        windows += stream.push(clip[begin : begin + chunk])
    windows += stream.finish()
    expected = [
        clip[s : s + width] if length >= width else fill_window(clip, width, "pad")
        for s in window_starts(length, width, hop)
    ]
    assert [start for start, _ in windows] == window_starts(length, width, hop)
    assert len(windows) == len(expected)
    for (_, got), want in zip(windows, expected):
        np.testing.assert_array_equal(got, want)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_predict_waveforms_mean_and_geometric_by_hand():
    model = WindowProbe(num_classes=4, input_samples=100)
    rng = np.random.default_rng(1)
    long_clip = rng.standard_normal(250).astype(np.float32)
    short_clip = rng.standard_normal(30).astype(np.float32)
    clips = [long_clip, short_clip, np.zeros(0, np.float32)]
    weight = model.weight.detach().numpy().astype(np.float64)

    def window_probs(window):
        return _softmax(3.0 * np.tanh(window.astype(np.float64) @ weight))

    long_windows = [long_clip[s : s + 100] for s in (0, 100, 150)]
    short_window = np.resize(short_clip, 100)
    probs = predict_waveforms(model, clips, input_samples=100, batch_size=2)
    np.testing.assert_allclose(
        probs[0], np.mean([window_probs(w) for w in long_windows], 0), atol=1e-6
    )
    np.testing.assert_allclose(probs[1], window_probs(short_window), atol=1e-6)
    np.testing.assert_allclose(probs[2], np.full(4, 0.25))  # empty -> uniform
    # Windows of different clips share batches of 2: 3 + 1 windows -> 2 forward passes.
    assert [c.shape[0] for c in model.calls] == [2, 2]

    geometric = predict_waveforms(model, clips[:1], input_samples=100, aggregate="geometric")
    log_mean = np.mean([np.log(window_probs(w)) for w in long_windows], 0)
    np.testing.assert_allclose(geometric[0], _softmax(log_mean), atol=1e-6)
    assert not np.allclose(geometric[0], probs[0], atol=1e-4)

    padded = predict_waveforms(model, clips[1:2], input_samples=100, fill="pad")
    pad_window = np.concatenate([short_clip, np.zeros(70, np.float32)])
    np.testing.assert_allclose(padded[0], window_probs(pad_window), atol=1e-6)


def test_predict_waveforms_restores_training_mode_and_checks_args():
    model = WindowProbe()
    model.train()
    predict_waveforms(model, [np.ones(100, np.float32)], input_samples=100)
    assert model.training
    with pytest.raises(ValueError):
        predict_waveforms(model, [np.ones(100)], input_samples=100, aggregate="median")
    with pytest.raises(ValueError):
        predict_waveforms(model, [np.ones((2, 100))], input_samples=100)


def _tagger(model, sample_rate, width, hop=None, block_frames=1 << 17, prior=None):
    return Tagger(
        model,
        ["a", "b", "c", "d"],
        sample_rate=sample_rate,
        input_samples=width,
        hop_samples=hop,
        block_frames=block_frames,
        prior=prior,
    )


@pytest.mark.parametrize(("file_rate", "hop"), [(8000, 60), (11025, None)])
def test_blockwise_file_scoring_equals_whole_clip(tmp_path, file_rate, hop):
    # 20 s of noise-modulated tones; read in blocks much smaller than the file and not a
    # multiple of the window, so windows straddle block boundaries.
    rng = np.random.default_rng(2)
    t = np.arange(20 * file_rate) / file_rate
    audio = 0.3 * np.sin(2 * np.pi * 440 * t) * rng.random(t.shape[0]) ** 2
    path = tmp_path / "long.wav"
    sf.write(path, audio.astype(np.float32), file_rate, subtype="FLOAT")
    model = WindowProbe(num_classes=4, input_samples=100)
    tagger = _tagger(model, 8000, 100, hop=hop, block_frames=777)
    blockwise = tagger.predict_proba(path)
    whole = predict_waveforms(model, [load_audio(path, 8000)], input_samples=100, hop_samples=hop)
    np.testing.assert_allclose(blockwise, whole[0], atol=1e-5)
    assert blockwise.sum() == pytest.approx(1.0)
    # Same answer from the waveform path.
    np.testing.assert_allclose(tagger.predict_proba(load_audio(path, 8000)), whole[0], atol=1e-5)


def test_empty_file_gives_uniform_or_prior_and_warns(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 8000)
    tagger = _tagger(WindowProbe(), 8000, 100)
    with pytest.warns(UserWarning, match="empty.wav"):
        probs = tagger.predict_proba(path)
    np.testing.assert_allclose(probs, np.full(4, 0.25))
    with_prior = _tagger(WindowProbe(), 8000, 100, prior=[1, 1, 2, 4])
    with pytest.warns(UserWarning, match="prior"):
        tags = with_prior.tag(path, top_k=3)
    assert [label for label, _ in tags] == ["d", "c", "a"]
    assert tags[0][1] == pytest.approx(0.5)


def test_tag_orders_labels_and_tag_many_reports_bad_files(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.random.default_rng(3).standard_normal(300).astype(np.float32) * 0.1, 8000)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    tagger = _tagger(WindowProbe(), 8000, 100)
    probs = tagger.predict_proba(good)
    tags = tagger.tag(good, top_k=2)
    assert [label for label, _ in tags] == [tagger.labels[i] for i in np.argsort(-probs)[:2]]
    with pytest.raises(AudioError, match="bad.wav"):
        tagger.tag(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results, errors = tagger.tag_many([good, bad, tmp_path / "missing.wav"])
    assert list(results) == [str(good)]
    assert set(errors) == {str(bad), str(tmp_path / "missing.wav")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_matches_cpu():
    model = WindowProbe(num_classes=4, input_samples=100)
    clips = [np.random.default_rng(4).standard_normal(450).astype(np.float32) * 0.1]
    cpu = predict_waveforms(model, clips, input_samples=100, device="cpu")
    cuda = predict_waveforms(model.cuda(), clips, input_samples=100, device="cuda")
    np.testing.assert_allclose(cuda, cpu, atol=2e-2)


class FeatureProbe(WindowProbe):
    """WindowProbe with an embedding: the window's first samples, scaled."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x[:, :3]


@pytest.mark.parametrize("hop_seconds", [None, 0.003, 0.0125])
def test_window_series_are_the_windows_the_clip_tag_averages(hop_seconds):
    rate, width = 8000, 100
    model = FeatureProbe(input_samples=width)
    tagger = _tagger(model, rate, width)
    clip = np.random.default_rng(1).standard_normal(457).astype(np.float32)
    series = tagger.window_probabilities(clip, hop_seconds=hop_seconds)
    hop = width if hop_seconds is None else round(hop_seconds * rate)
    starts = window_starts(clip.shape[0], width, hop)
    np.testing.assert_allclose(series.starts, np.array(starts) / rate)
    np.testing.assert_allclose(series.ends, (np.array(starts) + width) / rate)
    assert series.duration == pytest.approx(457 / rate)
    windows = np.stack([clip[s : s + width] for s in starts])
    expected = _softmax(3.0 * np.tanh(windows @ model.weight.detach().numpy()))
    np.testing.assert_allclose(series.values, expected, rtol=1e-5, atol=1e-7)
    if hop_seconds is None:
        np.testing.assert_allclose(
            series.values.mean(axis=0), tagger.predict_proba(clip), atol=1e-7
        )
    embeddings = tagger.window_embeddings(clip, hop_seconds=hop_seconds)
    np.testing.assert_allclose(embeddings.values, 2.0 * windows[:, :3], rtol=1e-6)


def test_embed_is_the_mean_window_embedding_and_refuses_empty_clips(tmp_path):
    rate, width = 8000, 100
    tagger = _tagger(FeatureProbe(input_samples=width), rate, width)
    clip = np.random.default_rng(2).standard_normal(350).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, clip, rate, subtype="FLOAT")
    starts = window_starts(350, width, width)
    expected = np.mean([2.0 * clip[s : s + 3] for s in starts], axis=0)
    np.testing.assert_allclose(tagger.embed(path), expected, rtol=1e-6)
    assert tagger.embed(path).dtype == np.float32
    short = tagger.window_probabilities(clip[:40])
    assert short.values.shape[0] == 1 and short.ends[0] == pytest.approx(40 / rate)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), rate)
    with pytest.raises(AudioError, match="empty.wav: empty clip"):
        tagger.embed(empty)
