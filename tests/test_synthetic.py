"""The built-in dataset: deterministic, well-formed, and learnable by a trivial classifier."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavemel.data.synthetic import SYNTHETIC_CLASSES, generate, synthesize_clip
from wavemel.errors import DataError

SR = 16000


def _digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    # 16 clips per class, short clips: enough for the learnability check, about a second to make.
    return generate(
        tmp_path_factory.mktemp("syn") / "data", clips_per_class=16, max_seconds=1.5, seed=0
    )


def test_layout_and_classes(small_set):
    assert len(SYNTHETIC_CLASSES) >= 8
    folders = sorted(p.name for p in small_set.iterdir() if p.is_dir())
    assert folders == sorted(SYNTHETIC_CLASSES)
    for label in SYNTHETIC_CLASSES:
        files = sorted((small_set / label).glob("*.wav"))
        assert [f.name for f in files] == [f"{label}_{n:04d}.wav" for n in range(16)]
    assert "chirp" in (small_set / "README.txt").read_text()


def test_files_are_well_formed(small_set):
    durations = []
    for path in sorted(small_set.rglob("*.wav")):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        samples = sf.read(str(path), dtype="float64")[0]
        assert np.isfinite(samples).all()
        peak = np.max(np.abs(samples))
        # Peak gain is drawn in -30..-1 dBFS: never clipped, never silent.
        assert 10 ** (-30.5 / 20) < peak < 10 ** (-0.9 / 20), path
        durations.append(info.frames / SR)
    assert 0.4 <= min(durations) and max(durations) <= 1.5
    # Durations really vary (not one fixed length).
    assert np.std(durations) > 0.15


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path, small_set):
    again = generate(tmp_path / "again", clips_per_class=16, max_seconds=1.5, seed=0)
    assert _digest(again) == _digest(small_set)
    other = generate(tmp_path / "other", clips_per_class=2, max_seconds=1.5, seed=1)
    first = small_set / "chirp" / "chirp_0000.wav"
    assert (other / "chirp" / "chirp_0000.wav").read_bytes() != first.read_bytes()
    # Clips do not depend on how many clips per class are made.
    fewer = generate(tmp_path / "fewer", clips_per_class=2, max_seconds=1.5, seed=0)
    assert (fewer / "chirp" / "chirp_0000.wav").read_bytes() == first.read_bytes()


def test_in_memory_clip_matches_file(small_set):
    samples = synthesize_clip("ringing", 3, max_seconds=1.5)
    on_disk = sf.read(str(small_set / "ringing" / "ringing_0003.wav"), dtype="float32")[0]
    np.testing.assert_allclose(samples, on_disk, atol=1 / 32767)


def test_reuse_and_refusal(tmp_path, small_set):
    stamp = (small_set / "sine_tone" / "sine_tone_0000.wav").stat().st_mtime_ns
    assert generate(small_set, clips_per_class=16, max_seconds=1.5, seed=0) == small_set
    assert (small_set / "sine_tone" / "sine_tone_0000.wav").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="not a synthetic dataset made with these settings"):
        generate(small_set, clips_per_class=16, max_seconds=1.5, seed=5)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(DataError, match="mine"):
        generate(foreign, clips_per_class=1)
    assert (foreign / "notes.txt").read_text() == "user data"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # An empty folder is fine, and no staging folder is left next to it.
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, clips_per_class=1, max_seconds=0.5)
    settings = json.loads((empty / ".wavemel-synthetic.json").read_text())
    assert settings["clips_per_class"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_settings():
    with pytest.raises(ValueError):
        synthesize_clip("unknown_class", 0)
    with pytest.raises(ValueError):
        generate(Path("unused"), clips_per_class=0)
    with pytest.raises(ValueError):
        generate(Path("unused"), min_seconds=2.0, max_seconds=1.0)


def _features(x: np.ndarray) -> np.ndarray:
    """A handful of spectral and envelope statistics over the loud frames of a clip."""
    n_fft, hop = 512, 128
    x = np.pad(x, (0, max(0, n_fft - len(x))))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    energy = power.sum(axis=1)
    power, energy = power[energy > energy.max() / 100], energy[energy > energy.max() / 100]
    freqs = np.fft.rfftfreq(n_fft, 1 / SR)
    flatness = np.mean(np.log(power), axis=1) - np.log(np.mean(power, axis=1))
    centroid = np.log((power * freqs).sum(axis=1) / power.sum(axis=1))
    peak = np.log(freqs[1 + np.argmax(power[:, 1:], axis=1)])
    log_energy = np.log(energy)
    return np.array(
        [
            flatness.mean(),
            centroid.mean(),
            centroid.std(),
            peak.std(),
            np.abs(np.diff(peak)).mean() if len(peak) > 1 else 0.0,
            log_energy.std(),
            np.abs(np.diff(log_energy)).mean() if len(log_energy) > 1 else 0.0,
        ]
    )


def test_classes_are_separable_by_simple_statistics(small_set):
    features, labels = [], []
    for k, label in enumerate(SYNTHETIC_CLASSES):
        for path in sorted((small_set / label).glob("*.wav")):
            features.append(_features(sf.read(str(path), dtype="float64")[0]))
            labels.append(k)
    x, y = np.array(features), np.array(labels)
    train = np.arange(len(y)) % 2 == 0
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
    z = (x - mean) / std
    centroids = np.stack([z[train & (y == k)].mean(axis=0) for k in range(len(SYNTHETIC_CLASSES))])
    distances = ((z[~train, None, :] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = float(np.mean(distances.argmin(axis=1) == y[~train]))
    chance = 1 / len(SYNTHETIC_CLASSES)
    # Nearest centroid on 7 statistics is a weak classifier (about 0.58 here); 3.5x chance shows
    # that the classes differ in what the statistics see, so a CNN has real structure to learn.
    assert accuracy > 3.5 * chance, accuracy
