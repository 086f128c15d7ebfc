"""ONNX export (log-mel inside the graph) and the onnxruntime tagging backend."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed")
pytest.importorskip("onnxscript", reason="the ONNX extra is not installed")
onnx = pytest.importorskip("onnx", reason="the ONNX extra is not installed")

from wavemel.audio import load_audio  # noqa: E402
from wavemel.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from wavemel.cli import main  # noqa: E402
from wavemel.errors import CheckpointError, WavemelError  # noqa: E402
from wavemel.export import OPSET, ExportError, _MaxPool1dAs2d, export_onnx  # noqa: E402
from wavemel.frontend import LogMel  # noqa: E402
from wavemel.infer import Tagger  # noqa: E402
from wavemel.models import create_model  # noqa: E402
from wavemel.onnx_backend import load_onnx  # noqa: E402

RATE = 16000
INPUT_SECONDS = 1.0
LABELS = [f"class{i:02d}" for i in range(21)]
MODELS = ("cnn-audio", "cnn-spec", "cnn-comb", "cnn14")
# Relative to the largest logit: the criterion the issue asks for (float32 graphs give ~1e-6).
RTOL = 1e-4
# Probabilities closer than this are a tie at float32 rounding (the backends differ by ~1e-6).
TIE = 5e-6


def _prior() -> list[float]:
    # Skewed, so the empty-clip answer differs from the uniform one the tagger would otherwise use.
    prior = [1.0] * len(LABELS)
    prior[4], prior[11], prior[0] = 9.0, 6.0, 3.0
    return prior


def _checkpoint(stem, name: str):
    torch.manual_seed(0)
    model = create_model(name, len(LABELS), size="tiny", sample_rate=RATE).eval()
    meta = {
        "labels": LABELS,
        "sample_rate": RATE,
        "input_seconds": INPUT_SECONDS,
        "label_prior": _prior(),
        "train_config": {"eval_fill": "replicate"},
    }
    return save_checkpoint(stem, model, meta)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Model name -> (checkpoint .json, exported .onnx), one export per model for the module."""
    root = tmp_path_factory.mktemp("export")
    paths = {}
    for name in MODELS:
        checkpoint = _checkpoint(root / name / "best", name)
        paths[name] = (checkpoint, export_onnx(checkpoint, root / f"{name}.onnx").path)
    return paths


