"""``wavemel embed`` and ``wavemel.embed``: outputs equal the Tagger's, bad files, the folder."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.numpy import load_file, safe_open

from wavemel import embed
from wavemel.checkpoint import save_checkpoint
from wavemel.cli import main
from wavemel.infer import Tagger
from wavemel.models import create_model

RATE = 8000
LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("cnn-audio", len(LABELS), size="tiny", sample_rate=RATE).eval()
    save_checkpoint(
        run / "best", model, {"labels": LABELS, "sample_rate": RATE, "input_seconds": 0.5}
    )
    return run


def _clip(path, seconds=1.3, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))
    sf.write(os.fsencode(path), noise.astype(np.float32), RATE, format="WAV", subtype="FLOAT")
    return path


def _index(out):
    with open(out / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_embeddings_equal_the_taggers_and_bad_files_are_reported(run_dir, tmp_path, capsys):
    clips = tmp_path / "clips"
    good = [_clip(clips / "dog.wav", 1.3, 1), _clip(clips / "sub" / "cat.wav", 0.2, 2)]
    (clips / "broken.wav").write_bytes(b"RIFF not really a wav")
    sf.write(clips / "silent.wav", np.zeros(0, dtype=np.float32), RATE)
    out = tmp_path / "out"

    status = main(["embed", str(run_dir), str(clips), str(tmp_path / "gone.wav"), "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    tagger = Tagger.from_checkpoint(run_dir, device="cpu")
    rows = {row["file"].rsplit("/", 1)[-1]: row for row in _index(out)}
    assert set(rows) == {"dog.wav", "cat.wav", "broken.wav", "silent.wav", "gone.wav"}
    for path in good:
        row = rows[path.name]
        assert row["error"] == "" and row["output"] == f"{path.stem}.npy"
        saved = np.load(out / row["output"])
        assert saved.dtype == np.float32 and saved.shape == (tagger.model.embedding_dim,)
        np.testing.assert_array_equal(saved, tagger.embed(path))
        assert int(row["dim"]) == saved.shape[0]
        assert int(row["windows"]) == tagger.window_embeddings(path).values.shape[0]
    # 1.3 s in 0.5 s windows: two regular ones and the tail; 0.2 s: one filled window.
    assert rows["dog.wav"]["windows"] == "3" and rows["cat.wav"]["windows"] == "1"
    for name in ("broken.wav", "silent.wav", "gone.wav"):
        assert rows[name]["output"] == "" and rows[name]["error"], name
        assert f"{name}" in captured.err
    assert "empty clip" in rows["silent.wav"]["error"]
    assert "3 file(s) could not be embedded" in captured.err
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        ".wavemel-embed",
        "cat.npy",
        "dog.npy",
        "index.csv",
    ]


def test_timestamps_npy_hold_every_window_with_its_times(run_dir, tmp_path, capsys):
    clip = _clip(tmp_path / "long.wav", 2.3, 3)
    out = tmp_path / "out"
    args = ["embed", str(run_dir), str(clip), "-o", str(out), "--timestamps"]
    assert main([*args, "--hop-seconds", "0.25"]) == 0
    tagger = Tagger.from_checkpoint(run_dir, device="cpu", hop_seconds=0.25)
    series = tagger.window_embeddings(clip)
    windows = np.load(out / "long.windows.npy")
    times = np.load(out / "long.times.npy")
    assert windows.dtype == np.float32 and times.dtype == np.float64
    np.testing.assert_allclose(windows, series.values, rtol=1e-6)
    np.testing.assert_array_equal(times[:, 0], series.starts)
    np.testing.assert_array_equal(times[:, 1], series.ends)
    # 0.25 s hop over 2.3 s with 0.5 s windows: starts 0 .. 1.75, then the tail at 1.8.
    np.testing.assert_allclose(times[:, 0], [*np.arange(8) * 0.25, 1.8])
    np.testing.assert_array_equal(np.load(out / "long.npy"), tagger.embed(clip))
    assert _index(out)[0]["windows"] == "9"


def test_safetensors_format_is_one_file_with_the_source_name(run_dir, tmp_path, capsys):
    clip = _clip(tmp_path / "bird song.wav", 1.1, 4)
    out = tmp_path / "out"
    argv = ["embed", str(run_dir), str(clip), "-o", str(out), "--format", "safetensors"]
    assert main([*argv, "--timestamps"]) == 0
    path = out / "bird_song.safetensors"
    tensors = load_file(path)
    assert set(tensors) == {"embedding", "window_embeddings", "window_starts", "window_ends"}
    tagger = Tagger.from_checkpoint(run_dir, device="cpu")
    np.testing.assert_array_equal(tensors["embedding"], tagger.embed(clip))
    series = tagger.window_embeddings(clip)
    np.testing.assert_allclose(tensors["window_embeddings"], series.values, rtol=1e-6)
    np.testing.assert_array_equal(tensors["window_starts"], series.starts)
    with safe_open(path, "np") as handle:
        assert handle.metadata()["file"] == str(clip)
    assert _index(out)[0]["output"] == "bird_song.safetensors"


def test_output_names_are_distinct_and_safe():
    names = embed.output_names(
        [
            "a/x.wav",
            "b/x.wav",
            "c/X.flac",
            "x.windows.wav",
            "bad\nname.wav",
            os.fsdecode(b"odd_\xff.wav"),
            ".wav",
        ]
    )
    assert names == ["x", "x-2", "X-3", "x_windows", "bad_name", "odd", "wav"]
    assert len({name.casefold() for name in names}) == len(names)


def test_files_with_one_name_get_outputs_of_their_own(run_dir, tmp_path, capsys):
    first, second = _clip(tmp_path / "a" / "x.wav", 0.7, 5), _clip(tmp_path / "b" / "x.wav", 0.9, 6)
    out = tmp_path / "out"
    assert (
        main(["embed", str(run_dir), str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out)]) == 0
    )
    rows = {row["file"]: row["output"] for row in _index(out)}
    tagger = Tagger.from_checkpoint(run_dir, device="cpu")
    np.testing.assert_array_equal(np.load(out / rows[str(first)]), tagger.embed(first))
    np.testing.assert_array_equal(np.load(out / rows[str(second)]), tagger.embed(second))
    assert rows[str(first)] != rows[str(second)]


def test_a_folder_wavemel_did_not_make_needs_force_and_keeps_its_files(run_dir, tmp_path, capsys):
    clip = _clip(tmp_path / "clip.wav")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    argv = ["embed", str(run_dir), str(clip), "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not made by wavemel" in err and "--force" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main([*argv, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "clip.npy").is_file() and not (out / ".wavemel-embed").exists()


def test_a_folder_wavemel_made_is_written_again_without_force(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["embed", str(run_dir), str(_clip(tmp_path / "one.wav")), "-o", str(out)]) == 0
    assert main(["embed", str(run_dir), str(_clip(tmp_path / "two.wav")), "-o", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {".wavemel-embed", "one.npy", "two.npy"}
    assert [row["output"] for row in _index(out)] == ["two.npy"]


def test_user_errors_exit_2_and_leave_nothing(run_dir, tmp_path, capsys):
    clip = _clip(tmp_path / "clip.wav")
    out = tmp_path / "out"
    cases = [
        (["embed", str(run_dir), str(clip), "-o", str(clip)], "not a folder"),
        (["embed", str(run_dir), str(clip), "-o", str(run_dir), "--force"], "inside the run"),
        (["embed", str(run_dir / "best.json"), str(clip), "-o", str(run_dir / "e")], "inside"),
        (["embed", str(tmp_path / "norun"), str(clip), "-o", str(out)], "norun"),
        (["embed", str(run_dir), str(tmp_path / "empty"), "-o", str(out)], "no audio files"),
        (["embed", str(run_dir), str(clip), "-o", str(out), "--hop-seconds", "nan"], "--hop"),
        (["embed", str(run_dir), str(clip), "-o", str(out), "--batch-size", "0"], "--batch"),
    ]
    (tmp_path / "empty").mkdir()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, (argv, err)
        assert not out.exists(), argv
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.json", "best.safetensors"]


def test_files_are_written_one_at_a_time(run_dir, tmp_path):
    """Each file's outputs exist before the next file is read: one file's windows in memory."""
    files = [_clip(tmp_path / f"c{i}.wav", 0.8, i) for i in range(3)]
    out = tmp_path / "out"
    out.mkdir()
    tagger = Tagger.from_checkpoint(run_dir, device="cpu")
    read = tagger.window_embeddings
    written_before = []

    def spy(path, hop_seconds=None):
        written_before.append(sorted(p.name for p in out.iterdir()))
        return read(path, hop_seconds)

    tagger.window_embeddings = spy
    records = list(embed.embed_files(tagger, files, out))
    assert written_before == [[], ["c0.npy"], ["c0.npy", "c1.npy"]]
    assert [r.output for r in records] == ["c0.npy", "c1.npy", "c2.npy"]


def test_a_folder_holding_the_run_may_receive_embeddings(run_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    for name in ("best.json", "best.safetensors"):
        (runs / "r" / name).write_bytes((run_dir / name).read_bytes())
    clip = _clip(tmp_path / "clip.wav")
    assert main(["embed", str(runs / "r"), str(clip), "-o", str(runs), "--force"]) == 0
    assert (runs / "clip.npy").is_file()
    assert sorted(p.name for p in (runs / "r").iterdir()) == ["best.json", "best.safetensors"]
