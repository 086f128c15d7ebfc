"""The run folder's lifecycle: what --force may clear, when, locking, and disk-full errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wavemel.cli import main
from wavemel.errors import CheckpointError, WavemelError
from wavemel.train.run_folder import MARKER, RunFolder, check_not_inside, inspect_run_folder

SR = 8000


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from wavemel.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    return generate(root, clips_per_class=4, sample_rate=SR, min_seconds=0.3, max_seconds=0.8)


def _train_args(data: Path | str, out: Path, cache: Path) -> list[str]:
    return [
        "train", "--model", "cnn-spec", "--size", "tiny", "--data", str(data), "--out", str(out),
        "--sample-rate", str(SR), "--input-seconds", "0.5", "--epochs", "1", "--batch-size", "8",
        "--folds", "2", "--workers", "0", "--device", "cpu", "--cache-dir", str(cache),
    ]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` with its bytes (``None`` for folders)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("wavemel: error:"), err
    assert "Traceback" not in err
    return lines[-1]


def test_force_never_clears_a_folder_wavemel_did_not_make(tmp_path, capsys):
    # Defect 1: a project folder holding a config.json was wiped by --force before --data was
    # even checked.
    project = tmp_path / "P"
    (project / "src").mkdir(parents=True)
    (project / ".git").mkdir()
    (project / "config.json").write_text("{}")
    (project / "notes.txt").write_text("x")
    (project / "src" / "main.py").write_text("print(1)\n")
    before = _snapshot(project)
    args = _train_args("/nonexistent", project, tmp_path / "cache") + ["--force"]
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not a wavemel run folder" in line and str(project) in line
    assert _snapshot(project) == before


def test_force_clears_nothing_until_data_and_model_are_valid(synth, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(synth, run, tmp_path / "cache")) == 0
    (run / "notes.txt").write_text("mine")  # a user's file inside a real run folder
    before = _snapshot(run)
    assert inspect_run_folder(run).kind == "finished"

    # Bad data: the run folder must survive the failed --force untouched.
    assert main(_train_args(tmp_path / "missing-data", run, tmp_path / "cache") + ["--force"]) == 2
    _one_error_line(capsys.readouterr().err)
    assert _snapshot(run) == before
    # Input too short for the model: detected after the data loaded, still before clearing.
    short = _train_args(synth, run, tmp_path / "cache") + ["--force", "--input-seconds", "0.01"]
    assert main(short) == 2
    assert "needs at least" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(run) == before

    # A good --force replaces wavemel's own files only; the user's file stays.
    assert main(_train_args(synth, run, tmp_path / "cache") + ["--force"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / MARKER).is_file() and (run / "finished.json").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_combine_out_may_not_overlap_a_branch_run(tmp_path, capsys):
    # Defect 15: --out equal to --audio (with --force) destroyed the branch run.
    audio, spec = tmp_path / "audio", tmp_path / "spec"
    for run in (audio, spec):
        run.mkdir()
        (run / "best.json").write_text("{}")
    before = _snapshot(audio)
    for out in (audio, spec, audio / "inner", tmp_path):
        args = ["combine", "--audio", str(audio), "--spec", str(spec), "--out", str(out)]
        assert main(args + ["--force"]) == 2
        assert "overlaps" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(audio) == before
    with pytest.raises(WavemelError, match="--spec"):
        check_not_inside(spec / "best.json", {"--spec": spec})


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from wavemel.train.run_folder import RunFolder
    run = RunFolder.claim(sys.argv[1], force=False, resume=True)
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_a_run_in_use_cannot_be_resumed_or_forced(synth, tmp_path, capsys):
    # Defect 10: --resume on a run that was still training trained alongside it.
    run = tmp_path / "run"
    assert main(_train_args(synth, run, tmp_path / "cache")) == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        lines_before = (run / "metrics.jsonl").read_text()
        for extra in (["--resume"], ["--force"]):
            args = ["train", "--out", str(run)] + extra
            if extra == ["--force"]:
                args = _train_args(synth, run, tmp_path / "cache") + extra
            assert main(args) == 2
            line = _one_error_line(capsys.readouterr().err)
            assert "another wavemel process" in line and f"pid {holder.pid}" in line
        assert (run / "metrics.jsonl").read_text() == lines_before
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # The lock dies with its process: the run can be resumed again (a finished run: a no-op).
    deadline = time.monotonic() + 10
    while True:
        try:
            RunFolder.claim(run, force=False, resume=True).release()
            break
        except WavemelError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_resume_states_are_told_apart(tmp_path):
    assert inspect_run_folder(tmp_path / "none").kind == "absent"
    with pytest.raises(CheckpointError, match="nothing to resume"):
        RunFolder.check(tmp_path / "none", force=False, resume=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("{}")
    (run / "config.json").write_text(json.dumps({"out": "x", "epochs": 1, "batch_size": 2}))
    assert inspect_run_folder(run).kind == "incomplete"
    (run / "state").mkdir()
    (run / "state" / "state.json").write_text("{}")
    assert inspect_run_folder(run).kind == "interrupted"
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(WavemelError, match="not a folder"):
        inspect_run_folder(file)


def test_disk_full_during_training_is_one_line_and_leaves_no_temp_files(
    synth, tmp_path, capsys, monkeypatch
):
    # Defect 14: a full disk while writing a checkpoint was a traceback.
    import wavemel._io as io

    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", full_disk)
    run = tmp_path / "run"
    assert main(_train_args(synth, run, tmp_path / "cache")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left" in line and "run/last." in line
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
