"""Decoding every format and bit depth, resampling accuracy, and each bad-input error."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavemel.audio import audio_info, load_audio, stream_audio
from wavemel.errors import AudioError

RATE = 16000


def _stereo(frames: int = 4000, rate: int = RATE) -> np.ndarray:
    """(frames, 2) test signal: different tones per channel, peak 0.4 so the mean never clips."""
    t = np.arange(frames) / rate
    left = 0.4 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 1250 * t + 0.5)
    return np.stack([left, right], axis=1)


# (format, subtype, extension, max abs error against the float64 channel mean)
LOSSLESS = [
    ("WAV", "PCM_U8", "wav", 1.5 / 128),
    ("WAV", "PCM_16", "wav", 1.5 / 32768),
    ("WAV", "PCM_24", "wav", 1e-6),
    ("WAV", "PCM_32", "wav", 1e-6),
    ("WAV", "FLOAT", "wav", 1e-7),
    ("WAV", "DOUBLE", "wav", 1e-7),
    ("FLAC", "PCM_16", "flac", 1.5 / 32768),
    ("FLAC", "PCM_24", "flac", 1e-6),
    ("AIFF", "PCM_16", "aiff", 1.5 / 32768),
]


@pytest.mark.parametrize(
    "fmt,subtype,ext,atol", LOSSLESS, ids=[f"{f}-{s}" for f, s, *_ in LOSSLESS]
)
def test_lossless_formats_decode_to_channel_mean(tmp_path, fmt, subtype, ext, atol):
    data = _stereo()
    path = tmp_path / f"clip.{ext}"
    sf.write(path, data, RATE, format=fmt, subtype=subtype)

    mono = load_audio(path)
    assert mono.dtype == np.float32 and mono.ndim == 1 and mono.shape == (len(data),)
    np.testing.assert_allclose(mono, data.mean(axis=1), rtol=0, atol=atol)

    both = load_audio(path, mono=False)
    assert both.shape == (2, len(data)) and both.dtype == np.float32
    np.testing.assert_allclose(both, data.T, rtol=0, atol=2 * atol)

    info = audio_info(path)
    assert (info.sample_rate, info.frames, info.channels) == (RATE, len(data), 2)
    assert info.duration == pytest.approx(len(data) / RATE)
    assert info.subtype == subtype


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum))
    # Parabolic interpolation of the log magnitude gives sub-bin precision.
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(x)


def _lossy_case(tmp_path, fmt: str, subtype: str, ext: str) -> None:
    rate = 44100
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / f"tone.{ext}"
    sf.write(path, tone, rate, format=fmt, subtype=subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    # Codec delay and padding change the length a little, never by more than 0.1 s.
    assert abs(len(x) - rate) < rate // 10
    assert _peak_hz(x, rate) == pytest.approx(1000, abs=2)
    rms = np.sqrt(np.mean(x[rate // 10 : -rate // 10] ** 2))
    assert 20 * np.log10(rms / (0.5 / np.sqrt(2))) == pytest.approx(0, abs=1.0)


def test_ogg_vorbis_decodes(tmp_path):
    _lossy_case(tmp_path, "OGG", "VORBIS", "ogg")


def test_mp3_decodes_where_supported(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    try:
        sf.write(io.BytesIO(), np.zeros(1152), 44100, format="MP3", subtype="MPEG_LAYER_III")
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        pytest.skip(f"this libsndfile cannot write MP3 to make a test file: {exc}")
    _lossy_case(tmp_path, "MP3", "MPEG_LAYER_III", "mp3")


@pytest.mark.parametrize(
    "source_rate,target_rate,freq", [(44100, 16000, 440.0), (8000, 22050, 1000.0)]
)
def test_resampling_keeps_frequency_and_level(tmp_path, source_rate, target_rate, freq):
    t = np.arange(2 * source_rate) / source_rate
    amplitude = 0.5
    path = tmp_path / "sine.wav"
    sf.write(path, amplitude * np.sin(2 * np.pi * freq * t), source_rate, subtype="FLOAT")

    y = load_audio(path, target_rate)
    assert y.dtype == np.float32
    # soxr keeps the duration: len = round(n * target / source), to within one sample.
    assert abs(len(y) - round(len(t) * target_rate / source_rate)) <= 1
    # Frequency within 0.5 Hz; level within 0.01 dB away from the filter's edge transients.
    assert _peak_hz(y, target_rate) == pytest.approx(freq, abs=0.5)
    core = y[target_rate // 10 : -target_rate // 10]
    rms_db = 20 * np.log10(
        np.sqrt(np.mean(core.astype(np.float64) ** 2)) / (amplitude / np.sqrt(2))
    )
    assert rms_db == pytest.approx(0.0, abs=0.01)


def test_same_rate_is_not_resampled(tmp_path):
    data = _stereo()[:, 0]
    path = tmp_path / "a.wav"
    sf.write(path, data, RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, RATE), data.astype(np.float32))


def test_empty_wav_is_a_zero_length_array(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0), 22050, subtype="PCM_16")
    assert path.stat().st_size == 44
    for rate in (None, 22050, 16000):
        x = load_audio(path, rate)
        assert x.shape == (0,) and x.dtype == np.float32
    assert load_audio(path, 16000, mono=False).shape == (1, 0)
    info = audio_info(path)
    assert info.frames == 0 and info.duration == 0.0


def test_invalid_sample_rate_is_a_value_error(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(10), RATE)
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(path, 0)


def _make_bad(tmp_path, case: str):
    path = tmp_path / f"{case}.wav"
    if case == "missing":
        return path
    if case == "directory":
        path.mkdir()
    elif case == "text":
        path.write_text("fname,label\nnot audio at all, just a CSV renamed to .wav\n")
    elif case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "truncated":
        sf.write(path, np.zeros(1000), RATE, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[:30])  # header cut before the data chunk
    elif case in ("nan", "inf"):
        data = np.full((100, 2), 0.1)
        data[37, 1] = np.nan if case == "nan" else -np.inf
        sf.write(path, data, RATE, subtype="DOUBLE" if case == "inf" else "FLOAT")
    return path


@pytest.mark.parametrize(
    "case,reason",
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("text", "not an audio file"),
        ("zero_bytes", "0 bytes"),
        ("truncated", "corrupt"),
        ("nan", "NaN/Inf"),
        ("inf", "NaN/Inf"),
    ],
)
def test_bad_input_gives_one_line_audio_error_naming_the_file(tmp_path, case, reason):
    path = _make_bad(tmp_path, case)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, 8000)
    message = str(excinfo.value)
    assert str(path) in message and reason in message
    assert "\n" not in message
    if case not in ("nan", "inf"):  # header-only reads cannot see bad samples
        with pytest.raises(AudioError, match=reason):
            audio_info(path)


# --- streaming reads --------------------------------------------------------------------------


@pytest.mark.parametrize("file_rate,target_rate", [(44100, 16000), (8000, 22050), (16000, 16000)])
@pytest.mark.parametrize("block_frames", [1, 999, 1 << 17])
def test_stream_blocks_concatenate_to_the_whole_file_read(
    tmp_path, file_rate, target_rate, block_frames
):
    data = _stereo(frames=file_rate // 2 + 7, rate=file_rate)
    path = tmp_path / "clip.wav"
    sf.write(path, data, file_rate, subtype="FLOAT")
    blocks = list(stream_audio(path, target_rate, block_frames=block_frames))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    # Bit for bit: inference (streamed) and training (whole file) must see the same samples.
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path, target_rate))


def test_stream_of_an_empty_file_yields_no_samples(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0), 22050, subtype="PCM_16")
    assert sum(len(b) for b in stream_audio(path, 16000)) == 0


def test_stream_errors_are_those_of_the_whole_file_read(tmp_path):
    for case in ("missing", "text", "truncated", "nan"):
        path = _make_bad(tmp_path, case)
        with pytest.raises(AudioError) as streamed:
            list(stream_audio(path, 8000, block_frames=16))
        with pytest.raises(AudioError) as whole:
            load_audio(path, 8000)
        assert str(streamed.value).split(":")[:2] == str(whole.value).split(":")[:2]
    with pytest.raises(ValueError, match="block_frames"):
        stream_audio(path, 8000, block_frames=0)


# --- names that are not UTF-8 and files that are not regular -----------------------------------


def test_a_name_that_is_not_utf8_decodes_and_is_shown_escaped(tmp_path):
    source = tmp_path / "a.wav"
    data = _stereo()[:, 0].astype(np.float32)
    sf.write(source, data, RATE, subtype="FLOAT")
    name = os.fsdecode(os.fsencode(tmp_path) + b"/x_\xff.wav")
    shutil.copy(source, name)
    np.testing.assert_array_equal(load_audio(name), data)
    np.testing.assert_array_equal(np.concatenate(list(stream_audio(name))), data)
    assert audio_info(name).frames == len(data)

    Path(name).write_bytes(b"not audio")
    with pytest.raises(AudioError) as excinfo:
        load_audio(name)
    message = str(excinfo.value)
    assert "x_\\xff.wav: not an audio file" in message
    message.encode("utf-8")  # printable: no lone surrogate left in it


def _fifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "case,reason",
    [("fifo", "named pipe"), ("broken_link", "broken symbolic link"), ("loop", "link loop")],
)
def test_files_that_are_not_regular_are_refused_without_opening(tmp_path, case, reason):
    path = tmp_path / f"{case}.wav"
    if case == "fifo":
        _fifo(path)  # opening it would block forever: no writer ever comes
    elif case == "broken_link":
        path.symlink_to(tmp_path / "gone.wav")
    else:
        path.symlink_to(tmp_path / "other.wav")
        (tmp_path / "other.wav").symlink_to(path)
    for read in (load_audio, audio_info, lambda p: list(stream_audio(p))):
        with pytest.raises(AudioError, match=reason) as excinfo:
            read(path)
        assert str(excinfo.value).startswith(str(path))
