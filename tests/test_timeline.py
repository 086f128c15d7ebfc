"""Timelines: segment merging on hand-made scores, the --timeline CSV and plot, bounded memory."""

from __future__ import annotations

import csv
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.checkpoint import save_checkpoint
from wavemel.cli import main
from wavemel.errors import WavemelError
from wavemel.infer import Tagger, WindowSeries
from wavemel.models import create_model
from wavemel.timeline import Segment, Timeline, TimelineCsv, merge_segments, timeline

RATE = 8000
LABELS = ["a", "b", "c"]


def _series(values: list[list[float]], hop: float = 1.0, width: float = 1.0) -> WindowSeries:
    starts = np.arange(len(values)) * hop
    return WindowSeries(starts, starts + width, np.asarray(values, dtype=np.float64), 0.0)


def test_runs_merge_into_segments_with_exact_onsets_offsets_and_mean_scores():
    series = _series(
        [
            [0.9, 0.1, 0.0],
            [0.7, 0.2, 0.1],
            [0.2, 0.8, 0.0],
            [0.5, 0.5, 0.0],  # both exactly at the threshold: each label's run goes on
            [0.1, 0.3, 0.6],
        ]
    )
    assert merge_segments(series, LABELS, 0.5) == [
        Segment(0.0, 2.0, "a", pytest.approx(0.8)),
        Segment(2.0, 4.0, "b", pytest.approx(0.65)),
        Segment(3.0, 4.0, "a", pytest.approx(0.5)),
        Segment(4.0, 5.0, "c", pytest.approx(0.6)),
    ]


def test_overlapping_windows_merge_and_a_gap_splits():
    # Hop 0.5 s, window 1 s: a run of three windows spans 0.5 .. 2.5 s.
    series = _series([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], 0.5)
    segments = merge_segments(series, ["x", "y"], 0.55)
    assert [(s.onset, s.offset, s.label) for s in segments] == [
        (0.0, 1.0, "y"),
        (0.5, 2.5, "x"),
        (2.0, 3.0, "y"),
        (2.5, 3.5, "x"),
    ]
    assert merge_segments(_series([[0.4, 0.6]]), ["x", "y"], 0.61) == []
    with pytest.raises(WavemelError, match="threshold"):
        merge_segments(series, ["x", "y"], 0.0)


def _checkpoint(folder, sample_rate=RATE):
    torch.manual_seed(0)
    model = create_model("cnn-audio", len(LABELS), size="tiny", sample_rate=sample_rate).eval()
    meta = {"labels": LABELS, "sample_rate": sample_rate, "input_seconds": 1.0}
    save_checkpoint(folder / "best", model, meta)
    return folder


def test_top_labels_rank_by_peak_so_a_short_event_is_shown():
    # "b" dominates one window of five; "c" is a steady runner-up with the higher mean.
    values = [[0.7, 0.0, 0.3], [0.7, 0.0, 0.3], [0.1, 0.9, 0.0], [0.7, 0.0, 0.3], [0.7, 0.0, 0.3]]
    clip = Timeline(LABELS, _series(values), [], 0.5)
    assert clip.top_labels(2) == [1, 0]
    assert clip.top_labels(5) == [1, 0, 2]


def test_timeline_agrees_with_window_probabilities_and_the_clip_score(tmp_path):
    run = _checkpoint(tmp_path / "run")
    tagger = Tagger.from_checkpoint(run, device="cpu")
    clip = (0.1 * np.random.default_rng(0).standard_normal(int(3.5 * RATE))).astype(np.float32)
    result = timeline(tagger, clip, threshold=0.34)
    assert result.series.starts.tolist() == [0.0, 1.0, 2.0, 2.5]
    assert result.series.ends.tolist() == [1.0, 2.0, 3.0, 3.5]
    # The mean of the window rows is the clip's (mean-aggregated) probability.
    np.testing.assert_allclose(result.series.values.mean(0), tagger.predict_proba(clip), 1e-6)
    assert result.segments == merge_segments(result.series, LABELS, 0.34)
    payload = result.to_json(top_k=2)
    assert [t["label"] for t in payload["tracks"]] == [
        LABELS[i] for i in np.argsort(-result.series.values.max(0), kind="stable")[:2]
    ]


