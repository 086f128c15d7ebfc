"""Tests for the figures (wavemel.figures) and `wavemel augment-preview`."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.cli import main
from wavemel.figures import PANEL_NAMES, _augmentation_panels, render_augmentation_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (checks the signature and IHDR chunk)."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_MAGIC and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def _check_figure(path: Path, titles: list[str]) -> None:
    assert path.is_file() and path.stat().st_size > 20_000
    width, height = _png_size(path)
    assert 600 <= width <= 3000 and 500 <= height <= 3000
    assert len(titles) == 6
    for title, name in zip(titles, PANEL_NAMES):
        assert title.startswith(name)
    # Not a blank canvas: the spectrogram panels put plenty of distinct colours on it.
    import matplotlib.image

    pixels = matplotlib.image.imread(path)[..., :3].reshape(-1, 3)
    assert len(np.unique((pixels * 255).astype(np.uint8), axis=0)) > 200


def _write_tone(path: Path, seconds: float, sample_rate: int, freq: float) -> Path:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    signal = 0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-3 * t)  # a decaying note
    signal[: sample_rate // 20] = 0  # leading silence, so shifts are visible
    sf.write(path, signal.astype(np.float32), sample_rate)
    return path


def test_figure_on_fsdk18_mini_clip(fsdk18_mini_root, tmp_path):
    clips = sorted((fsdk18_mini_root / "FSDKaggle2018.audio_train").glob("*.wav"))
    if not clips:
        pytest.skip("no training clips in fsdk18-mini")
    out = tmp_path / "figures" / "augment.png"
    titles = render_augmentation_figure(clips[0], out, sample_rate=22050, input_seconds=2.0)
    _check_figure(out, titles)
    assert "time-reversed" in titles[-1]


def test_figure_on_synthetic_clip_with_second_clip(tmp_path):
    clip = _write_tone(tmp_path / "note.wav", 0.7, 16000, 440.0)
    other = _write_tone(tmp_path / "other.wav", 1.5, 16000, 2000.0)
    out = tmp_path / "fig.png"
    titles = render_augmentation_figure(
        clip, out, sample_rate=16000, input_seconds=1.0, seed=3, mix_with=other
    )
    _check_figure(out, titles)
    assert "other.wav" in titles[-1]
    # A 0.7 s clip is shorter than the 1 s input: padded and replicated whole.
    assert "(clip at" in titles[3] and "(clip tiled" in titles[4]


def test_time_shift_panel_moves_content_without_wrapping_it_round():
    n = 1000
    ramp = torch.arange(1, n + 1, dtype=torch.float32)[None]  # every sample tells its position
    panels = _augmentation_panels(ramp, ramp.flip(1), "reversed", 2 * n, 1000, seed=0)
    title, shifted = panels[1]
    assert title.startswith("Time shift")
    values = shifted[0]
    moved = int((values == 0).sum())
    assert n // 4 <= moved <= 3 * n // 4  # the drawn offset, filled with silence
    assert torch.all(values[:moved] == 0)
    # The rest is the clip's start, in order: no sample from its end comes before it.
    assert torch.equal(values[moved:], ramp[0, : n - moved])


def test_cli_writes_figure_and_reports_bad_audio(tmp_path, capsys):
    clip = _write_tone(tmp_path / "long.wav", 2.5, 8000, 300.0)
    out = tmp_path / "preview.png"
    argv = ["augment-preview", str(clip), "-o", str(out), "--sample-rate", "8000"]
    assert main([*argv, "--input-seconds", "1", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and _png_size(out)[0] > 0
    assert "Random crop (1.00 s" in printed  # a 2.5 s clip is cropped to the input

    bad = tmp_path / "not_audio.wav"
    bad.write_text("this is not a wav file\n")
    assert main(["augment-preview", str(bad), "-o", str(tmp_path / "bad.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("wavemel: error:") and "not_audio.wav" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "bad.png").exists()

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 8000)
    assert main(["augment-preview", str(empty), "-o", str(tmp_path / "empty.png")]) == 2
    assert "empty.wav" in capsys.readouterr().err


def test_invalid_settings_raise(tmp_path):
    clip = _write_tone(tmp_path / "note.wav", 0.5, 8000, 300.0)
    with pytest.raises(ValueError, match="input_seconds"):
        render_augmentation_figure(clip, tmp_path / "x.png", input_seconds=0)
    assert main(["augment-preview", str(clip), "-o", "x.png", "--sample-rate", "-1"]) == 2


def test_cli_refuses_an_unsupported_format_in_one_line(tmp_path, capsys):
    # On main this was matplotlib's ValueError traceback, after the clip had been decoded.
    clip = _write_tone(tmp_path / "note.wav", 0.5, 8000, 300.0)
    out = tmp_path / "x.txt"
    assert main(["augment-preview", str(clip), "-o", str(out), "--sample-rate", "8000"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("wavemel: error:")
    assert str(out) in error and ".png" in error and ".svg" in error
    assert not out.exists()


def test_cli_never_overwrites_a_figure_without_force(tmp_path, capsys):
    clip = _write_tone(tmp_path / "note.wav", 0.5, 8000, 300.0)
    out = tmp_path / "mine.png"
    out.write_bytes(b"the user's own figure")
    argv = ["augment-preview", str(clip), "-o", str(out), "--sample-rate", "8000"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(out) in error and "--force" in error
    assert out.read_bytes() == b"the user's own figure"
    assert main([*argv, "--force"]) == 0
    assert _png_size(out)[0] > 0


def test_figure_suffix_chooses_the_format(tmp_path):
    clip = _write_tone(tmp_path / "note.wav", 0.5, 8000, 300.0)
    out = tmp_path / "fig.svg"
    render_augmentation_figure(clip, out, sample_rate=8000, input_seconds=1.0)
    assert out.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    # Atomic write: no temporary file is left beside the figure.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.svg", "note.wav"]


def test_plot_confusion_and_per_class_bars_draw_something(tmp_path):
    import matplotlib.image

    from wavemel.figures import plot_confusion, plot_per_class_map3

    matrix = np.array([[5, 1, 0], [0, 3, 2], [1, 0, 4]])
    confusion = tmp_path / "deep" / "confusion.png"
    plot_confusion(matrix, ["a", "b", "c"], "three classes", confusion)
    per_class = {"a": {"x": 0.9, "y": 0.2}, "b": {"x": 0.1, "y": 0.8}}
    bars = tmp_path / "bars.png"
    plot_per_class_map3(per_class, ["x", "y"], "two series", bars)
    for path in (confusion, bars):
        pixels = matplotlib.image.imread(path)[..., :3].reshape(-1, 3)
        # Coloured cells or bars, not only black text on white.
        assert len(np.unique((pixels * 255).astype(np.uint8), axis=0)) > 20
