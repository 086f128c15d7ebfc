"""The training recipe's contracts across modules: fill, loss weights, the comb head's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wavemel.augment import Mixup, WaveformAugment
from wavemel.checkpoint import load_model
from wavemel.train import loop
from wavemel.train.config import TrainConfig
from wavemel.train.loop import TrainStep, train

SR = 8000


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from wavemel.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    return generate(root, clips_per_class=4, sample_rate=SR, min_seconds=0.2, max_seconds=0.8)


def _config(data: Path, tmp: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        model="cnn-audio",
        size="tiny",
        data=str(data),
        out=str(tmp / "run"),
        sample_rate=SR,
        input_seconds=0.5,
        epochs=1,
        batch_size=8,
        folds=3,
        workers=0,
        device="cpu",
        mixup_alpha=0.0,
        patience=0,
        cache_dir=str(tmp / "cache"),
    )
    return base.replace(**changes)


@pytest.mark.parametrize(("p_replicate", "expected"), [(0.0, "pad"), (0.5, "replicate")])
def test_trainer_saves_eval_fill_and_validates_with_it(
    synth, tmp_path, monkeypatch, p_replicate, expected
):
    seen = []
    original = loop.predict_waveforms

    def spy(*args, **kwargs):
        seen.append(kwargs.get("fill", "replicate"))
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "predict_waveforms", spy)
    run = train(_config(synth, tmp_path, p_replicate=p_replicate))
    assert json.loads((run / "best.json").read_text())["eval_fill"] == expected
    assert load_model(run / "best")[1].eval_fill == expected
    assert seen and set(seen) == {expected}


def test_train_step_mixes_loss_weights_like_targets():
    step = TrainStep(
        augment=WaveformAugment(20, shift=False),
        mixup=Mixup(0.4, generator=torch.Generator().manual_seed(0)),
        device=torch.device("cpu"),
        lr_schedule=lambda _: 1e-3,
    )
    waves = torch.randn(8, 20)
    targets = torch.eye(2).repeat(4, 1)  # class 0 verified, class 1 not
    weights = torch.tensor([1.0, 0.5] * 4)
    _, mixed_targets, mixed_weights = step.inputs(waves, torch.full((8,), 20), targets, weights)
    # With these targets a clip's weight is a function of its class shares.
    expected = mixed_targets[:, 0] * 1.0 + mixed_targets[:, 1] * 0.5
    assert torch.allclose(mixed_weights, expected)
    assert not torch.equal(mixed_weights, weights)
