"""``OUT/state.json``: resuming a study, refusing other settings, and --force."""

from __future__ import annotations

import json
import os

import pytest

from wavemel.errors import DataError
from wavemel.study.state import open_study


def test_study_folder_is_protected(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds no study"):
        open_study(out, {"preset": "tiny"}, force=False)
    assert (out / "notes.txt").read_text() == "mine"

    other = tmp_path / "other"
    state = open_study(other, {"preset": "tiny"}, force=False)
    state.runs["runs/x"] = {"trained": True}
    state.save()
    (other / "runs").mkdir()
    # Same settings: the state is picked up again.
    assert open_study(other, {"preset": "tiny"}, force=False).runs == {"runs/x": {"trained": True}}
    with pytest.raises(DataError, match=r"other settings \(preset\)"):
        open_study(other, {"preset": "cpu"}, force=False)
    # --force discards the old study (and only the study's own files).
    (other / "keep.txt").write_text("x")
    assert open_study(other, {"preset": "cpu"}, force=True).runs == {}
    assert not (other / "runs").exists() and (other / "keep.txt").exists()


def test_force_starts_over_from_a_corrupt_state_file(tmp_path):
    # On main the corrupt file was parsed before --force was looked at, so the error that said
    # "pass --force to start over" came back with --force too.
    out = tmp_path / "study"
    out.mkdir()
    (out / "state.json").write_text('{"settings": {"preset": "tiny"}, "runs": ')
    with pytest.raises(DataError, match="state.json.*--force") as excinfo:
        open_study(out, {"preset": "tiny"}, force=False)
    assert len(str(excinfo.value).splitlines()) == 1
    state = open_study(out, {"preset": "tiny"}, force=True)
    assert state.runs == {}
    assert json.loads((out / "state.json").read_text())["settings"] == {"preset": "tiny"}


def test_state_that_is_not_a_study_state_is_refused_in_one_line(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"settings": {}, "runs": ["not", "a", "dict"]}))
    with pytest.raises(DataError, match=r"malformed study state \(runs\)"):
        open_study(out, {}, force=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_state_file_that_is_a_named_pipe_is_refused_not_read(tmp_path):
    # Reading a FIFO blocks until a writer appears: the study must refuse it without opening it.
    out = tmp_path / "study"
    out.mkdir()
    os.mkfifo(out / "state.json")
    with pytest.raises(DataError, match="named pipe"):
        open_study(out, {}, force=False)
    open_study(out, {}, force=True)
    assert (out / "state.json").is_file()
