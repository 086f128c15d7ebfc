"""cnn14: the model contract, parity with PANNs' own CNN14, import-weights, combine, fine-tuning.

The reference is ``panns_inference.models.Cnn14`` with random weights (nothing is downloaded);
importing ``panns_inference`` reads AudioSet's label CSV from ``~/panns_data`` and tries to fetch
it when absent, so the fixture points HOME at a temporary folder that holds a written one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.checkpoint import load_checkpoint
from wavemel.cli import main
from wavemel.convert import panns_cnn14_key_map
from wavemel.errors import CheckpointError, WavemelError
from wavemel.models import Cnn14, create_model, model_from_config

SR = 32000
AUDIOSET_CLASSES = 527


def _write_labels(path: Path, count: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "mid", "display_name"])
        for i in range(count):
            # Commas and quotes as in AudioSet's "Male speech, man speaking".
            writer.writerow([i, f"/m/{i:05d}", f'Sound {i}, "quoted"'])
    return path


@pytest.fixture(scope="module")
def panns_models(tmp_path_factory):
    """``panns_inference.models``, imported offline under a temporary HOME."""
    home = tmp_path_factory.mktemp("home")
    _write_labels(home / "panns_data" / "class_labels_indices.csv", AUDIOSET_CLASSES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        return pytest.importorskip("panns_inference.models")


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random BatchNorm statistics and affine terms and biases, so a mis-mapped layer shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(("spectrogram_extractor", "logmel_extractor", "frontend")):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("weight") and tensor.dim() == 1:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)


def _panns_file(path: Path, model: Cnn14) -> Path:
    """Save a wavemel cnn14 as a PANNs release file: ``{"model": panns_state_dict}``."""
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    cfg = model.config
    stft = Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop_length, pad_mode="reflect")
    mel = LogmelFilterBank(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    ours = model.state_dict()
    state = {
        source: ours[target].transpose(2, 3) if ours[target].dim() == 4 else ours[target]
        for source, target in panns_cnn14_key_map(len(model.blocks)).items()
    }
    state |= {f"spectrogram_extractor.{k}": v for k, v in stft.state_dict().items()}
    state |= {f"logmel_extractor.{k}": v for k, v in mel.state_dict().items()}
    torch.save({"model": state, "iteration": 0}, path)
    return path


def _tiny(num_classes: int = 5, sample_rate: int = SR, seed: int = 0) -> Cnn14:
    torch.manual_seed(seed)
    model = create_model("cnn14", num_classes, size="tiny", sample_rate=sample_rate)
    _randomise(model, seed)
    return model.eval()


def _import(pth: Path, out: Path, *extra: str) -> int:
    return main(["import-weights", "panns-cnn14", str(pth), "-o", str(out), *extra])


# --- the model ------------------------------------------------------------------------------


def test_cnn14_follows_the_model_contract():
    model = create_model("cnn14", 5, size="tiny", sample_rate=SR)
    x = torch.randn(3, model.min_samples)
    logits = model(x)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    assert model.features(x).shape == (3, model.embedding_dim)
    assert model.conv_features(x).shape == (3, model.conv_dim)
    logits.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad
    rebuilt = model_from_config("cnn14", 5, json.loads(json.dumps(model.config_dict())))
    assert rebuilt.config == model.config
    with pytest.raises(ValueError, match="at least"):
        model(torch.randn(1, model.min_samples - 1))


def test_paper_size_has_the_release_settings():
    model = create_model("cnn14", AUDIOSET_CLASSES, size="paper", sample_rate=SR)
    front = model.frontend.config()
    assert (front["n_fft"], front["hop_length"], front["n_mels"]) == (1024, 320, 64)
    assert (front["fmin"], front["fmax"], front["top_db"], front["pad_mode"]) == (
        50.0,
        14000.0,
        None,
        "reflect",
    )
    assert model.config.channels == (64, 128, 256, 512, 1024, 2048)
    # The published CNN14's trainable parameters (its 80.8 M less the fixed front end).
    assert sum(p.numel() for p in model.parameters()) == 80_753_615
    # PANNs' 16 kHz release uses the same durations: 512-point window, hop 160, fmax 8 kHz.
    low = create_model("cnn14", 2, size="tiny", sample_rate=16000).config
    assert (low.n_fft, low.hop_length, low.fmax) == (512, 160, 8000.0)


def test_logmel_matches_torchlibrosa():
    torchlibrosa = pytest.importorskip("torchlibrosa.stft")
    model = _tiny()
    cfg = model.config
    stft = torchlibrosa.Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop_length, pad_mode="reflect")
    mel = torchlibrosa.LogmelFilterBank(
        sr=SR, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, top_db=None
    )
    x = torch.rand(2, SR, generator=torch.Generator().manual_seed(3)) * 2 - 1
    x[1] *= 1e-3  # quiet: tens of dB lower
    reference = mel(stft(x))  # (B, 1, frames, n_mels)
    ours = model.spectrogram(x).transpose(2, 3)
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=0)


def test_frozen_blocks_and_their_statistics_do_not_change():
    model = _tiny().train()
    model.freeze_blocks(2)
    assert not model.blocks[0].training and not model.input_norm.training
    assert model.blocks[2].training
    frozen = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(("input_norm.", "blocks.0.", "blocks.1."))
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model(torch.randn(4, SR)).sum().backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert not torch.equal(after["blocks.5.0.weight"], _tiny().state_dict()["blocks.5.0.weight"])
    with pytest.raises(ValueError, match="0 to 6"):
        model.freeze_blocks(7)


# --- parity with PANNs ----------------------------------------------------------------------


def test_imported_panns_cnn14_gives_the_reference_logits(panns_models, tmp_path):
    torch.manual_seed(0)
    reference = panns_models.Cnn14(
        sample_rate=SR,
        window_size=1024,
        hop_size=320,
        mel_bins=64,
        fmin=50,
        fmax=14000,
        classes_num=AUDIOSET_CLASSES,
    )
    _randomise(reference, seed=1)
    reference.eval()
    pth = tmp_path / "Cnn14_mAP=0.431.pth"
    torch.save({"model": reference.state_dict(), "iteration": 0}, pth)
    labels = _write_labels(tmp_path / "class_labels_indices.csv", AUDIOSET_CLASSES)

    assert _import(pth, tmp_path / "run", "--labels", str(labels)) == 0
    model, meta = load_checkpoint(tmp_path / "run")
    assert meta["model"] == "cnn14" and model.output_activation == "sigmoid"
    assert meta["model_config"]["output_activation"] == "sigmoid"
    assert meta["labels"][1] == 'Sound 1, "quoted"' and len(meta["labels"]) == AUDIOSET_CLASSES
    assert meta["sample_rate"] == SR and meta["source"]["format"] == "panns-cnn14"

    x = torch.rand(2, 2 * SR, generator=torch.Generator().manual_seed(2)) * 2 - 1
    captured = {}
    reference.fc_audioset.register_forward_hook(lambda m, i, out: captured.update(logits=out))
    with torch.no_grad():
        expected = reference(x)
        logits = model(x)
        embedding = model.features(x)
    torch.testing.assert_close(logits, captured["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        torch.sigmoid(logits), expected["clipwise_output"], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(embedding, expected["embedding"], atol=1e-4, rtol=0)
    # Not trivially equal: the classes really differ from one another.
    assert captured["logits"].std() > 0.05


# --- import-weights -------------------------------------------------------------------------


def test_import_without_labels_numbers_the_classes(tmp_path):
    pth = _panns_file(tmp_path / "tiny.pth", _tiny(num_classes=4))
    assert _import(pth, tmp_path / "run") == 0
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["labels"] == ["0", "1", "2", "3"]
    assert meta["model_config"]["channels"] == [8, 16, 32, 64, 128, 256]
    assert len(meta["source"]["sha256"]) == 64


class _Payload:
    """Unpickling this would create ``marker``; ``weights_only=True`` must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_file(kind: str, tmp_path: Path) -> tuple[list[str], str]:
    """(command-line arguments after the weights file, expected message part) for ``kind``."""
    pth = tmp_path / "model.pth"
    if kind == "text":
        pth.write_text("not a checkpoint")
        return [], "not a loadable PyTorch weights file"
    if kind == "pickle":
        torch.save({"model": _Payload(tmp_path / "executed")}, pth)
        return [], "not a loadable PyTorch weights file"
    _panns_file(pth, _tiny(num_classes=3))
    if kind == "missing-key":
        state = torch.load(pth, weights_only=True)
        del state["model"]["conv_block3.bn2.running_var"]
        torch.save(state, pth)
        return [], "missing 'conv_block3.bn2.running_var'"
    if kind == "wrong-fmin":
        return ["--fmin", "20"], "mel filterbank is not the one of sample_rate 32000"
    if kind == "wrong-rate":
        return ["--sample-rate", "16000"], "mel filterbank is not the one of sample_rate 16000"
    if kind == "hop":
        return ["--hop-length", "0"], "--hop-length must be a positive number of samples"
    if kind == "label-count":
        labels = _write_labels(tmp_path / "labels.csv", 5)
        return ["--labels", str(labels)], "5 labels for a model with 3 classes"
    if kind == "label-columns":
        (tmp_path / "labels.csv").write_text("name\nA\nB\nC\n")
        return ["--labels", str(tmp_path / "labels.csv")], "index,mid,display_name"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "text",
        "pickle",
        "missing-key",
        "wrong-fmin",
        "wrong-rate",
        "hop",
        "label-count",
        "label-columns",
    ],
)
def test_import_refuses_bad_input_in_one_line(kind, tmp_path, capsys):
    extra, message = _bad_file(kind, tmp_path)
    assert _import(tmp_path / "model.pth", tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavemel: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "executed").exists()


