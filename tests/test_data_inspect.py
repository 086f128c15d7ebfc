"""The dataset report and ``wavemel data inspect`` (text and --json)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavemel.cli import main
from wavemel.data import load_dataset
from wavemel.data.inspect import format_report, inspect_dataset


@pytest.fixture
def small_folder(tmp_path):
    """Folder layout with known durations: cat 0.5 s + 1.0 s + empty, dog 2.0 s, plus a bad file."""
    root = tmp_path / "set"
    for label, name, seconds, rate in [
        ("cat", "a.wav", 0.5, 16000),
        ("cat", "b.flac", 1.0, 8000),
        ("cat", "e.wav", 0.0, 16000),
        ("dog", "c.wav", 2.0, 16000),
    ]:
        (root / label).mkdir(parents=True, exist_ok=True)
        sf.write(root / label / name, np.zeros(int(seconds * rate)), rate)
    (root / "dog" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 100)
    return root


def test_inspect_counts_durations_and_problems(small_folder):
    report = inspect_dataset(load_dataset(small_folder))
    assert report["format"] == "folder" and report["root"] == str(small_folder)
    assert report["clips"] == {"train": 5, "total": 5}
    assert report["classes"] == 2 and report["labels"] == ["cat", "dog"]
    assert report["per_class"] == {"cat": {"train": 3}, "dog": {"train": 2}}
    d = report["durations"]["train"]
    assert d["n"] == 4  # the unreadable file has no duration
    assert (d["min"], d["median"], d["max"]) == pytest.approx((0.0, 0.75, 2.0))
    assert (d["mean"], d["total"]) == pytest.approx((3.5 / 4, 3.5))
    assert report["sample_rates"]["train"] == {8000: 1, 16000: 3}
    kinds = {p["path"].rsplit("/", 1)[-1]: p["kind"] for p in report["problems"]}
    assert kinds == {"e.wav": "empty", "broken.wav": "unreadable"}
    assert report["problem_counts"] == {"empty": 1, "unreadable": 1}
    assert report["verified_ratio"] is None and report["groups"] is None
    json.dumps(report)  # JSON-able as is

    quick = inspect_dataset(load_dataset(small_folder), durations=False)
    assert quick["durations"] is None and quick["clips"] == report["clips"]
    text = format_report(report)
    assert "format    folder" in text and "problems  2 (empty 1, unreadable 1)" in text


def test_cli_inspect_fsdk18_mini_json(fsdk18_mini_root, capsys):
    assert main(["data", "inspect", str(fsdk18_mini_root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "fsdkaggle2018"
    assert report["clips"] == {"train": 1173, "test": 442, "total": 1615}
    assert report["labelled"] == {"train": 1173, "test": 420}
    assert report["classes"] == 21 and len(report["per_class"]) == 21
    assert report["verified"]["train"]["verified"] == 467
    assert report["verified_ratio"] == pytest.approx(467 / 1173)
    assert report["usage"]["test"] == {"Private": 341, "Public": 79}
    assert sum(c["test"] for c in report["per_class"].values()) == 420
    assert sum(c["train"] for c in report["per_class"].values()) == 1173
    assert [p["kind"] for p in report["problems"]] == ["empty", "empty"]
    # The README's figures: durations 0.30-7.56 s; the empty WAVs give the test minimum of 0.
    assert report["durations"]["train"]["min"] == pytest.approx(0.30, abs=0.005)
    assert report["durations"]["test"]["max"] == pytest.approx(7.56, abs=0.005)
    assert report["durations"]["test"]["min"] == 0.0
    assert report["sample_rates"]["train"] == {"22050": 1173}


def test_cli_inspect_metadata_only(fsdk18_meta_root, capsys):
    assert main(["data", "inspect", str(fsdk18_meta_root), "--metadata-only", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips"] == {"train": 9473, "test": 1600, "total": 11073}
    assert report["classes"] == 41 and report["verified"]["train"]["verified"] == 3710
    assert report["usage"]["test"] == {"Private": 1299, "Public": 301}
    assert report["durations"] is None and report["problems"] == []


def test_cli_inspect_fsdd_text(fsdd_root, capsys):
    argv = ["data", "inspect", str(fsdd_root), "--format", "pattern"]
    argv += ["--label-pattern", "{label}_{speaker}_{take}.wav", "--group-field", "speaker"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "format    pattern" in out and "clips     3000 (train 3000)" in out
    assert "classes   10" in out and "groups    6:" in out
    assert "sample rates train: 8000 Hz x3000" in out and "problems  none" in out


def test_cli_inspect_user_errors_exit_2(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavemel: error: ") and "absent: no such file" in err
    assert err.count("\n") == 1
    assert main(["data", "inspect", str(tmp_path), "--format", "pattern"]) == 2
    assert "needs a label pattern" in capsys.readouterr().err


def test_cli_inspect_names_bad_entries_escaped(tmp_path, capsys):
    root = tmp_path / "set"
    (root / "cat").mkdir(parents=True)
    sf.write(root / "cat" / "a.wav", np.zeros(800), 8000)
    raw = os.fsencode(root / "cat")
    Path(os.fsdecode(raw + b"/x_\xff.wav")).write_bytes(b"not audio at all" * 100)
    shutil.copy(root / "cat" / "a.wav", os.fsdecode(raw + b"/y_\xfe.wav"))
    os.mkfifo(root / "cat" / "pipe.wav")
    (root / "cat" / "loop.wav").symlink_to(root / "cat" / "loop.wav")

    assert main(["data", "inspect", str(root)]) == 0
    out = capsys.readouterr().out  # capsys writes strict UTF-8, as a terminal would
    assert "clips     3 (train 3)" in out  # x_\\xff.wav is listed; its header is what fails
    assert f"[unreadable] {root}/cat/x_\\xff.wav: not an audio file" in out
    assert f"[not_a_file] {root}/cat/pipe.wav: is a named pipe" in out
    assert f"[not_a_file] {root}/cat/loop.wav: symbolic link loop" in out

    assert main(["data", "inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {p["path"].rsplit("/", 1)[-1] for p in report["problems"]} == {
        "x_\\xff.wav",
        "pipe.wav",
        "loop.wav",
    }
    assert report["durations"]["train"]["n"] == 2  # y_\xfe.wav decoded fine
