"""Log-mel masking in training: settings, where it sits in the step, a short run (tiny, CPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from wavemel.augment import SpecMask
from wavemel.checkpoint import load_model
from wavemel.cli import main
from wavemel.errors import WavemelError
from wavemel.models import create_model
from wavemel.train.config import TrainConfig, resume_config
from wavemel.train.distributed import DistContext
from wavemel.train.loop import _build_step, _SpectrogramInput, seed_everything, train

SR = 8000
MASKS = {"spec_freq_masks": 2, "spec_freq_width": 6, "spec_time_masks": 2, "spec_time_width": 0.2}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from wavemel.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    return generate(root, clips_per_class=4, sample_rate=SR, min_seconds=0.3, max_seconds=1.0)


def _config(data: Path, tmp: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        model="cnn-spec",
        size="tiny",
        data=str(data),
        out=str(tmp / "run"),
        sample_rate=SR,
        input_seconds=0.5,
        epochs=2,
        batch_size=8,
        folds=3,
        workers=0,
        device="cpu",
        patience=0,
        cache_dir=str(tmp / "cache"),
        **MASKS,
    )
    return base.replace(**changes)


# --- settings -----------------------------------------------------------------------------------


def test_defaults_mask_nothing_and_keep_the_step_as_it_was():
    config = TrainConfig(data="d", out="o", model="cnn-spec")
    config.check()
    assert not config.spec_masking
    step = _build_step(create_model("cnn-spec", 3, size="tiny"), config, DistContext(), 1)
    assert step.spec_mask is None and step.spectrogram is None  # wave mixup inside the model


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"spec_freq_masks": -1}, "--spec-freq-masks must be >= 0"),
        ({"spec_time_masks": -2}, "--spec-time-masks must be >= 0"),
        ({"spec_freq_width": 0}, "--spec-freq-width must be at least 1"),
        ({"spec_time_width": 0.0}, r"--spec-time-width must be .* in \(0, 1\]"),
        ({"spec_time_width": 1.5}, r"--spec-time-width must be .* in \(0, 1\]"),
        ({"model": "cnn-audio"}, "need --model cnn-spec or cnn14 .cnn-audio has no log-mel"),
    ],
)
def test_bad_settings_are_one_line_errors(changes, message):
    config = TrainConfig(data="d", out="o", model="cnn-spec", **MASKS).replace(**changes)
    with pytest.raises(WavemelError, match=message) as caught:
        config.check()
    assert "\n" not in str(caught.value)


def test_cnn_audio_with_masks_is_a_one_line_cli_error_before_anything_is_written(
    synth, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["train", "--model", "cnn-audio", "--data", str(synth), "--out", str(out)]
    assert main([*argv, "--spec-time-masks", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavemel: error: --spec-freq-masks / --spec-time-masks need --model")
    assert err.count("\n") == 1
    assert not out.exists()


def test_frequency_masks_wider_than_the_mel_bands_fail_before_the_run_starts(synth, tmp_path):
    config = _config(synth, tmp_path, spec_freq_width=33)  # tiny cnn-spec has 32 bands
    with pytest.raises(WavemelError, match="--spec-freq-width 33: more than the model's 32 mel"):
        train(config)
    assert not (Path(config.out) / "config.json").exists()


# --- the step -----------------------------------------------------------------------------------


def _batch() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(8, 5000, generator=generator)
    return waves, torch.full((8,), 5000), torch.eye(4)[torch.arange(8) % 4], torch.ones(8)


@pytest.mark.parametrize("name", ["cnn-spec", "cnn14"])
@pytest.mark.parametrize("mixup_on", ["wave", "spec"])
def test_masks_are_the_last_step_before_the_network_with_both_mixup_modes(name, mixup_on):
    model = create_model(name, 4, size="tiny", sample_rate=SR)
    config = TrainConfig(data="d", out="o", model=name, sample_rate=SR, mixup_on=mixup_on, **MASKS)
    step = _build_step(model, config, DistContext(), 1)
    assert isinstance(step.spec_mask, SpecMask) and step.spectrogram is not None
    waves, lengths, targets, weights = _batch()
    seed_everything(3)
    x, mixed_targets, _ = step.inputs(waves, lengths, targets, weights)

    # The same draws by hand, in the documented order: mixup on the waveforms before the front
    # end, or on the log-mels after it; the masks last, on the mixture.
    seed_everything(3)
    y = step.augment(waves, lengths)
    if mixup_on == "wave":
        y, expected_targets, _ = step.mixup(y, targets, weights)
        y = model.spectrogram(y)
    else:
        y, expected_targets, _ = step.mixup(model.spectrogram(y), targets, weights)
    unmasked = y
    y = step.spec_mask(y)
    torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(mixed_targets, expected_targets, rtol=0, atol=0)
    # The masks really hide something (filled with each mixture's own mean) ...
    changed = x != unmasked
    assert changed.any()
    means = unmasked.mean(dim=(1, 2, 3))
    for b in range(len(x)):
        torch.testing.assert_close(x[b][changed[b]], means[b].expand(int(changed[b].sum())))
    # ... and the wrapped network takes them as fit() wraps it.
    assert _SpectrogramInput(model)(x).shape == (8, 4)


def test_the_step_without_masks_mixes_log_mels_as_before():
    model = create_model("cnn-spec", 4, size="tiny", sample_rate=SR)
    config = TrainConfig(data="d", out="o", model="cnn-spec", sample_rate=SR, mixup_on="spec")
    step = _build_step(model, config, DistContext(), 1)
    assert step.spec_mask is None and not step.mix_waveforms
    waves, lengths, targets, weights = _batch()
    seed_everything(4)
    x, _, _ = step.inputs(waves, lengths, targets, weights)
    seed_everything(4)
    expected, _, _ = step.mixup(model.spectrogram(step.augment(waves, lengths)), targets, weights)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


# --- a short run --------------------------------------------------------------------------------


@pytest.mark.parametrize("mixup_on", ["wave", "spec"])
def test_short_fit_masks_every_training_batch_and_its_config_round_trips(
    synth, tmp_path, monkeypatch, capsys, mixup_on
):
    calls = []
    original = SpecMask.forward

    def spy(self, spec):
        calls.append((self.training, torch.is_grad_enabled()))
        return original(self, spec)

    monkeypatch.setattr(SpecMask, "forward", spy)
    config = _config(synth, tmp_path, mixup_on=mixup_on)
    run = train(config)
    steps = int(re.search(r"(\d+) steps/epoch", capsys.readouterr().out).group(1))
    # Once per training batch, in train mode and without gradients; never in validation.
    assert calls == [(True, False)] * (steps * config.epochs)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)

    saved = TrainConfig.load(run / "config.json")
    assert saved == config.replace(force=False, resume=False)
    assert {k: getattr(saved, k) for k in MASKS} == MASKS
    resumed = resume_config(TrainConfig(out=str(run), resume=True, device="cpu"))
    assert {k: getattr(resumed, k) for k in MASKS} == MASKS
    model, info = load_model(run / "best")
    assert {k: info.meta["train_config"][k] for k in MASKS} == MASKS
    # Inference never masks: the same clip scores the same twice.
    model.eval()
    clip = torch.randn(2, config.input_samples, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(clip), model(clip), rtol=0, atol=0)