def test_import_needs_force_for_an_existing_run_and_never_clears_other_folders(tmp_path, capsys):
    pth = _panns_file(tmp_path / "tiny.pth", _tiny(num_classes=3))
    run = tmp_path / "run"
    assert _import(pth, run) == 0
    assert _import(pth, run) == 2 and "--force" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text("{}\n")
    assert _import(pth, run, "--force") == 0
    assert not (run / "metrics.jsonl").exists()  # the old run is replaced, not mixed in
    stranger = tmp_path / "thesis"
    stranger.mkdir()
    (stranger / "chapter1.tex").write_text("x")
    assert _import(pth, stranger, "--force") == 2
    assert (stranger / "chapter1.tex").exists()


def test_import_keeps_the_file_it_reads_and_accepts_old_batchnorm_state(tmp_path):
    source = _tiny(num_classes=3)
    run = tmp_path / "run"
    assert _import(_panns_file(tmp_path / "tiny.pth", source), run) == 0
    # A .pth kept inside the run folder survives --force (only wavemel's own files are cleared).
    inside = _panns_file(run / "tiny.pth", source)
    assert _import(inside, run, "--force") == 0 and inside.exists()
    # Checkpoints from before PyTorch 0.4.1 have no num_batches_tracked.
    state = torch.load(inside, weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if "num_batches" not in k}
    torch.save(state, tmp_path / "old.pth")
    assert _import(tmp_path / "old.pth", tmp_path / "old") == 0
    old, _ = load_checkpoint(tmp_path / "old")
    x = torch.randn(1, SR)
    with torch.no_grad():
        torch.testing.assert_close(old(x), source(x))


