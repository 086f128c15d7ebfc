"""LogMel front end: parity with librosa, batching, shapes and argument checks."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from wavemel.frontend import (
    LOG_MEL,
    PANNS_LOG_MEL,
    PREVIEW_LOG_MEL,
    LogMel,
    LogMelSettings,
    power_to_db,
)

# Stated tolerances (dB) against librosa.feature.melspectrogram + power_to_db on non-silent
# signals. Measured: ~3e-6 dB (float64 input) and ~1e-5 dB (float32 input).
ATOL_DB_FLOAT64 = 1e-3
ATOL_DB_FLOAT32 = 1e-2


def _test_signal(sample_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Chirp + tone + noise: energy in every mel band, with a level that changes over time."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    chirp = np.sin(2 * np.pi * (100 * t + 0.5 * (sample_rate / 3) * t**2 / seconds))
    envelope = 0.2 + 0.8 * np.abs(np.sin(2 * np.pi * 1.5 * t))
    y = (
        0.4 * envelope * chirp
        + 0.1 * np.sin(2 * np.pi * 440 * t)
        + 0.01 * rng.standard_normal(t.size)
    )
    return y.astype(np.float64)


def _librosa_logmel(y: np.ndarray, front: LogMel, top_db: float | None = None) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=front.sample_rate,
        n_fft=front.n_fft,
        hop_length=front.hop_length,
        n_mels=front.n_mels,
        fmin=front.fmin,
        fmax=front.fmax,
        power=2.0,
        pad_mode=front.pad_mode,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=front.amin, top_db=top_db)


@pytest.mark.parametrize(
    "sample_rate, kwargs",
    [
        (16000, {}),
        (8000, {"n_fft": 512, "hop_length": 160, "n_mels": 40, "fmin": 0.0, "fmax": 3800.0}),
        (22050, {"n_fft": 2048, "hop_length": 441, "n_mels": 128, "pad_mode": "reflect"}),
    ],
)
@pytest.mark.parametrize(
    "dtype, atol", [(torch.float64, ATOL_DB_FLOAT64), (torch.float32, ATOL_DB_FLOAT32)]
)
def test_matches_librosa(sample_rate, kwargs, dtype, atol):
    front = LogMel(sample_rate, **kwargs)
    y = _test_signal(sample_rate, 1.3)
    expected = _librosa_logmel(y, front)
    got = front(torch.from_numpy(y).to(dtype).unsqueeze(0))
    assert got.shape == (1, 1, front.n_mels, front.num_frames(y.size))
    assert got.shape[-2:] == expected.shape
    np.testing.assert_allclose(got[0, 0].double().numpy(), expected, rtol=0, atol=atol)


def test_top_db_matches_librosa_per_example():
    front = LogMel(16000, top_db=40.0)
    loud = _test_signal(16000, 1.0, seed=1)
    quiet = 0.01 * _test_signal(16000, 1.0, seed=2)
    got = front(torch.from_numpy(np.stack([loud, quiet])))
    for i, y in enumerate([loud, quiet]):
        expected = _librosa_logmel(y, front, top_db=40.0)
        np.testing.assert_allclose(got[i, 0].numpy(), expected, rtol=0, atol=ATOL_DB_FLOAT64)
        # The floor is relative to each example's own peak.
        assert got[i].max() - got[i].min() <= 40.0 + 1e-6


def test_silence_gives_the_amin_floor():
    front = LogMel(16000, amin=1e-10)
    out = front(torch.zeros(2, 16000))
    torch.testing.assert_close(out, torch.full_like(out, -100.0))


def test_batched_equals_item_by_item():
    front = LogMel(16000)
    batch = torch.from_numpy(np.stack([_test_signal(16000, 2.0, seed=s) for s in range(4)])).float()
    together = front(batch)
    for i in range(batch.shape[0]):
        alone = front(batch[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-4)


@pytest.mark.parametrize("num_samples", [1024, 1025, 16000, 33333])
def test_any_length_at_least_n_fft(num_samples):
    front = LogMel(16000, n_fft=1024, hop_length=320)
    out = front(torch.randn(3, num_samples))
    assert out.shape == (3, 1, 64, 1 + num_samples // 320)
    assert torch.isfinite(out).all()


def test_one_dimensional_input_is_a_batch_of_one():
    front = LogMel(16000)
    y = torch.randn(16000)
    torch.testing.assert_close(front(y), front(y.unsqueeze(0)))


def test_buffers_are_not_in_state_dict_and_follow_dtype_conversion():
    front = LogMel(16000)
    assert dict(front.state_dict()) == {}
    assert {name for name, _ in front.named_buffers()} == {"window", "mel_basis"}
    assert front.mel_basis.shape == (64, 513)
    assert front.window.dtype == torch.float32


def test_autocast_runs_in_float32():
    front = LogMel(16000)
    y = torch.randn(2, 16000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = front(y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, front(y))


def test_config_round_trip():
    front = LogMel(8000, n_fft=512, hop_length=160, n_mels=40, fmin=50.0, fmax=3000.0, top_db=80.0)
    clone = LogMel(**front.config())
    assert clone.config() == front.config()
    y = torch.randn(1, 8000)
    torch.testing.assert_close(clone(y), front(y))


def test_power_to_db_function():
    power = torch.tensor([[1.0, 10.0, 100.0, 0.0]])
    torch.testing.assert_close(power_to_db(power), torch.tensor([[0.0, 10.0, 20.0, -100.0]]))
    torch.testing.assert_close(
        power_to_db(power, top_db=15.0), torch.tensor([[5.0, 10.0, 20.0, 5.0]])
    )


def test_sample_rate_defaults():
    assert (LOG_MEL.n_fft(16000), LOG_MEL.hop_length(16000)) == (1024, 320)
    assert (LOG_MEL.n_fft(8000), LOG_MEL.hop_length(8000)) == (512, 160)
    assert (LOG_MEL.n_fft(22050), LOG_MEL.hop_length(22050)) == (2048, 441)


@pytest.mark.parametrize(
    "sample_rate, n_fft, hop_length, fmax", [(32000, 1024, 320, 14000.0), (16000, 512, 160, 8000.0)]
)
def test_panns_preset_gives_the_released_sizes(sample_rate, n_fft, hop_length, fmax):
    # PANNs' 32 kHz and 16 kHz CNN14 releases (the 8 kHz one: 256/80).
    assert PANNS_LOG_MEL.n_fft(sample_rate) == n_fft
    assert PANNS_LOG_MEL.hop_length(sample_rate) == hop_length
    assert PANNS_LOG_MEL.fmax_at(sample_rate) == fmax
    assert (PANNS_LOG_MEL.n_fft(8000), PANNS_LOG_MEL.hop_length(8000)) == (256, 80)


def test_preview_preset_is_finer_in_time():
    assert (PREVIEW_LOG_MEL.n_fft(22050), PREVIEW_LOG_MEL.hop_length(22050)) == (1024, 220)
    assert PREVIEW_LOG_MEL.fmax_at(22050) == 11025.0


def test_log_mel_defaults_are_the_default_preset():
    # One home: LogMel() at any rate is LOG_MEL's front end at that rate.
    for rate in (8000, 16000, 22050):
        assert LogMel(sample_rate=rate).config() == {
            **LOG_MEL.log_mel(rate).config(),
            "fmax": None,
        }


def test_settings_build_their_log_mel():
    frontend = PANNS_LOG_MEL.log_mel(32000)
    assert frontend.config() == {
        "sample_rate": 32000,
        "n_fft": 1024,
        "hop_length": 320,
        "n_mels": 64,
        "fmin": 50.0,
        "fmax": 14000.0,
        "top_db": None,
        "amin": 1e-10,
        "pad_mode": "reflect",
    }


def test_settings_refuse_an_unknown_rounding():
    with pytest.raises(ValueError, match="window_rounding"):
        LogMelSettings(window_rounding="down")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sample_rate": 0}, "sample_rate"),
        ({"n_fft": 1}, "n_fft"),
        ({"fmin": 9000.0}, "fmin"),
        ({"fmax": 9000.0}, "fmax"),
        ({"amin": 0.0}, "amin"),
        ({"top_db": -1.0}, "top_db"),
        ({"pad_mode": "wrap"}, "pad_mode"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LogMel(**kwargs)


def test_too_short_or_badly_shaped_input_raises():
    front = LogMel(16000, n_fft=1024)
    with pytest.raises(ValueError, match="at least n_fft=1024"):
        front(torch.randn(2, 1000))
    with pytest.raises(ValueError, match="batch, samples"):
        front(torch.randn(2, 1, 16000))
