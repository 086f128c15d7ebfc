"""Audio decoding: any file libsndfile reads, to float32 at the sample rate a model wants.

``load_audio`` is the single entry point every other module uses to turn a file into samples, so
that all of them see the same channel mixing, resampling and error messages. Decoding is done by
libsndfile (through ``soundfile``) and resampling by soxr at high quality, which keeps a sine's
frequency and level (see ``tests/test_audio.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from wavemel.errors import AudioError

__all__ = ["AudioInfo", "audio_info", "load_audio", "AUDIO_EXTENSIONS"]

#: File extensions the dataset adapters treat as audio (libsndfile reads all of them; MP3 needs
#: libsndfile >= 1.1).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")

# soxr's "HQ" is a 20-bit linear-phase filter: transparent for 16-bit sources and about twice as
# fast as "VHQ", which only matters for 24-bit masters that tagging models never see.
_RESAMPLE_QUALITY = "HQ"


@dataclass(frozen=True)
class AudioInfo:
    """Header facts about an audio file, read without decoding the samples.

    Attributes:
        sample_rate: Samples per second per channel.
        frames: Number of samples per channel (0 for an empty file).
        channels: Number of channels.
        duration: Length in seconds (``frames / sample_rate``).
        format: libsndfile container name, e.g. ``"WAV"`` or ``"FLAC"``.
        subtype: libsndfile sample encoding, e.g. ``"PCM_16"`` or ``"FLOAT"``.
    """

    sample_rate: int
    frames: int
    channels: int
    duration: float
    format: str = ""
    subtype: str = ""


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    return path


def _decode_failure(path: Path, exc: Exception) -> AudioError:
    """Turn a libsndfile error into a one-line message that says what is wrong with the file."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # libsndfile's own text after "Error opening '...': " is the useful part.
    reason = reason.rsplit(": ", 1)[-1].strip().rstrip(".")
    if os.path.getsize(path) == 0:
        return AudioError(f"{path}: file is empty (0 bytes), not an audio file")
    if "not recognised" in reason.lower() or "unknown format" in reason.lower():
        return AudioError(f"{path}: not an audio file (format not recognised)")
    return AudioError(f"{path}: unreadable or corrupt audio ({reason})")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read an audio file's header: sample rate, frames, channels, duration.

    Args:
        path: The audio file.

    Returns:
        The file's :class:`AudioInfo`. Fast: only the header is parsed.

    Raises:
        AudioError: The file is missing, a directory, or not readable as audio.
    """
    path = _check_path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _decode_failure(path, exc) from None
    frames = max(int(info.frames), 0)
    rate = int(info.samplerate)
    return AudioInfo(
        sample_rate=rate,
        frames=frames,
        channels=int(info.channels),
        duration=frames / rate if rate > 0 else 0.0,
        format=str(info.format),
        subtype=str(info.subtype),
    )


def load_audio(
    path: str | os.PathLike, sample_rate: int | None = None, *, mono: bool = True
) -> np.ndarray:
    """Decode an audio file to float32 samples in [-1, 1], optionally resampled.

    Args:
        path: Any file libsndfile reads: WAV (8/16/24/32-bit PCM, float32/64), FLAC, OGG/Vorbis,
            AIFF, and MP3 where the installed libsndfile supports it.
        sample_rate: Target rate in Hz; ``None`` keeps the file's own rate. Resampling uses soxr
            at high quality.
        mono: Average the channels into one (the models are mono). With ``False`` the channels
            are kept.

    Returns:
        ``(T,)`` float32 when ``mono`` is true, else ``(channels, T)``. An empty file (valid
        header, zero frames) gives a zero-length array: the caller decides what to do with it.

    Raises:
        AudioError: The file is missing, a directory, not audio, unreadable or corrupt, or holds
            NaN/Inf samples. The message names the file and the reason on one line.
        ValueError: ``sample_rate`` is not positive.
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = _check_path(path)
    try:
        with sf.SoundFile(str(path)) as handle:
            file_rate = int(handle.samplerate)
            # always_2d keeps mono and multichannel files on one code path: (frames, channels).
            data = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _decode_failure(path, exc) from None

    if data.size and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioError(f"{path}: contains {bad} NaN/Inf samples")

    if mono:
        # Channel mean, not the first channel: a sound panned to one side must not vanish.
        data = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]

    if sample_rate is not None and sample_rate != file_rate:
        if data.shape[0] == 0:
            shape = (0,) if mono else (0, data.shape[1])
            data = np.zeros(shape, dtype=np.float32)
        else:
            data = soxr.resample(data, file_rate, sample_rate, quality=_RESAMPLE_QUALITY)

    data = np.ascontiguousarray(data, dtype=np.float32)
    return data if mono else np.ascontiguousarray(data.T)