def _max_rel_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _logits(model, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_onnx_logits_match_torch_for_any_batch_and_length(exported, name):
    checkpoint, path = exported[name]
    torch_model, _ = load_checkpoint(checkpoint)
    onnx_model, _ = load_onnx(path)
    rng = np.random.default_rng(1)
    width = int(RATE * INPUT_SECONDS)
    loud = 0.3 * rng.standard_normal((5, 3 * width + 777))
    loud[1] *= 1e-3  # quiet: cnn-audio's standardisation must undo the level
    loud[2] = 0.0  # silent: the standard-deviation floor and the log-mel's amin
    loud[3, : width // 2] = 0.0  # leading silence, as in many real clips
    batches = [loud, 0.1 * rng.standard_normal((1, torch_model.min_samples))]
    for batch in batches:
        batch = batch.astype(np.float32)
        expected = _logits(torch_model, batch)
        assert _max_rel_diff(_logits(onnx_model, batch), expected) <= RTOL


@pytest.mark.parametrize("name", MODELS)
def test_onnx_logits_match_torch_on_real_clips(exported, name, fsdk18_mini_root):
    checkpoint, path = exported[name]
    torch_model, _ = load_checkpoint(checkpoint)
    onnx_model, _ = load_onnx(path)
    wavs = sorted((fsdk18_mini_root / "FSDKaggle2018.audio_test").glob("*.wav"))
    clips = [clip for clip in (load_audio(p, RATE) for p in wavs[:12]) if clip.size][:8]
    assert clips
    for clip in clips:  # each at its own length: the graph's number of samples is dynamic
        batch = clip[None, :].astype(np.float32)
        expected = _logits(torch_model, batch)
        assert _max_rel_diff(_logits(onnx_model, batch), expected) <= RTOL


def test_metadata_and_dynamic_axes_describe_the_checkpoint(exported):
    checkpoint, path = exported["cnn-spec"]
    torch_model, _ = load_checkpoint(checkpoint)
    proto = onnx.load(str(path))
    meta = {prop.key: json.loads(prop.value) for prop in proto.metadata_props}
    assert meta["labels"] == LABELS
    assert meta["sample_rate"] == RATE
    assert meta["input_samples"] == int(RATE * INPUT_SECONDS)
    assert meta["input_seconds"] == INPUT_SECONDS
    assert meta["frontend"] == torch_model.frontend.config()
    assert meta["fill"] == "replicate"
    np.testing.assert_allclose(meta["prior"], np.array(_prior()) / sum(_prior()))
    assert meta["model"] == "cnn-spec" and meta["num_classes"] == len(LABELS)
    assert {op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")} == {OPSET}
    # The front end is inside: the STFT as a Conv with the windowed DFT basis.
    n_fft = torch_model.frontend.n_fft
    dft_shape = [2 * (n_fft // 2 + 1), 1, n_fft]
    assert any(list(init.dims) == dft_shape for init in proto.graph.initializer)
    for tensor in (proto.graph.input[0], proto.graph.output[0]):
        batch, second = tensor.type.tensor_type.shape.dim
        assert batch.dim_param and not batch.HasField("dim_value")
        if tensor is proto.graph.input[0]:
            assert second.dim_param and not second.HasField("dim_value")
        else:
            assert second.dim_value == len(LABELS)


def test_per_example_top_db_floor_is_inside_the_graph(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn-spec", 3, size="tiny", sample_rate=RATE, top_db=40.0).eval()
    meta = {"labels": LABELS[:3], "sample_rate": RATE, "input_seconds": INPUT_SECONDS}
    checkpoint = save_checkpoint(tmp_path / "run" / "best", model, meta)
    onnx_model, meta = load_onnx(export_onnx(checkpoint, tmp_path / "spec.onnx").path)
    assert meta["frontend"]["top_db"] == 40.0
    # Rows 60 dB apart: a floor taken over the whole batch instead of per example would differ.
    batch = 0.1 * np.random.default_rng(2).standard_normal((2, 12345))
    batch[1] *= 1e-3
    batch = batch.astype(np.float32)
    assert _max_rel_diff(_logits(onnx_model, batch), _logits(model, batch)) <= RTOL


@pytest.mark.parametrize(
    ("sample_rate", "kwargs"),
    [(16000, {}), (22050, {"pad_mode": "reflect", "top_db": 80.0}), (8000, {"n_fft": 401})],
)
def test_frontend_dft_convolution_matches_torch_stft(sample_rate, kwargs):
    front = LogMel(sample_rate, **kwargs)
    rng = np.random.default_rng(4)
    t = np.arange(sample_rate) / sample_rate
    tone = np.sin(2 * np.pi * 440.0 * t)  # a pure tone: bins far from it are ~145 dB down
    waveform = torch.from_numpy(np.stack([0.1 * rng.standard_normal(t.size), tone, 1e-3 * tone]))
    truth = front.set_dft("fft")(waveform)  # float64
    torch.testing.assert_close(front.set_dft("conv")(waveform), truth, rtol=0, atol=1e-6)
    # In float32 both paths sit at rounding noise in the deepest bins (torch.stft is 0.18 dB off
    # there); within 80 dB of each example's peak they agree with float64 to ~1e-3 dB.
    conv = front.set_dft("conv")(waveform.float()).double()
    error = (conv - truth).abs()
    near_peak = truth >= truth.amax(dim=(1, 2, 3), keepdim=True) - 80.0
    assert error[near_peak].max() < 5e-3 and error.max() < 0.25


@pytest.mark.parametrize(("kernel", "ceil_mode"), [(4, False), (3, True)])
def test_maxpool_replacement_is_exact(kernel, ceil_mode):
    # torch.export freezes MaxPool1d's length to the traced one (cnn-audio's samples would no
    # longer be dynamic); the export swaps in a 2-D pool that must give the same numbers.
    pool = torch.nn.MaxPool1d(kernel, ceil_mode=ceil_mode)
    x = torch.randn(3, 5, 101)
    torch.testing.assert_close(_MaxPool1dAs2d(pool)(x), pool(x), rtol=0, atol=0)


def test_onnx_tagging_equals_torch_tagging_on_fsdk18_mini(exported, fsdk18_mini_root):
    checkpoint, path = exported["cnn-comb"]
    by_torch = Tagger.from_checkpoint(checkpoint, device="cpu")
    by_onnx = Tagger.from_onnx(path)
    files = sorted((fsdk18_mini_root / "FSDKaggle2018.audio_test").glob("*.wav"))
    empty = [p for p in files if sf.info(str(p)).frames == 0]
    assert empty, "fsdk18-mini's test folder should hold empty files"
    with pytest.warns(UserWarning, match="empty clip"):
        torch_rows = list(by_torch.predict_many(files))
    with pytest.warns(UserWarning, match="empty clip"):
        onnx_rows = list(by_onnx.predict_many(files))
    for (item, expected, error), (_, actual, onnx_error) in zip(torch_rows, onnx_rows):
        assert error is None and onnx_error is None, item
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
        torch_top = [label for label, _ in by_torch.top_k(expected)]
        onnx_top = [label for label, _ in by_onnx.top_k(actual)]
        ranked = np.sort(expected)[::-1]
        if np.all(ranked[:3] - ranked[1:4] > TIE):
            assert onnx_top == torch_top, item
        else:  # labels tied to float32 rounding may swap; their PyTorch scores must still rank
            chosen = expected[[LABELS.index(label) for label in onnx_top]]
            np.testing.assert_allclose(chosen, ranked[:3], rtol=0, atol=TIE)
    prior = np.array(_prior()) / sum(_prior())
    for item, probabilities, _ in onnx_rows:
        if item in empty:
            np.testing.assert_allclose(probabilities, prior)


def _write_wavs(folder, count: int = 4) -> list[str]:
    rng = np.random.default_rng(3)
    folder.mkdir()
    paths = []
    for index in range(count):
        samples = 0.2 * rng.standard_normal(int(22050 * (0.4 + 0.7 * index)))
        path = folder / f"clip{index}.wav"
        sf.write(str(path), samples.astype(np.float32), 22050)
        paths.append(str(path))
    return paths


def test_cli_predict_with_onnx_prints_the_checkpoints_tags(exported, tmp_path, capsys):
    checkpoint, path = exported["cnn-audio"]
    wavs = _write_wavs(tmp_path / "wavs")
    outputs = []
    for model in (checkpoint, path):
        assert main(["predict", str(model), *wavs, "--json", "--top-k", "5"]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["results"])
    torch_results, onnx_results = outputs
    assert [r["path"] for r in onnx_results] == wavs
    for expected, actual in zip(torch_results, onnx_results):
        assert [t["label"] for t in actual["tags"]] == [t["label"] for t in expected["tags"]]
        scores = [[t["score"] for t in r["tags"]] for r in (actual, expected)]
        np.testing.assert_allclose(*scores, rtol=0, atol=1e-5)


def test_export_refuses_to_overwrite_without_force(exported, tmp_path, capsys):
    checkpoint, _ = exported["cnn-audio"]
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's own file")
    assert main(["export", str(checkpoint), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"wavemel: error: {out}: already exists (use --force to overwrite it)"
    assert out.read_bytes() == b"the user's own file"

    assert main(["export", str(checkpoint), "-o", str(out), "--force"]) == 0
    assert "opset 18" in capsys.readouterr().out
    model, meta = load_onnx(out)
    assert meta["labels"] == LABELS and model.num_classes == len(LABELS)


@pytest.mark.parametrize(
    ("output", "message"),
    [("model.bin", "must end in .onnx"), ("no-such-folder/model.onnx", "no such folder")],
)
def test_export_refuses_bad_output_names(exported, tmp_path, capsys, output, message):
    checkpoint, _ = exported["cnn-audio"]
    assert main(["export", str(checkpoint), "-o", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_writes_nothing_when_onnxruntime_disagrees(exported, tmp_path, monkeypatch):
    checkpoint, _ = exported["cnn-audio"]
    # No real graph disagrees, so the limit is made impossible to meet.
    monkeypatch.setattr("wavemel.export.PARITY_RTOL", -1.0)
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="differ from PyTorch's.*nothing written"):
        export_onnx(checkpoint, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["onnxruntime", "onnxscript", "onnx"])
def test_missing_onnx_packages_give_one_install_line(exported, tmp_path, monkeypatch, module):
    checkpoint, path = exported["cnn-audio"]
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(WavemelError, match=r"pip install 'wavemel\[onnx\]'") as caught:
        export_onnx(checkpoint, tmp_path / "model.onnx")
    assert module in str(caught.value) and "\n" not in str(caught.value)
    if module == "onnxruntime":
        with pytest.raises(WavemelError, match=r"onnxruntime .* pip install 'wavemel\[onnx\]'"):
            Tagger.from_onnx(path)


def test_cli_predict_without_onnxruntime_exits_2(exported, tmp_path, monkeypatch, capsys):
    _, path = exported["cnn-audio"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["predict", str(path), *_write_wavs(tmp_path / "wavs", 1)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavemel: error: onnxruntime is needed") and err.count("\n") == 1


def test_unusable_onnx_files_are_one_line_checkpoint_errors(exported, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(CheckpointError, match="garbage.onnx: not a loadable ONNX model") as caught:
        Tagger.from_onnx(garbage)
    assert "\n" not in str(caught.value)

    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(exported["cnn-audio"][1]))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(CheckpointError, match="foreign.onnx: ONNX file lacks wavemel metadata"):
        Tagger.from_onnx(foreign)

    edited = tmp_path / "edited.onnx"
    proto = onnx.load(str(exported["cnn-audio"][1]))
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in proto.metadata_props}, "labels": json.dumps(["a"])}
    )
    onnx.save(proto, str(edited))
    with pytest.raises(CheckpointError, match="edited.onnx: ONNX metadata has 1 labels for 21"):
        Tagger.from_onnx(edited)

    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)  # opening it would block forever
    with pytest.raises(CheckpointError, match="fifo.onnx: is a named pipe"):
        Tagger.from_onnx(fifo)

    with pytest.raises(CheckpointError, match="missing.onnx: ONNX model file not found"):
        Tagger.from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(WavemelError, match="run on the CPU"):
        Tagger.from_onnx(exported["cnn-audio"][1], device="cuda")
