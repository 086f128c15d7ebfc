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
from typing import Any

import librosa
import torch
import torch.nn.functional as F
from torch import nn

#: Frame hop of the sample-rate-derived defaults (20 ms) and the analysis window (>= 64 ms).
DEFAULT_HOP_SECONDS = 0.02
DEFAULT_WINDOW_SECONDS = 0.064


def default_hop_length(sample_rate: int) -> int:
    """A 20 ms hop in samples (320 at 16 kHz, 160 at 8 kHz, 441 at 22.05 kHz)."""
    return max(1, round(sample_rate * DEFAULT_HOP_SECONDS))


def default_n_fft(sample_rate: int) -> int:
    """Smallest power of two covering 64 ms (1024 at 16 kHz, 512 at 8 kHz, 2048 at 22.05 kHz)."""
    return 2 ** math.ceil(math.log2(max(2.0, sample_rate * DEFAULT_WINDOW_SECONDS)))


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


def dft_basis(window: torch.Tensor) -> torch.Tensor:
    """Windowed one-sided DFT as ``conv1d`` weights, so a strided convolution computes the STFT.

    Args:
        window: ``(n_fft,)`` analysis window.

    Returns:
        ``(2 * (n_fft // 2 + 1), 1, n_fft)`` in the window's dtype: rows ``k`` hold
        ``window * cos(2 pi k t / n_fft)`` (the real part of bin ``k``), the rows after them
        ``-window * sin(2 pi k t / n_fft)`` (the imaginary part). Computed in float64.
    """
    n_fft = window.shape[0]
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    # (k * t) mod n_fft keeps the angles small, so float64 cos/sin stay exact to rounding.
    phase = (bins * torch.arange(n_fft, dtype=torch.float64)) % n_fft
    angle = (2 * math.pi / n_fft) * phase
    weighted = window.to(torch.float64)
    basis = torch.cat([torch.cos(angle) * weighted, -torch.sin(angle) * weighted])
    return basis.unsqueeze(1).to(window.dtype)


class LogMel(nn.Module):
    """Log-scaled mel spectrogram of a waveform batch, computed with ``torch.stft``.

    The Hann window and the mel filterbank are buffers, so the module follows the model to any
    device. They are not persistent (not in the ``state_dict``): both are derived from the
    settings, which checkpoints store through :meth:`config`.

    Under autocast the module runs in float32 (FFTs in half precision lose too much accuracy and
    cuFFT only supports power-of-two sizes in half); float64 input stays float64.

    :meth:`set_dft` switches the STFT from ``torch.stft`` (``"fft"``, the default) to a strided
    convolution with :func:`dft_basis` (``"conv"``): the same numbers to float32 rounding, and a
    plain ``Conv`` in an ONNX export, which onnxruntime runs faster than its ``STFT`` operator.

    Args:
        sample_rate: sample rate of the input waveform in Hz.
        n_fft: FFT size and window length in samples.
        hop_length: hop between frames in samples.
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
        n_fft: int = 1024,
        hop_length: int = 320,
        n_mels: int = 64,
        fmin: float = 20.0,
        fmax: float | None = None,
        top_db: float | None = None,
        amin: float = 1e-10,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
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
        self.dft = "fft"
        self.register_buffer("dft_weight", None, persistent=False)

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

    def set_dft(self, method: str) -> LogMel:
        """Compute the STFT with ``torch.stft`` (``"fft"``) or a DFT convolution (``"conv"``).

        The convolution costs ``n_fft / log2(n_fft)`` times the FFT's arithmetic, but exports to
        ONNX as one ``Conv`` (see :mod:`wavemel.export`). Not part of :meth:`config`: both give
        the same features.

        Returns:
            ``self``.
        """
        if method not in ("fft", "conv"):
            raise ValueError(f"dft must be 'fft' or 'conv', got {method!r}")
        self.dft = method
        self.dft_weight = dft_basis(self.window) if method == "conv" else None
        return self

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
            power = self._power(waveform.to(dtype))  # (B, n_fft // 2 + 1, frames)
            mel = torch.matmul(self.mel_basis.to(dtype), power)  # (B, n_mels, frames)
            db = power_to_db(mel, amin=self.amin, top_db=self.top_db)
        return db.unsqueeze(1)

    def _power(self, x: torch.Tensor) -> torch.Tensor:
        """``|STFT|**2`` of centred frames: ``(B, T) -> (B, n_fft // 2 + 1, 1 + T // hop)``."""
        if self.dft == "conv":
            half = self.n_fft // 2
            padded = F.pad(x.unsqueeze(1), (half, half), mode=self.pad_mode)
            weight = self.dft_weight
            if weight.dtype != x.dtype:  # float64 input: a float32 basis would cost its precision
                weight = dft_basis(self.window.to(x.dtype))
            parts = F.conv1d(padded, weight, stride=self.hop_length)
            real, imag = parts.chunk(2, dim=1)
            return real.square() + imag.square()
        stft = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window.to(x.dtype),
            center=True,
            pad_mode=self.pad_mode,
            return_complex=True,
        )
        return stft.real.square() + stft.imag.square()
