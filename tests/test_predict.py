"""``wavemel predict``: Kaggle submission format, folders, bad files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.checkpoint import save_checkpoint
from wavemel.cli import main
from wavemel.models import create_model

RATE = 8000


def _make_checkpoint(stem, labels, prior=None):
    torch.manual_seed(0)
    model = create_model("cnn-audio", len(labels), size="tiny", sample_rate=RATE).eval()
    meta = {"labels": labels, "sample_rate": RATE, "input_seconds": 1.0}
    if prior is not None:
        meta["label_prior"] = prior
    return save_checkpoint(stem, model, meta)


def test_submission_has_every_test_file_with_three_valid_labels(fsdk18_mini_root, tmp_path, capsys):
    with open(fsdk18_mini_root / "train.csv", newline="") as handle:
        labels = sorted({row["label"] for row in csv.DictReader(handle)})
    # A skewed prior decides the answer for the empty files.
    prior = [1.0] * len(labels)
    prior[5], prior[2], prior[7] = 9.0, 8.0, 7.0
    checkpoint = _make_checkpoint(tmp_path / "run" / "best", labels, prior)
    test_dir = fsdk18_mini_root / "FSDKaggle2018.audio_test"
    out = tmp_path / "submission.csv"

    status = main(["predict", str(checkpoint), str(test_dir), "--submission", str(out), "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["fname", "label"]
    body = rows[1:]
    wavs = sorted(p.name for p in test_dir.glob("*.wav"))
    assert sorted(fname for fname, _ in body) == wavs
    assert all(len(row) == 2 for row in body)
    empty = {p.name for p in test_dir.glob("*.wav") if sf.info(str(p)).frames == 0}
    assert len(empty) == 2
    predicted = {fname: answer.split(" ") for fname, answer in body}
    for fname, answer in predicted.items():
        assert len(answer) == 3 and len(set(answer)) == 3, fname
        assert set(answer) <= set(labels), fname
        if fname in empty:
            assert answer == [labels[5], labels[2], labels[7]]
    # The JSON output agrees with the submission and the empty files were warned about.
    results = json.loads(captured.out)["results"]
    assert len(results) == len(wavs)
    first = results[0]
    name = first["path"].rsplit("/", 1)[-1]
    assert [tag["label"] for tag in first["tags"]] == predicted[name]
    assert "empty clip" in captured.err

    # An existing submission is never overwritten without --force.
    one_file = ["predict", str(checkpoint), str(test_dir / wavs[0]), "--submission", str(out)]
    assert main(one_file) == 2
    assert "--force" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == len(wavs) + 1
    assert main([*one_file, "--force"]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_bad_file_in_folder_is_reported_and_the_rest_tagged(tmp_path, capsys):
    labels = ["a", "b", "c", "d"]
    run = tmp_path / "run"
    _make_checkpoint(run / "best", labels)
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("one.wav", "two.wav", "sub/three.flac"):
        sf.write(folder / name, (0.1 * rng.standard_normal(3000)).astype(np.float32), 16000)
    (folder / "x.wav").write_text("definitely not a wav file\n" * 10)
    (folder / "notes.txt").write_text("ignored: not an audio extension")

    status = main(["predict", str(run), str(folder), "--top-k", "2"])
    captured = capsys.readouterr()
    assert status == 1
    lines = captured.out.strip().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in lines) == [
        "one.wav",
        "three.flac",
        "two.wav",
    ]
    for line in lines:
        tags = line.split("\t")[1].split()
        assert len(tags) == 4 and tags[0] in labels and tags[2] in labels
        assert float(tags[1]) >= float(tags[3])
    assert "x.wav" in captured.err and "could not be tagged" in captured.err
    assert "Traceback" not in captured.err

    status = main(["predict", str(run), str(folder), str(tmp_path / "missing.wav"), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert status == 1
    assert len(payload["results"]) == 3
    assert sorted(p.rsplit("/", 1)[-1] for p in payload["errors"]) == ["missing.wav", "x.wav"]


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "no-run"), str(tmp_path)]) == 2
    assert "wavemel: error:" in capsys.readouterr().err
    _make_checkpoint(tmp_path / "run" / "best", ["a", "b"])
    (tmp_path / "empty-folder").mkdir()
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "empty-folder")]) == 2
    assert "no audio files" in capsys.readouterr().err


@pytest.mark.parametrize("aggregate", ["geometric"])
def test_options_reach_the_tagger(tmp_path, capsys, aggregate):
    _make_checkpoint(tmp_path / "run" / "best", ["a", "b", "c"])
    clip = tmp_path / "clip.wav"
    sf.write(clip, (0.1 * np.random.default_rng(1).standard_normal(20000)).astype(np.float32), RATE)
    args = ["predict", str(tmp_path / "run"), str(clip), "--json"]
    assert main(args) == 0
    mean = json.loads(capsys.readouterr().out)["results"][0]["tags"]
    assert main([*args, "--aggregate", aggregate, "--hop-seconds", "0.25"]) == 0
    other = json.loads(capsys.readouterr().out)["results"][0]["tags"]
    assert [t["score"] for t in mean] != [t["score"] for t in other]


def test_submission_keeps_undecodable_files_with_the_prior_answer(tmp_path, capsys):
    labels = ["a", "b", "c", "d"]
    prior = [0.1, 0.2, 0.3, 0.4]
    _make_checkpoint(tmp_path / "run" / "best", labels, prior=prior)
    folder = tmp_path / "test"
    folder.mkdir()
    rng = np.random.default_rng(2)
    sf.write(folder / "good.wav", (0.1 * rng.standard_normal(9000)).astype(np.float32), RATE)
    sf.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), RATE)
    (folder / "bad.wav").write_bytes(b"RIFF but not really a wav file")
    out = tmp_path / "submission.csv"

    status = main(["predict", str(tmp_path / "run"), str(folder), "--submission", str(out)])
    captured = capsys.readouterr()
    assert status == 1  # the bad file is still an error ...
    assert "bad.wav" in captured.err and "could not be tagged" in captured.err
    with open(out, newline="") as handle:
        rows = {row["fname"]: row["label"].split() for row in csv.DictReader(handle)}
    # ... but every file has a row, so Kaggle accepts the submission.
    assert sorted(rows) == ["bad.wav", "empty.wav", "good.wav"]
    assert all(len(tags) == 3 and set(tags) <= set(labels) for tags in rows.values())
    by_prior = ["d", "c", "b"]
    assert rows["bad.wav"] == by_prior and rows["empty.wav"] == by_prior


def test_inference_options_are_checked(tmp_path, capsys):
    _make_checkpoint(tmp_path / "run" / "best", ["a", "b"])
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(RATE, dtype=np.float32), RATE)
    run = str(tmp_path / "run")
    assert main(["predict", run, str(clip), "--hop-seconds", "0"]) == 2
    assert "--hop-seconds" in capsys.readouterr().err
    # Positive but under one sample at the model's rate: still one line, not a traceback.
    assert main(["predict", run, str(clip), "--hop-seconds", "0.00001"]) == 2
    assert "under one sample" in capsys.readouterr().err
    assert main(["predict", run, str(clip), "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["predict", run, str(clip), "--device", "gpu"]) == 2
    assert "not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        # A one-line error, not torch's assertion from deep inside Module.to.
        assert main(["predict", run, str(clip), "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and "Traceback" not in err


# --- names, links, FIFOs and submissions ------------------------------------------------------


def _clip(path, seed=0, frames=9000):
    """A noise clip; the name is passed as bytes, which soundfile takes for any name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = (0.1 * np.random.default_rng(seed).standard_normal(frames)).astype(np.float32)
    sf.write(os.fsencode(path), noise, RATE, format="WAV", subtype="FLOAT")
    return path


