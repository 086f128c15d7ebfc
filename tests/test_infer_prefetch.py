"""Decoding ahead in worker threads: the same windows, batches and errors as reading in order."""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

import wavemel.infer as infer
from wavemel.infer import Tagger, _read_ahead

LABELS = ["a", "b", "c", "d"]


class RecordingProbe(torch.nn.Module):
    """Deterministic logits from the whole window; remembers every batch it was given."""

    def __init__(self, input_samples: int = 100) -> None:
        super().__init__()
        self.num_classes = len(LABELS)
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(input_samples, 4, generator=generator))
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.detach().clone())
        return 3.0 * torch.tanh(x @ self.weight)


def _folder(tmp_path):
    """Good files (short, resampled, stereo, longer than the read-ahead cap), empty, corrupt."""
    rng = np.random.default_rng(7)
    files = []

    def write(name, seconds, rate, channels=1):
        shape = (int(seconds * rate), channels) if channels > 1 else int(seconds * rate)
        path = tmp_path / name
        sf.write(path, (0.2 * rng.standard_normal(shape)).astype(np.float32), rate)
        files.append(path)

    write("a_short.wav", 0.004, 8000)  # under one window: filled
    write("b_resampled.wav", 0.9, 11025)
    write("c_empty.wav", 0.0, 8000)
    corrupt = tmp_path / "d_corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    files.append(corrupt)
    write("e_stereo.wav", 0.5, 8000, channels=2)
    write("f_long.wav", 3.0, 8000)  # over the (shrunk) cap: its rest is streamed
    text = tmp_path / "g_text.wav"
    text.write_text("not audio")
    files.append(text)
    files.append(tmp_path / "h_missing.wav")
    for i in range(6):
        write(f"i_{i}.wav", 0.1 + 0.07 * i, 16000 if i % 2 else 8000)
    return files


