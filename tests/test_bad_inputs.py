"""A corpus of bad inputs through ``predict``, ``data inspect`` and ``train``, in process.

Every bad entry must be named on one line, every good clip still processed, and nothing may
raise a traceback or hang. The corpus is generated here, in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavemel.cli import main

RATE = 8000


def _wav_header(channels: int, rate: int, frames: int = 100) -> bytes:
    """A PCM-16 WAV whose header carries the given channel count and rate (0 is invalid)."""
    block = 2 * max(channels, 1)
    data = b"\x00" * (block * frames)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _good(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tone = np.sin(2 * np.pi * (300 + 200 * seed) * np.arange(RATE // 2) / RATE)
    sf.write(os.fsencode(path), 0.3 * tone, RATE, format="WAV", subtype="PCM_16")


def _bytes_name(folder: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, dict[str, str], list[str]]:
    """``(root, {shown bad name: what must be said}, good names)`` of a folder-per-class set."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    root = tmp_path / "set"
    good = []
    for label, offset in (("cat", 0), ("dog", 4)):
        for i in range(4):
            _good(root / label / f"{label}{i}.wav", seed=offset + i)
            good.append(f"{label}{i}.wav")
    cat = root / "cat"
    shutil.copy(cat / "cat0.wav", _bytes_name(cat, b"x_\xff.wav"))  # fine audio, odd name
    good.append("x_\\xff.wav")
    bad = {}
    sf.write(cat / "empty.wav", np.zeros(0), RATE, subtype="PCM_16")
    bad["empty.wav"] = "0 samples"  # the inspector's wording; decoders say "empty"
    sf.write(cat / "truncated.wav", np.zeros(RATE), RATE, subtype="PCM_16")
    (cat / "truncated.wav").write_bytes((cat / "truncated.wav").read_bytes()[:30])
    bad["truncated.wav"] = ""
    (cat / "text.wav").write_text("fname,label\nnot audio, just text\n")
    bad["text.wav"] = "not an audio file"
    _bytes_name(cat, b"y_\xfe.wav").write_text("not audio either\n")
    bad["y_\\xfe.wav"] = "not an audio file"
    os.mkfifo(cat / "pipe.wav")
    bad["pipe.wav"] = "named pipe"
    (cat / "broken.wav").symlink_to(cat / "gone.wav")
    bad["broken.wav"] = "broken symbolic link"
    (cat / "loop.wav").symlink_to(cat / "loop.wav")
    bad["loop.wav"] = "symbolic link loop"
    (cat / "x.wav").mkdir()  # a folder with an audio name: searched, never opened
    nan = np.full(RATE // 2, 0.1, dtype=np.float32)
    nan[7] = np.nan
    sf.write(root / "dog" / "nan.wav", nan, RATE, subtype="FLOAT")
    bad["nan.wav"] = "NaN"
    (root / "dog" / "zero_channels.wav").write_bytes(_wav_header(channels=0, rate=RATE))
    bad["zero_channels.wav"] = ""
    (root / "dog" / "zero_rate.wav").write_bytes(_wav_header(channels=1, rate=0))
    bad["zero_rate.wav"] = ""
    return root, bad, good


def _named(text: str, name: str, reason: str) -> bool:
    """Whether one line of ``text`` names the file ``name`` (as a path's last part) and says
    ``reason``."""
    return any(f"/{name}" in line and reason in line for line in text.splitlines())


def test_data_inspect_names_every_bad_entry(corpus, capsys):
    root, bad, good = corpus
    assert main(["data", "inspect", str(root), "--max-problems", "100"]) == 0
    out = capsys.readouterr().out  # captured as strict UTF-8, as a terminal would take it
    for name, reason in bad.items():
        if name == "nan.wav":
            continue  # durations come from headers; NaN samples are found when decoding
        assert _named(out, name, reason), name
    assert main(["data", "inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    shown = {p["path"].rsplit("/", 1)[-1] for p in report["problems"]}
    assert shown == set(bad) - {"nan.wav"}
    # Headers read: the good clips, nan.wav and empty.wav (valid headers), no other.
    assert report["durations"]["train"]["n"] == len(good) + 2


def _train(root: Path, tmp_path: Path) -> list[str]:
    return [
        "train", "--model", "cnn-spec", "--size", "tiny", "--epochs", "1", "--data", str(root),
        "--out", str(tmp_path / "run"), "--sample-rate", str(RATE), "--input-seconds", "0.25",
        "--batch-size", "4", "--folds", "2", "--workers", "0", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip


def test_train_then_predict_name_every_bad_file_and_use_the_good_ones(corpus, tmp_path, capsys):
    root, bad, good = corpus
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(_train(root, tmp_path)) == 0
    # The CLI prints each warning as one "wavemel: warning:" line on stderr.
    said = capsys.readouterr().err
    assert "Traceback" not in said and "UserWarning" not in said
    assert json.loads((tmp_path / "run" / "best.json").read_text())["labels"] == ["cat", "dog"]
    # Files that reach the decoder are named by train; FIFOs and bad links never reach it (the
    # dataset index reports them, see test_data_inspect_names_every_bad_entry).
    for name in ("truncated.wav", "text.wav", "nan.wav", "zero_channels.wav", "zero_rate.wav"):
        assert name in said, name
    assert "x_" not in said  # the good clip whose name is not UTF-8 was trained on

    status = main(["predict", str(tmp_path / "run"), str(root), "--json"])
    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.err
    payload = json.loads(captured.out)
    tagged = sorted(r["path"].rsplit("/", 1)[-1] for r in payload["results"])
    assert tagged == sorted([*good, "empty.wav"])  # an empty clip gets the prior, with a warning
    errors = {path.rsplit("/", 1)[-1]: reason for path, reason in payload["errors"].items()}
    assert set(errors) == set(bad) - {"empty.wav"}
    for name, reason in bad.items():
        if name != "empty.wav":
            assert reason in errors[name] and "\n" not in errors[name], name
    for name in errors:
        assert _named(captured.err, name, ""), name  # and each on its own line at the end