def test_a_name_that_is_not_utf8_is_tagged_and_shown_escaped(tmp_path, capsys):
    _make_checkpoint(tmp_path / "run" / "best", ["a", "b", "c"])
    folder = tmp_path / "clips"
    _clip(folder / "a.wav")
    _clip(Path(os.fsdecode(os.fsencode(folder) + b"/x_\xff.wav")), seed=1)
    _clip(folder / "z.wav", seed=2)
    out = tmp_path / "submission.csv"

    args = ["predict", str(tmp_path / "run"), str(folder)]
    assert main(args) == 0  # capsys writes strict UTF-8, as a terminal would
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        f"{folder}/a.wav",
        f"{folder}/x_\\xff.wav",
        f"{folder}/z.wav",
    ]
    assert main([*args, "--json", "--submission", str(out)]) == 0
    paths = [r["path"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert paths[1] == f"{folder}/x_\\xff.wav"
    with open(out, newline="", encoding="utf-8") as handle:
        assert [row["fname"] for row in csv.DictReader(handle)] == ["a.wav", "x_\\xff.wav", "z.wav"]


def test_fifos_and_bad_links_are_reported_without_hanging(tmp_path):
    _make_checkpoint(tmp_path / "run" / "best", ["a", "b"])
    folder = tmp_path / "clips"
    _clip(folder / "good.wav")
    os.mkfifo(folder / "inside.wav")
    os.mkfifo(tmp_path / "given.wav")
    (folder / "broken.wav").symlink_to(folder / "gone.wav")
    (folder / "loop.wav").symlink_to(folder / "loop.wav")
    command = [sys.executable, "-m", "wavemel", "predict", str(tmp_path / "run")]
    command += [str(tmp_path / "given.wav"), str(folder)]
    # A subprocess with a timeout: opening a FIFO blocks forever, which must fail, not hang.
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == [f"{folder}/good.wav"]
    assert "Traceback" not in done.stderr
    for name, reason in [
        (tmp_path / "given.wav", "is a named pipe (FIFO)"),
        (folder / "inside.wav", "is a named pipe (FIFO)"),
        (folder / "broken.wav", "broken symbolic link"),
        (folder / "loop.wav", "symbolic link loop"),
    ]:
        assert any(line.startswith(f"  {name}: {reason}") for line in done.stderr.splitlines())


def test_submission_cells_are_quoted_and_each_file_has_one_row(tmp_path, capsys):
    _make_checkpoint(tmp_path / "run" / "best", ["a", "b", "c"])
    comma = _clip(tmp_path / "t" / "dog, bark.wav")
    _clip(tmp_path / "t" / "two\nlines.wav", seed=1)
    plain = _clip(tmp_path / "t" / "plain.wav", seed=2)
    out = tmp_path / "submission.csv"
    given = [str(comma), str(tmp_path / "t"), str(plain), str(tmp_path / "t" / "." / "plain.wav")]
    assert main(["predict", str(tmp_path / "run"), *given, "--submission", str(out)]) == 0
    capsys.readouterr()
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["fname", "label"]
    # A name's comma stays in its cell; its newline is shown escaped, never starting a row.
    assert [row[0] for row in rows[1:]] == ["dog, bark.wav", "plain.wav", "two\\nlines.wav"]
    assert all(len(row) == 2 and len(row[1].split()) == 3 for row in rows[1:])


def test_two_files_with_one_name_stop_a_submission_before_tagging(tmp_path, capsys):
    _make_checkpoint(tmp_path / "run" / "best", ["a", "b"])
    first = _clip(tmp_path / "day1" / "x.wav")
    second = _clip(tmp_path / "day2" / "x.wav", seed=1)
    out = tmp_path / "submission.csv"
    args = ["predict", str(tmp_path / "run"), str(tmp_path / "day1"), str(tmp_path / "day2")]
    assert main([*args, "--submission", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    [line] = captured.err.splitlines()
    assert line.startswith("wavemel: error: --submission:")
    assert str(first) in line and str(second) in line
    assert main(args) == 0  # without a submission both are simply tagged
    assert len(capsys.readouterr().out.splitlines()) == 2


def _member(run_dir, labels, seed, rate=RATE, input_seconds=1.0, multi_label=False):
    torch.manual_seed(seed)
    model = create_model("cnn-audio", len(labels), size="tiny", sample_rate=rate).eval()
    meta = {"labels": labels, "sample_rate": rate, "input_seconds": input_seconds}
    if multi_label:
        meta["multi_label"] = True
    save_checkpoint(run_dir / "best", model, meta)
    return str(run_dir)


def _scores(capsys, argv):
    """``{file name: {label: probability}}`` of a ``predict --json`` run, and its stderr."""
    status = main([*argv, "--json", "--top-k", "4", "--device", "cpu"])
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    scores = {
        result["path"].rsplit("/", 1)[-1]: {tag["label"]: tag["score"] for tag in result["tags"]}
        for result in payload["results"]
    }
    return status, scores, payload, captured.err


def test_ensemble_scores_are_the_mean_of_its_runs_and_a_bad_file_is_reported_once(tmp_path, capsys):
    labels = ["a", "b", "c", "d"]
    one = _member(tmp_path / "one", labels, seed=1)
    # Another seed, input length and label order: reordered to RUN's order, then averaged.
    two = _member(tmp_path / "two", labels[::-1], seed=2, input_seconds=0.5)
    folder = tmp_path / "clips"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, seconds in (("short.wav", 0.3), ("long.wav", 2.7)):
        sf.write(folder / name, (0.2 * rng.standard_normal(int(seconds * RATE))), RATE)
    (folder / "x.wav").write_text("definitely not a wav file\n" * 10)

    _, alone_one, _, _ = _scores(capsys, ["predict", one, str(folder)])
    _, alone_two, _, _ = _scores(capsys, ["predict", two, str(folder)])
    status, both, payload, err = _scores(capsys, ["predict", one, str(folder), "--ensemble", two])
    assert status == 1
    assert payload["run"].endswith("one") and payload["ensemble"][0].endswith("two")
    assert sorted(both) == ["long.wav", "short.wav"]
    for name, scores in both.items():
        for label in labels:
            expected = (alone_one[name][label] + alone_two[name][label]) / 2
            assert scores[label] == pytest.approx(expected, rel=0, abs=1e-12), (name, label)
        assert alone_one[name] != alone_two[name]  # the two runs really differ
    assert err.count("x.wav") == 1 and "1 file(s) could not be tagged" in err


@pytest.mark.parametrize(
    ("other", "difference"),
    [
        ({"labels": ["a", "b", "e"]}, "the labels differ (only"),
        ({"rate": 16000}, "the sample rates differ (8000 vs 16000 Hz)"),
        ({"multi_label": True}, "single-label (softmax)"),
    ],
)
def test_ensemble_members_that_disagree_are_a_one_line_error(tmp_path, capsys, other, difference):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(4000, dtype=np.float32), RATE)
    one = _member(tmp_path / "one", ["a", "b", "c"], seed=1)
    two = _member(tmp_path / "two", other.pop("labels", ["a", "b", "c"]), seed=2, **other)
    assert main(["predict", one, str(clip), "--ensemble", two, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavemel: error: ensemble of ") and difference in err
    assert f"{one} and {two}" in err and err.count("\n") == 1


def test_ensemble_refuses_timeline(tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(4000, dtype=np.float32), RATE)
    one = _member(tmp_path / "one", ["a", "b"], seed=1)
    argv = ["predict", one, str(clip), "--ensemble", one, "--timeline", str(tmp_path / "t.csv")]
    assert main(argv) == 2
    assert "not an --ensemble" in capsys.readouterr().err
