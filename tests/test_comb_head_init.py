"""cnn-comb's head started from the branches' own dense layers (``--head-init branches``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wavemel.cli import main
from wavemel.errors import WavemelError
from wavemel.models import create_model
from wavemel.models.cnn_comb import CnnComb
from wavemel.train import loop
from wavemel.train.combine import combine
from wavemel.train.config import CombineConfig, TrainConfig

SR = 8000


def _trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random, non-trivial weights and BatchNorm statistics, as a trained branch has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model.eval()


def test_a_head_from_the_branches_outputs_the_sum_of_their_logits():
    audio = _trained_like(create_model("cnn-audio", 5, size="tiny", sample_rate=SR), 1)
    spec = _trained_like(create_model("cnn-spec", 5, size="tiny", sample_rate=SR), 2)
    hidden = audio.embedding[0].out_features + spec.embedding[0].out_features
    comb = CnnComb(audio, spec, 5, hidden=hidden, head_from_branches=True).eval()
    x = 0.1 * torch.randn(3, SR)
    with torch.no_grad():
        expected = audio(x) + spec(x)
        assert torch.allclose(comb(x), expected, rtol=1e-4, atol=1e-4)
        # A new head starts elsewhere: the equality is the warm start's doing.
        fresh = CnnComb(audio, spec, 5, hidden=hidden).eval()
        assert not torch.allclose(fresh(x), expected, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="hidden ="):
        CnnComb(audio, spec, 5, hidden=hidden + 1, head_from_branches=True)


@pytest.fixture(scope="module")
def branches(tmp_path_factory) -> tuple[Path, Path]:
    from wavemel.data.synthetic import generate

    tmp = tmp_path_factory.mktemp("branches")
    data = generate(tmp / "data", clips_per_class=5, sample_rate=SR, max_seconds=1.0)
    base = TrainConfig(
        model="cnn-audio", size="tiny", data=str(data), sample_rate=SR, input_seconds=0.5,
        epochs=1, batch_size=8, folds=3, workers=0, device="cpu", mixup_alpha=0.0, patience=0,
        cache_dir=str(tmp / "cache"),
    )  # fmt: skip
    audio = loop.train(base.replace(out=str(tmp / "audio")))
    spec = loop.train(base.replace(out=str(tmp / "spec"), model="cnn-spec"))
    return audio, spec


def test_combine_with_head_init_branches_trains_and_checks_the_width(branches, tmp_path, capsys):
    audio, spec = branches
    config = CombineConfig(
        audio_run=str(audio), spec_run=str(spec), out=str(tmp_path / "comb"), epochs=1,
        batch_size=8, workers=0, device="cpu", head_init="branches",
    )  # fmt: skip
    run = combine(config)
    assert (run / "best.safetensors").exists()
    assert (run / "config.json").read_text().count('"head_init": "branches"') == 1
    with pytest.raises(WavemelError, match="--head-init must be"):
        config.replace(head_init="warm").check()
    argv = [
        "combine", "--audio", str(audio), "--spec", str(spec), "--out", str(tmp_path / "bad"),
        "--head-init", "branches", "--hidden", "7", "--epochs", "1", "--device", "cpu",
        "--workers", "0",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--head-init branches needs the head as wide" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