def _run(files, workers, batch_size=7):
    model = RecordingProbe()
    tagger = Tagger(
        model,
        LABELS,
        sample_rate=8000,
        input_samples=100,
        hop_samples=60,
        batch_size=batch_size,
        block_frames=500,
        decode_workers=workers,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = list(tagger.predict_many(files, group_size=5))
    return answers, model.calls, [str(w.message) for w in caught]


def test_workers_give_identical_results_errors_and_batches(tmp_path, monkeypatch):
    # A 0.5 s cap at 8 kHz: the 3 s file is handed over half-read and finished by the main thread.
    monkeypatch.setattr(infer, "_PREFETCH_SECONDS", 0.5)
    files = _folder(tmp_path)
    sequential, seq_calls, seq_warnings = _run(files, workers=0)
    parallel, par_calls, par_warnings = _run(files, workers=4)
    assert [item for item, _, _ in parallel] == files  # input order
    for (_, p_seq, e_seq), (_, p_par, e_par) in zip(sequential, parallel):
        assert e_seq == e_par
        if p_seq is None:
            assert p_par is None
        else:
            np.testing.assert_array_equal(p_seq, p_par)  # bit for bit
    errors = [e for _, _, e in parallel if e is not None]
    assert len(errors) == 3 and all(
        ("d_corrupt" in e or "g_text" in e or "h_missing" in e) for e in errors
    )
    assert par_warnings == seq_warnings and any("c_empty" in w for w in par_warnings)
    # The same windows in the same batches: decoding ahead changes nothing the model sees.
    assert len(par_calls) == len(seq_calls)
    for a, b in zip(seq_calls, par_calls):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_read_ahead_stops_at_the_cap_and_hands_over_the_stream():
    consumed = []

    def blocks():
        for i in range(1000):
            consumed.append(i)
            yield np.full(100, i, dtype=np.float32)

    decoded = _read_ahead(blocks(), max_samples=250)
    assert len(decoded.blocks) == 3 and len(consumed) == 3  # not a block more than the cap needs
    rest = list(decoded.chunks())
    assert [int(b[0]) for b in rest] == list(range(1000))


def test_read_ahead_keeps_samples_before_an_error_and_raises_it_in_turn():
    def blocks():
        yield np.ones(10, dtype=np.float32)
        raise infer.AudioError("x.wav: unreadable or corrupt audio (truncated)")

    decoded = _read_ahead(blocks(), max_samples=1000)
    chunks = decoded.chunks()
    assert next(chunks).shape == (10,)
    with pytest.raises(infer.AudioError, match="x.wav"):
        next(chunks)


def test_a_failing_model_stops_the_decoding_threads(tmp_path):
    files = _folder(tmp_path)

    class Broken(RecordingProbe):
        def forward(self, x):
            raise RuntimeError("boom")

    tagger = Tagger(Broken(), LABELS, sample_rate=8000, input_samples=100, decode_workers=2)
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(tagger.predict_many(files))
    assert not [t for t in threading.enumerate() if t.name.startswith("wavemel-decode")]


def test_decode_workers_default_and_validation(monkeypatch):
    tagger = Tagger(RecordingProbe(), LABELS, sample_rate=8000, input_samples=100)
    assert tagger.decode_workers == infer.default_decode_workers("cpu")
    monkeypatch.setattr(infer, "_usable_cpus", lambda: 8)
    monkeypatch.setattr(infer, "busy_cpus", lambda: 0.0)
    monkeypatch.setattr(infer.torch, "get_num_threads", lambda: 5)
    # On the CPU only the cores torch's threads and other processes leave free; else up to 4.
    assert infer.default_decode_workers("cpu") == 3
    assert infer.default_decode_workers(torch.device("cuda")) == 4
    monkeypatch.setattr(infer, "busy_cpus", lambda: 1.2)
    assert infer.default_decode_workers("cpu") == 1
    monkeypatch.setattr(infer.torch, "get_num_threads", lambda: 8)
    assert infer.default_decode_workers("cpu") == 0
    with pytest.raises(ValueError, match="decode_workers"):
        Tagger(RecordingProbe(), LABELS, sample_rate=8000, input_samples=100, decode_workers=-1)


def test_predict_decode_workers_option(tmp_path, capsys):
    from wavemel.checkpoint import save_checkpoint
    from wavemel.cli import main
    from wavemel.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn-audio", 4, size="tiny", sample_rate=8000).eval()
    save_checkpoint(
        tmp_path / "run" / "best",
        model,
        {"labels": LABELS, "sample_rate": 8000, "input_seconds": 0.5},
    )
    folder = tmp_path / "clips"
    folder.mkdir()
    for path in _folder(folder)[:-1]:  # the missing file is not in the folder
        assert path.parent == folder
    outputs = []
    for workers in ("0", "3"):
        args = [
            "predict",
            str(tmp_path / "run"),
            str(folder),
            "--json",
            "--decode-workers",
            workers,
        ]
        assert main(args) == 1  # the corrupt and text files
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and len(outputs[0]["results"]) == 11  # with the empty one
    for command in ("predict", "evaluate"):
        target = [str(folder)] if command == "predict" else []
        assert main([command, str(tmp_path / "run"), *target, "--decode-workers", "-1"]) == 2
        err = capsys.readouterr().err
        assert "--decode-workers must be 0 or more" in err and "Traceback" not in err


def test_evaluate_passes_decode_workers_to_the_tagger(tmp_path, capsys, monkeypatch):
    import wavemel.evaluate
    from wavemel.checkpoint import save_checkpoint
    from wavemel.cli import main
    from wavemel.errors import WavemelError
    from wavemel.models import create_model

    model = create_model("cnn-audio", 4, size="tiny", sample_rate=8000).eval()
    meta = {"labels": LABELS, "sample_rate": 8000, "input_seconds": 0.5}
    save_checkpoint(tmp_path / "run" / "best", model, meta)

    def seen(*args, **kwargs):
        raise WavemelError(f"seen decode_workers={kwargs.get('decode_workers')}")

    monkeypatch.setattr(wavemel.evaluate.Tagger, "from_checkpoint", seen)
    assert main(["evaluate", str(tmp_path / "run"), "--decode-workers", "3"]) == 2
    assert "seen decode_workers=3" in capsys.readouterr().err
