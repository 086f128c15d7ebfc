"""Log-mel front end: a waveform batch to a log-scaled mel spectrogram, on the batch's device.

The math follows librosa's defaults so that features computed here match
``librosa.feature.melspectrogram(..., power=2.0)`` followed by
``librosa.power_to_db(ref=1.0, amin=amin, top_db=top_db)``:

* centred frames (``center=True``) with zero padding (librosa's default ``pad_mode="constant"``),
* a periodic Hann window of length ``n_fft``,
* the power spectrum ``|STFT|**2``,
* librosa's Slaney-style mel filterbank (``htk=False, norm="slaney"``),
* ``10 * log10(max(amin, S))`` with ``ref=1.0``, optionally floored at ``max - top_db`` per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import librosa
import torch
from torch import nn

_POWER_OF_TWO_ROUNDING = ("up", "nearest")


@dataclass(frozen=True)
class LogMelSettings:
    """A log-mel front end's settings in seconds and Hz, so that one setting fits every rate.

    The one home of the STFT settings: :class:`LogMel`'s defaults, cnn-spec
    (:data:`LOG_MEL`), cnn14 (:data:`PANNS_LOG_MEL`) and the figures (:data:`PREVIEW_LOG_MEL`)
    all derive their sizes in samples from one of these presets.

    Attributes:
        window_seconds: analysis window; the FFT size is a power of two near it.
        window_rounding: ``"up"``: the smallest power of two covering ``window_seconds``;
            ``"nearest"``: the power of two nearest to it (PANNs' rule).
        hop_seconds: hop between frames.
        n_mels: number of mel bands.
        fmin: lowest filterbank frequency in Hz.
        fmax: highest filterbank frequency in Hz, capped at the Nyquist frequency (``None``:
            the Nyquist frequency itself).
        top_db: if given, each example's values are floored at its maximum minus ``top_db``.
        amin: power floor before the logarithm (``1e-10`` -> -100 dB for silence).
        pad_mode: padding of the centred frames, ``"constant"`` (zeros) or ``"reflect"``.
    """

    window_seconds: float = 0.064
    window_rounding: str = "up"
    hop_seconds: float = 0.02
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float | None = None
    top_db: float | None = None
    amin: float = 1e-10
    pad_mode: str = "constant"

    def __post_init__(self) -> None:
        if self.window_rounding not in _POWER_OF_TWO_ROUNDING:
            raise ValueError(
                f"window_rounding must be one of {_POWER_OF_TWO_ROUNDING}, "
                f"got {self.window_rounding!r}"
            )

    def n_fft(self, sample_rate: int) -> int:
        """FFT size at ``sample_rate`` (64 ms up: 1024 at 16 kHz, 2048 at 22.05 kHz)."""
        # At least 2 samples: log2 of a smaller window is negative or undefined.
        exponent = math.log2(max(2.0, sample_rate * self.window_seconds))
        return 2 ** (math.ceil(exponent) if self.window_rounding == "up" else round(exponent))

    def hop_length(self, sample_rate: int) -> int:
        """Frame hop in samples at ``sample_rate`` (20 ms: 320 at 16 kHz, 441 at 22.05 kHz)."""
        return max(1, round(sample_rate * self.hop_seconds))

    def fmax_at(self, sample_rate: int) -> float:
        """Highest filterbank frequency at ``sample_rate``: ``fmax`` capped at Nyquist."""
        nyquist = sample_rate / 2
        return nyquist if self.fmax is None else min(float(self.fmax), nyquist)

    def log_mel(self, sample_rate: int) -> LogMel:
        """The :class:`LogMel` of these settings at ``sample_rate``."""
        return LogMel(
            sample_rate=sample_rate,
            n_fft=self.n_fft(sample_rate),
            hop_length=self.hop_length(sample_rate),
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=self.fmax_at(sample_rate),
            top_db=self.top_db,
            amin=self.amin,
            pad_mode=self.pad_mode,
        )


#: cnn-spec's front end (and :class:`LogMel`'s defaults): a window of at least 64 ms and a
#: 20 ms hop resolve 64 bands from 20 Hz to Nyquist at the poster's rates.
LOG_MEL = LogMelSettings()
#: PANNs' CNN14 analysis, as durations so that other rates get the matching sizes (its 32, 16
#: and 8 kHz releases use 1024/320, 512/160 and 256/80 samples): 64 bands over 50 Hz-14 kHz,
#: reflect-padded frames, no ``top_db``.
PANNS_LOG_MEL = LogMelSettings(
    window_seconds=0.032,
    window_rounding="nearest",
    hop_seconds=0.01,
    fmin=50.0,
    fmax=14000.0,
    pad_mode="reflect",
)
#: The figures' spectrograms: finer in time (10 ms hop, 40 ms window) and 80 bands, drawn for the
#: eye rather than fed to a network.
PREVIEW_LOG_MEL = LogMelSettings(window_seconds=0.04, hop_seconds=0.01, n_mels=80)


def power_to_db(
    power: torch.Tensor, amin: float = 1e-10, top_db: float | None = None
) -> torch.Tensor:
    """``10 * log10(max(amin, power))`` (reference 1.0), optionally floored per example.

    Args:
        power: non-negative power values, shape ``(B, ...)``.
        amin: floor applied before the logarithm (``1e-10`` gives a -100 dB floor).
        top_db: if given, values below ``max - top_db`` of each example are raised to it.

    Returns:
        Tensor of the same shape in dB.
    """
    db = 10.0 * torch.log10(torch.clamp(power, min=amin))
    if top_db is not None:
        # Per example (librosa does it per call, and we call it per clip in the parity test).
        peak = db.flatten(1).amax(dim=1).view(-1, *([1] * (db.dim() - 1)))
        db = torch.maximum(db, peak - top_db)
    return db


class LogMel(nn.Module):
    """Log-scaled mel spectrogram of a waveform batch, computed with ``torch.stft``.

    The Hann window and the mel filterbank are buffers, so the module follows the model to any
    device. They are not persistent (not in the ``state_dict``): both are derived from the
    settings, which checkpoints store through :meth:`config`.

    Under autocast the module runs in float32 (FFTs in half precision lose too much accuracy and
    cuFFT only supports power-of-two sizes in half); float64 input stays float64.

    Args:
        sample_rate: sample rate of the input waveform in Hz.
        n_fft: FFT size and window length in samples (``None``: :data:`LOG_MEL`'s, 1024 at
            16 kHz).
        hop_length: hop between frames in samples (``None``: :data:`LOG_MEL`'s, 320 at 16 kHz).
        n_mels: number of mel bands.
        fmin: lowest filterbank frequency in Hz.
        fmax: highest filterbank frequency in Hz (``None``: ``sample_rate / 2``).
        top_db: if given, each example's values are floored at its maximum minus ``top_db``.
        amin: power floor before the logarithm (``1e-10`` -> -100 dB for silence).
        pad_mode: padding of the centred frames: ``"constant"`` (zeros, librosa's default) or
            ``"reflect"``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int | None = None,
        hop_length: int | None = None,
        n_mels: int = LOG_MEL.n_mels,
        fmin: float = LOG_MEL.fmin,
        fmax: float | None = LOG_MEL.fmax,
        top_db: float | None = LOG_MEL.top_db,
        amin: float = LOG_MEL.amin,
        pad_mode: str = LOG_MEL.pad_mode,
    ) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        n_fft = LOG_MEL.n_fft(sample_rate) if n_fft is None else n_fft
        hop_length = LOG_MEL.hop_length(sample_rate) if hop_length is None else hop_length
        if n_fft < 2 or hop_length < 1 or n_mels < 1:
            raise ValueError(
                f"need n_fft >= 2, hop_length >= 1, n_mels >= 1; got n_fft={n_fft}, "
                f"hop_length={hop_length}, n_mels={n_mels}"
            )
        nyquist = sample_rate / 2
        fmax_value = nyquist if fmax is None else float(fmax)
        if not 0 <= fmin < fmax_value <= nyquist:
            raise ValueError(
                f"need 0 <= fmin < fmax <= sample_rate / 2 ({nyquist:g}); "
                f"got fmin={fmin}, fmax={fmax}"
            )
        if amin <= 0:
            raise ValueError(f"amin must be positive, got {amin}")
        if top_db is not None and top_db < 0:
            raise ValueError(f"top_db must be non-negative or None, got {top_db}")
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.fmin = float(fmin)
        self.fmax = fmax if fmax is None else float(fmax)
        self.top_db = top_db if top_db is None else float(top_db)
        self.amin = float(amin)
        self.pad_mode = pad_mode

        # librosa's "hann" window is scipy's periodic (fftbins=True) Hann window.
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
        mel = librosa.filters.mel(
            sr=self.sample_rate,
            n_fft=self.n_fft,
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=fmax_value,
            htk=False,
            norm="slaney",
            dtype="float64",
        )
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel).float(), persistent=False)

    def config(self) -> dict[str, Any]:
        """JSON-able settings; ``LogMel(**cfg)`` rebuilds an identical module."""
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "fmin": self.fmin,
            "fmax": self.fmax,
            "top_db": self.top_db,
            "amin": self.amin,
            "pad_mode": self.pad_mode,
        }

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for an input of ``num_samples`` samples (centred framing)."""
        return 1 + num_samples // self.hop_length

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Compute the log-mel spectrogram.

        Args:
            waveform: ``(B, T)`` (or ``(T,)``) waveform at ``sample_rate``, ``T >= n_fft``.

        Returns:
            ``(B, 1, n_mels, 1 + T // hop_length)`` log-mel power in dB (reference 1.0).
        """
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(
                f"LogMel expects a (batch, samples) waveform, got {tuple(waveform.shape)}"
            )
        if waveform.shape[-1] < self.n_fft:
            raise ValueError(
                f"LogMel needs at least n_fft={self.n_fft} samples, got {waveform.shape[-1]}"
            )
        dtype = waveform.dtype if waveform.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.to(dtype)
            stft = torch.stft(
                x,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self.window.to(dtype),
                center=True,
                pad_mode=self.pad_mode,
                return_complex=True,
            )
            power = stft.real.square() + stft.imag.square()  # (B, n_fft // 2 + 1, frames)
            mel = torch.matmul(self.mel_basis.to(dtype), power)  # (B, n_mels, frames)
            db = power_to_db(mel, amin=self.amin, top_db=self.top_db)
        return db.unsqueeze(1)
