"""``wavemel quickstart``: data preparation, the three networks and the MAP@3 table."""

from __future__ import annotations

import json

import pytest

from wavemel.data.synthetic import SYNTHETIC_CLASSES
from wavemel.errors import DataError, WavemelError


def _quickstart(*argv: str) -> int:
    # Only this sub-command's parser, so the test does not depend on the other CLI modules.
    import argparse

    from wavemel.cli import quickstart

    parser = argparse.ArgumentParser(prog="wavemel")
    quickstart.register(parser.add_subparsers())
    args = parser.parse_args(["quickstart", *argv])
    return args.func(args)


def test_quickstart_prepares_and_inspects(tmp_path, capsys):
    out = tmp_path / "qs"
    assert _quickstart("--out", str(out), "--clips-per-class", "2", "--data-only") == 0
    printed = capsys.readouterr().out
    assert f"classes   {len(SYNTHETIC_CLASSES)}" in printed
    assert "problems  none" in printed
    assert len(list((out / "data").rglob("*.wav"))) == 2 * len(SYNTHETIC_CLASSES)
    # Other settings on the same folder: refused without --force, replaced with it.
    with pytest.raises(DataError, match="--force"):
        _quickstart("--out", str(out), "--clips-per-class", "3", "--data-only")
    assert _quickstart("--out", str(out), "--clips-per-class", "3", "--force", "--data-only") == 0
    assert len(list((out / "data").rglob("*.wav"))) == 3 * len(SYNTHETIC_CLASSES)
    # A folder that is not ours is never removed, even with --force.
    (tmp_path / "user" / "data").mkdir(parents=True)
    (tmp_path / "user" / "data" / "keep.txt").write_text("mine")
    with pytest.raises(DataError):
        _quickstart("--out", str(tmp_path / "user"), "--force", "--data-only")
    assert (tmp_path / "user" / "data" / "keep.txt").read_text() == "mine"


def test_quickstart_trains_combines_and_scores_the_three_networks(tmp_path, capsys):
    out = tmp_path / "qs"
    argv = ["--out", str(out), "--clips-per-class", "10", "--size", "tiny", "--epochs", "2"]
    argv += ["--comb-epochs", "1", "--device", "cpu"]
    assert _quickstart(*argv) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"cnn-audio", "cnn-spec", "cnn-comb"}
    for model, result in summary["results"].items():
        # The printed table holds the scores of the evaluation files, not placeholders.
        run = out / "runs" / model
        evaluation = json.loads((run / "evaluation_heldout.json").read_text())
        assert result["map3"] == pytest.approx(evaluation["map3"])
        assert result["n_clips"] == 16  # fold 0 of 5 of 8 classes x 10 clips
        # Leak-free: the scored clips never chose an epoch (validation is another fold).
        config = json.loads((run / "config.json").read_text())
        assert (config["test_fold"], config["fold"]) == (0, 1)
        assert f"{model:<10} {result['map3']:>7.3f}" in captured.out
    # A second call reuses the finished runs instead of training again.
    assert _quickstart(*argv) == 0
    assert captured.err.count("reusing") == 0
    assert capsys.readouterr().err.count("reusing the finished run") == 3
    # Other settings never silently replace a finished run.
    with pytest.raises(WavemelError, match="other settings .*epochs"):
        _quickstart(*argv[:-5], "3", "--comb-epochs", "1", "--device", "cpu")
