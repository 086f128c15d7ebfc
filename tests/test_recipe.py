"""The training recipe's contracts across modules: fill, loss weights, the comb head's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wavemel.augment import Mixup, WaveformAugment
from wavemel.checkpoint import load_model, save_checkpoint
from wavemel.cli import main
from wavemel.data.splits import SplitSpec
from wavemel.evaluate import evaluate_run
from wavemel.models import create_model
from wavemel.models.cnn_comb import CnnComb
from wavemel.train import scoring
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
    original = scoring.predict_waveforms

    def spy(*args, **kwargs):
        seen.append(kwargs.get("fill", "replicate"))
        return original(*args, **kwargs)

    monkeypatch.setattr(scoring, "predict_waveforms", spy)
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


# --- cnn-comb's mean-feature ablation ---------------------------------------------------------


def _comb(**kwargs) -> CnnComb:
    return CnnComb(*_branches(), 3, hidden=16, dropout=0.1, **kwargs).eval()


def _branches():
    torch.manual_seed(0)
    audio = create_model("cnn-audio", 3, size="tiny", sample_rate=SR).eval()
    spec = create_model("cnn-spec", 3, size="tiny", sample_rate=SR).eval()
    return audio, spec


def test_mean_input_replaces_a_branch_by_its_training_mean(tmp_path):
    comb = _comb(feature_means=True)
    assert not comb.has_feature_means
    with pytest.raises(ValueError, match="feature means"):
        comb.mean_input = "audio"
    batches = [torch.randn(5, 4000), torch.randn(3, 4000)]
    assert comb.record_feature_means(iter(batches)) == 8
    audio, spec = comb.branch_features(torch.cat(batches))
    assert torch.allclose(comb.audio_feature_mean, audio.mean(dim=0), atol=1e-5)
    assert torch.allclose(comb.spec_feature_mean, spec.mean(dim=0), atol=1e-5)
    x = torch.randn(4, 4000)
    comb.mean_input = "spec"
    ablated_audio, ablated_spec = comb.branch_features(x)
    assert torch.equal(ablated_audio, comb.branch_features(x)[0])
    assert torch.allclose(ablated_spec, comb.spec_feature_mean.expand(4, -1))
    with pytest.raises(ValueError, match="two ablations"):
        comb.zero_input = "audio"
    comb.mean_input = None
    # The means travel in the checkpoint.
    save_checkpoint(tmp_path / "comb", comb, {"labels": ["a", "b", "c"], "sample_rate": SR})
    loaded, _ = load_model(tmp_path / "comb")
    assert loaded.has_feature_means
    assert torch.equal(loaded.spec_feature_mean, comb.spec_feature_mean)


def test_a_comb_saved_without_means_still_loads_and_refuses_mean_input(tmp_path):
    comb = _comb(feature_means=False)
    assert "audio_feature_mean" not in comb.state_dict()
    save_checkpoint(tmp_path / "old", comb, {"labels": ["a", "b", "c"], "sample_rate": SR})
    loaded, _ = load_model(tmp_path / "old")
    assert not loaded.has_feature_means
    with pytest.raises(ValueError, match="feature means"):
        loaded.mean_input = "spec"


# --- the held-out fold --------------------------------------------------------------------------


def test_evaluate_scores_the_held_out_fold_of_a_k_fold_run(synth, tmp_path, capsys):
    run = train(_config(synth, tmp_path, folds=3, fold=1, test_fold=0))
    spec = SplitSpec.from_settings(json.loads((run / "config.json").read_text()))
    index = spec.load_index()
    held = {str(r.path) for r in spec.heldout(index)}
    val = {str(r.path) for r in spec.split(index)[1]}
    assert held and not held & val
    heldout = evaluate_run(run, split="heldout", device="cpu")
    assert {c["path"] for c in heldout["clips"]} == held
    # "test" on data without a test split means the run's held-out fold, never its val fold.
    test = evaluate_run(run, split="test", device="cpu", out_dir=tmp_path / "t")
    assert {c["path"] for c in test["clips"]} == held
    assert main(["evaluate", str(run), "--split", "heldout", "--device", "cpu"]) == 0
    assert "on heldout" in capsys.readouterr().out
