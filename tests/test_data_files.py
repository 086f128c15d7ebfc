"""The one audio-file finder: given files and folders, bad entries named, nothing opened."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavemel.data.files import file_problem, find_audio_files, walk_audio_files


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # As bytes: soundfile cannot encode a name that is not UTF-8 given as str.
    sf.write(os.fsencode(path), np.full(160, 0.1), 16000, subtype="PCM_16", format="WAV")
    return path


def _fifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)
    return path


def _kinds(problems) -> dict[str, tuple[str, str]]:
    return {p.path.name: (p.kind, p.message) for p in problems}


def test_bad_entries_in_a_folder_are_named_and_the_rest_found(tmp_path):
    root = tmp_path / "clips"
    good = [_wav(root / "a.wav"), _wav(root / "sub" / "b.FLAC"), _wav(root / "z.wav")]
    _fifo(root / "pipe.wav")
    (root / "broken.wav").symlink_to(root / "gone.wav")
    (root / "loop.wav").symlink_to(root / "loop2.wav")
    (root / "loop2.wav").symlink_to(root / "loop.wav")
    (root / "dirloop").symlink_to(root / "dirloop")
    (root / "up").symlink_to(root)  # a link back up: followed once, never forever
    (root / "notes.txt").write_text("not audio")
    _fifo(root / "pipe.txt")  # not audio-named: not ours to report
    _wav(root / ".hidden.wav")

    files, problems = walk_audio_files(root)
    assert files == good
    kinds = _kinds(problems)
    assert kinds == {
        "broken.wav": ("not_a_file", "broken symbolic link"),
        "dirloop": ("not_a_file", "symbolic link loop"),
        "loop.wav": ("not_a_file", "symbolic link loop"),
        "loop2.wav": ("not_a_file", "symbolic link loop"),
        "pipe.wav": ("not_a_file", "is a named pipe (FIFO), expected a regular file"),
    }
    assert walk_audio_files(root, recursive=False)[0] == [good[0], good[2]]


def test_given_paths_keep_their_order_and_each_file_counts_once(tmp_path):
    a, b = _wav(tmp_path / "a.wav"), _wav(tmp_path / "d" / "b.wav")
    (tmp_path / "link.wav").symlink_to(a)
    fifo = _fifo(tmp_path / "given.pipe")
    given = [b, tmp_path / "d", a, tmp_path / "link.wav", str(a), fifo, tmp_path / "nope.wav"]
    files, problems = find_audio_files(given)
    assert files == [b, a]
    missing = tmp_path / "nope.wav"
    assert [(p.path, p.kind) for p in problems] == [(fifo, "not_a_file"), (missing, "missing")]
    assert "named pipe" in problems[0].message and "\n" not in str(problems[0])


def test_a_name_that_is_not_utf8_is_found_and_shown_escaped(tmp_path):
    _wav(tmp_path / "a.wav")
    bad = Path(os.fsdecode(os.fsencode(tmp_path) + b"/x_\xff.wav"))
    _wav(bad)
    os.mkfifo(os.fsdecode(os.fsencode(tmp_path) + b"/p_\xfe.wav"))
    files, problems = find_audio_files([tmp_path])
    assert files == [tmp_path / "a.wav", bad]
    fifo_line = f"{tmp_path}/p_\\xfe.wav: is a named pipe (FIFO), expected a regular file"
    assert str(problems[0]) == fifo_line


def test_file_problem(tmp_path):
    assert file_problem(_wav(tmp_path / "a.wav")) is None
    assert file_problem(tmp_path).kind == "not_a_file"
    assert file_problem(tmp_path / "absent.wav").kind == "missing"
