"""``wavemel predict``: Kaggle submission format, folders, bad files."""

from __future__ import annotations

import csv
import json

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