def _write_noise(path, seconds, rate=RATE, seed=0):
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as handle:
        for _ in range(int(seconds) // 60):
            handle.write((0.1 * rng.standard_normal(60 * rate)).astype(np.float32))


def test_cli_timeline_csv_all_classes_segments_and_plot(tmp_path, capsys):
    run = _checkpoint(tmp_path / "run")
    wav = tmp_path / "clip.wav"
    sf.write(wav, (0.1 * np.random.default_rng(1).standard_normal(3 * RATE)), RATE)
    out, png = tmp_path / "timeline.csv", tmp_path / "timeline.png"
    args = ["predict", str(run), str(wav), "--timeline", str(out), "--all", "--threshold", "0.34"]
    assert main([*args, "--plot", str(png)]) == 0, capsys.readouterr().err
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    windows = [r for r in rows if r["kind"] == "window"]
    assert len(windows) == 3 * len(LABELS)
    assert {(r["start"], r["end"]) for r in windows} == {
        ("0.000", "1.000"),
        ("1.000", "2.000"),
        ("2.000", "3.000"),
    }
    expected = timeline(Tagger.from_checkpoint(run, device="cpu"), wav, threshold=0.34)
    segments = [(r["start"], r["end"], r["label"]) for r in rows if r["kind"] == "segment"]
    assert segments == [(f"{s.onset:.3f}", f"{s.offset:.3f}", s.label) for s in expected.segments]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Neither file is overwritten without --force; nothing was tagged in between.
    before = out.read_text()
    assert main([*args]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == before
    assert main(["predict", str(run), str(wav), "--plot", str(png)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert out.read_text() == before
    assert main(["predict", str(run), str(wav), "--all"]) == 2
    assert "need --timeline" in capsys.readouterr().err


def test_failed_timeline_write_leaves_no_file_behind(tmp_path):
    out = tmp_path / "t.csv"
    with pytest.raises(RuntimeError), TimelineCsv(out) as sink:
        sink._handle.write("partial\n")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def _peak_bytes(tagger, path, out):
    tracemalloc.start()
    try:
        with TimelineCsv(out) as sink:
            sink.add("clip", timeline(tagger, path))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_file_length(tmp_path):
    rate = 2000
    run = _checkpoint(tmp_path / "run", sample_rate=rate)
    tagger = Tagger.from_checkpoint(run, device="cpu", batch_size=16)
    short, long = tmp_path / "10min.wav", tmp_path / "40min.wav"
    _write_noise(short, 600, rate)
    _write_noise(long, 2400, rate)
    short_peak = _peak_bytes(tagger, short, tmp_path / "short.csv")
    long_peak = _peak_bytes(tagger, long, tmp_path / "long.csv")
    # 40 min of float32 at 2 kHz is 19 MB; holding it (or a quarter of it) would show here.
    # What grows is the (W, C) window table: 2400 x 3 float64, about 60 kB.
    assert long_peak < short_peak + 1_000_000, (short_peak, long_peak)
    with open(tmp_path / "long.csv") as handle:
        assert sum(1 for _ in handle) == 1 + 2400 * 3


def test_plot_log_mel_is_averaged_down_to_a_bounded_number_of_columns(tmp_path):
    from wavemel.figures import _streamed_log_mel

    path = tmp_path / "10min.wav"
    _write_noise(path, 600)
    spectrogram, column_seconds = _streamed_log_mel(path, RATE, max_columns=300)
    # 60 000 frames of 10 ms averaged 200 at a time: the figure never holds the whole log-mel.
    assert spectrogram.shape == (80, 300)
    assert column_seconds * spectrogram.shape[1] == pytest.approx(600.0)
    assert np.isfinite(spectrogram).all()
    # Undecimated, there is exactly one column per 10 ms: block edges lose no frames (no drift).
    short = tmp_path / "2min.wav"
    _write_noise(short, 120)
    assert _streamed_log_mel(short, RATE, max_columns=12_000)[0].shape == (80, 12_000)
