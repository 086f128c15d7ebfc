"""Audio decoding: any file libsndfile reads, to float32 at the sample rate a model wants.

``load_audio`` (the whole file) and ``stream_audio`` (block by block, for long files) are the only
ways other modules turn a file into samples. Both open files through one checked path, so all of
them see the same channel mixing, resampling and error messages, and none ever opens a FIFO.
Decoding is done by libsndfile (through ``soundfile``) and resampling by soxr at high quality,
which keeps a sine's frequency and level (see ``tests/test_audio.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from wavemel._io import require_regular_file
from wavemel._paths import display_path
from wavemel.errors import AudioError

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioInfo",
    "audio_info",
    "check_audio_path",
    "load_audio",
    "stream_audio",
]

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


def check_audio_path(path: str | os.PathLike) -> os.stat_result:
    """Check, without opening it, that ``path`` is a regular file that decoding may open.

    Opening a FIFO would block until a writer appears and a device may never end, so both are
    refused here, as are folders, broken links and link loops. File finders use this to report
    such entries by name instead of handing them to a decoder.

    Returns:
        The file's ``os.stat`` (links followed).

    Raises:
        AudioError: One line naming the file (escaped by :func:`display_path`) and the reason.
    """
    shown = display_path(path)
    if not os.path.lexists(path):
        raise AudioError(f"{shown}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{shown}: is a directory, not an audio file")
    try:
        return require_regular_file(path, error=AudioError, what="regular file")
    except AudioError as exc:
        # Its message starts with the raw name, which may not be printable: show the escaped one.
        raise AudioError(shown + str(exc)[len(str(path)) :]) from None


def _decode_failure(path: Path, exc: Exception) -> AudioError:
    """Turn a libsndfile error into a one-line message that says what is wrong with the file."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # libsndfile's own text after "Error opening '...': " is the useful part.
    reason = reason.rsplit(": ", 1)[-1].strip().rstrip(".")
    shown = display_path(path)
    if os.path.getsize(path) == 0:
        return AudioError(f"{shown}: file is empty (0 bytes), not an audio file")
    if "not recognised" in reason.lower() or "unknown format" in reason.lower():
        return AudioError(f"{shown}: not an audio file (format not recognised)")
    return AudioError(f"{shown}: unreadable or corrupt audio ({reason})")


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[tuple[Path, sf.SoundFile]]:
    """The one place a file is opened for decoding: checks, then libsndfile, then error mapping.

    Yields:
        ``(path, handle)``. libsndfile errors raised while the handle is open (a truncated data
        chunk, say) leave as one-line :class:`AudioError`s naming the file.
    """
    path = Path(path)
    check_audio_path(path)
    try:
        # The name as bytes: soundfile would encode a str strictly as UTF-8 and fail on a name
        # that is not (b"x_\xff.wav"), although the file itself is fine.
        with sf.SoundFile(os.fsencode(path)) as handle:
            yield path, handle
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _decode_failure(path, exc) from None


def _check_finite(path: Path, data: np.ndarray) -> None:
    if data.size and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioError(f"{display_path(path)}: contains {bad} NaN/Inf samples")


def _mix_to_mono(data: np.ndarray) -> np.ndarray:
    """``(frames, channels)`` -> ``(frames,)``: the channel mean, so a sound panned to one side
    does not vanish as it would if the first channel were taken."""
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read an audio file's header: sample rate, frames, channels, duration.

    Args:
        path: The audio file.

    Returns:
        The file's :class:`AudioInfo`. Fast: only the header is parsed.

    Raises:
        AudioError: The file is missing, not a regular file, or not readable as audio.
    """
    with _open(path) as (_, handle):
        frames = max(int(handle.frames), 0)
        rate = int(handle.samplerate)
        return AudioInfo(
            sample_rate=rate,
            frames=frames,
            channels=int(handle.channels),
            duration=frames / rate if rate > 0 else 0.0,
            format=str(handle.format),
            subtype=str(handle.subtype),
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
        With ``mono``, the samples equal the concatenated blocks of :func:`stream_audio`.

    Raises:
        AudioError: The file is missing, not a regular file, not audio, unreadable or corrupt,
            or holds NaN/Inf samples. The message names the file and the reason on one line.
        ValueError: ``sample_rate`` is not positive.
    """
    _check_rate(sample_rate)
    with _open(path) as (path, handle):
        file_rate = int(handle.samplerate)
        # always_2d keeps mono and multichannel files on one code path: (frames, channels).
        data = handle.read(dtype="float32", always_2d=True)
    _check_finite(path, data)
    if mono:
        data = _mix_to_mono(data)

    if sample_rate is not None and sample_rate != file_rate:
        if data.shape[0] == 0:
            shape = (0,) if mono else (0, data.shape[1])
            data = np.zeros(shape, dtype=np.float32)
        else:
            data = soxr.resample(data, file_rate, sample_rate, quality=_RESAMPLE_QUALITY)

    data = np.ascontiguousarray(data, dtype=np.float32)
    return data if mono else np.ascontiguousarray(data.T)


def stream_audio(
    path: str | os.PathLike, sample_rate: int | None = None, block_frames: int = 1 << 17
) -> Iterator[np.ndarray]:
    """Decode an audio file block by block to mono float32, resampling as it goes.

    Memory stays bounded by one block however long the file is. Channel mixing and resampling
    are those of :func:`load_audio` (channel mean, then soxr "HQ", whose streaming resampler
    gives the same samples as its whole-signal one), so concatenating the blocks gives exactly
    ``load_audio(path, sample_rate)``.

    Args:
        path: Any file :func:`load_audio` reads.
        sample_rate: Target rate in Hz; ``None`` keeps the file's own rate.
        block_frames: Frames decoded per block, at the file's rate (blocks after resampling
            are about ``block_frames * sample_rate / file_rate`` samples, some may be empty).

    Yields:
        ``(n,)`` float32 blocks. The file is checked and opened at the first ``next()``.

    Raises:
        AudioError: As :func:`load_audio`; a block with NaN/Inf samples stops the stream.
        ValueError: ``sample_rate`` or ``block_frames`` is not positive.
    """
    _check_rate(sample_rate)
    if block_frames < 1:
        raise ValueError(f"block_frames must be positive, got {block_frames}")
    return _stream(path, sample_rate, block_frames)


def _stream(path: str | os.PathLike, sample_rate: int | None, block_frames: int):
    with _open(path) as (path, handle):
        file_rate = int(handle.samplerate)
        resampler = None
        if sample_rate is not None and sample_rate != file_rate:
            resampler = soxr.ResampleStream(
                file_rate, sample_rate, 1, dtype="float32", quality=_RESAMPLE_QUALITY
            )
        while True:
            block = handle.read(block_frames, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            _check_finite(path, block)
            mono = np.ascontiguousarray(_mix_to_mono(block))
            yield mono if resampler is None else resampler.resample_chunk(mono, last=False)
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def _check_rate(sample_rate: int | None) -> None:
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