def test_predict_with_an_imported_run_never_calls_torch_load(tmp_path, monkeypatch, capsys):
    pth = _panns_file(tmp_path / "tiny.pth", _tiny(num_classes=3))
    assert _import(pth, tmp_path / "run") == 0
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(0).uniform(-0.5, 0.5, SR).astype(np.float32), SR)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called at tagging time")

    monkeypatch.setattr(torch, "load", refuse)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(clip), "--json", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "clip.wav" in out


# --- combine and fine-tune ------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from wavemel.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    return generate(root, clips_per_class=4, sample_rate=16000, min_seconds=0.3, max_seconds=1.0)


def _train_args(synth: Path, tmp: Path, out: str, *extra: str) -> list[str]:
    return [
        "train", "--data", str(synth), "--out", str(tmp / out), "--input-seconds", "0.5",
        "--epochs", "1", "--batch-size", "8", "--folds", "2", "--workers", "0",
        "--device", "cpu", "--mixup-alpha", "0", "--cache-dir", str(tmp / "cache"), *extra,
    ]  # fmt: skip


def test_combine_accepts_an_imported_cnn14_as_the_spec_branch(synth, tmp_path, capsys):
    audio_args = ["--model", "cnn-audio", "--size", "tiny", "--sample-rate", str(SR)]
    assert main(_train_args(synth, tmp_path, "audio", *audio_args)) == 0
    pth = _panns_file(tmp_path / "tiny.pth", _tiny(num_classes=AUDIOSET_CLASSES))
    assert _import(pth, tmp_path / "panns") == 0
    args = ["combine", "--audio", str(tmp_path / "audio"), "--spec", str(tmp_path / "panns")]
    args += ["--out", str(tmp_path / "comb"), "--epochs", "1", "--batch-size", "8"]
    args += ["--hidden", "16", "--workers", "0", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    comb, meta = load_checkpoint(tmp_path / "comb")
    imported, _ = load_checkpoint(tmp_path / "panns")
    assert meta["model_config"]["spec"]["name"] == "cnn14"
    for name, tensor in comb.spec.state_dict().items():
        assert torch.equal(tensor, imported.state_dict()[name]), name
    comb.zero_input = "spec"  # the Figure 4 ablation runs on a cnn14 branch too
    assert comb(torch.randn(2, SR // 2)).shape == (2, 8)

    # Another rate: refused with the way to match it.
    low = _panns_file(tmp_path / "low.pth", _tiny(num_classes=3, sample_rate=16000))
    assert _import(low, tmp_path / "low", "--sample-rate", "16000") == 0
    args[4], args[6] = str(tmp_path / "low"), str(tmp_path / "comb2")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "differ in sample_rate (32000 vs 16000)" in err and "--sample-rate" in err


def test_combine_refuses_windows_shorter_than_the_cnn14_minimum(tmp_path):
    from wavemel.checkpoint import save_checkpoint
    from wavemel.train.combine import combine
    from wavemel.train.config import CombineConfig, TrainConfig

    audio = create_model("cnn-audio", 3, size="tiny", sample_rate=SR)
    train_config = TrainConfig(data="/data/x", out=str(tmp_path / "a"), sample_rate=SR)
    meta = {"labels": list("abc"), "sample_rate": SR, "input_seconds": 0.25}
    save_checkpoint(
        tmp_path / "a" / "best", audio, {**meta, "train_config": train_config.to_dict()}
    )
    assert _import(_panns_file(tmp_path / "tiny.pth", _tiny(num_classes=3)), tmp_path / "p") == 0
    config = CombineConfig(audio_run=str(tmp_path / "a"), spec_run=str(tmp_path / "p"), out="c")
    with pytest.raises(CheckpointError, match="needs windows of at least 0.310 s"):
        combine(config)


def test_fine_tuning_an_imported_cnn14(synth, tmp_path, capsys):
    source = _tiny(num_classes=AUDIOSET_CLASSES)
    assert _import(_panns_file(tmp_path / "tiny.pth", source), tmp_path / "panns") == 0
    # The data's 8 labels differ from the import's 527: a new classifier; the rate is the init's.
    args = ["--model", "cnn14", "--init", str(tmp_path / "panns"), "--freeze", "2"]
    args += ["--sample-rate", "16000", "--mixup-on", "spec", "--mixup-alpha", "0.4"]
    assert main(_train_args(synth, tmp_path, "tuned", *args)) == 0
    assert "new classifier for the data's 8 labels" in capsys.readouterr().out
    model, meta = load_checkpoint(tmp_path / "tuned")
    assert meta["sample_rate"] == SR and len(meta["labels"]) == 8
    assert meta["model_config"]["output_activation"] == "softmax"
    assert meta["train_config"]["freeze_blocks"] == 2
    assert meta["train_config"]["mixup_on"] == "spec"
    assert meta["train_config"]["init"] == str((tmp_path / "panns").resolve())
    assert model.classifier.weight.shape == (8, source.embedding_dim)
    before, after = source.state_dict(), model.state_dict()
    for name in before:
        if name.startswith(("input_norm.", "blocks.0.", "blocks.1.")):
            assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["blocks.5.0.weight"], before["blocks.5.0.weight"])


@pytest.mark.slow
def test_fine_tuning_the_full_size_cnn14_on_cpu(synth, tmp_path):
    # The published size (80 M parameters): one epoch on 16 clips, blocks 1-4 frozen. 43 s on two
    # cores shared with other jobs, much of it writing the 320 MB checkpoints and resume state.
    torch.manual_seed(0)
    source = create_model("cnn14", AUDIOSET_CLASSES, size="paper", sample_rate=SR).eval()
    assert _import(_panns_file(tmp_path / "full.pth", source), tmp_path / "panns") == 0
    args = ["--model", "cnn14", "--init", str(tmp_path / "panns"), "--freeze", "4"]
    assert main(_train_args(synth, tmp_path, "tuned", *args)) == 0
    model, meta = load_checkpoint(tmp_path / "tuned")
    assert meta["model_config"]["channels"][-1] == 2048 and model.num_classes == 8
    before, after = source.state_dict(), model.state_dict()
    assert torch.equal(after["blocks.3.3.weight"], before["blocks.3.3.weight"])
    assert not torch.equal(after["blocks.5.3.weight"], before["blocks.5.3.weight"])


def test_init_keeps_the_classifier_when_the_labels_match(synth, tmp_path):
    from wavemel.train.config import TrainConfig
    from wavemel.train.finetune import build_model, resolve_init

    labels = [str(i) for i in range(3)]
    pth = _panns_file(tmp_path / "tiny.pth", _tiny(num_classes=3))
    assert _import(pth, tmp_path / "panns") == 0
    imported, _ = load_checkpoint(tmp_path / "panns")
    config = TrainConfig(model="cnn14", init=str(tmp_path / "panns"), data="d", out="o")
    config = resolve_init(config)
    model = build_model(config, labels)
    assert config.sample_rate == SR
    assert torch.equal(model.classifier.weight, imported.classifier.weight)
    with pytest.raises(WavemelError, match="--freeze 7"):
        build_model(config.replace(freeze_blocks=7), labels)
    with pytest.raises(WavemelError, match="cnn-audio cannot freeze"):
        build_model(TrainConfig(model="cnn-audio", size="tiny", freeze_blocks=1), labels)
    with pytest.raises(CheckpointError, match="holds a cnn14 model, not cnn-spec"):
        resolve_init(config.replace(model="cnn-spec"))
    with pytest.raises(WavemelError, match="--freeze needs --init"):
        TrainConfig(model="cnn14", data="d", out="o", freeze_blocks=2).check()
