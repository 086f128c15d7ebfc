"""Checkpoints: safetensors + JSON round trips, clear errors, no pickle anywhere."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

from wavemel.checkpoint import (
    FORMAT_VERSION,
    flatten_state,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
    unflatten_state,
)
from wavemel.errors import CheckpointError
from wavemel.models import CnnComb, create_model, list_models

NUM_CLASSES = 5
SAMPLE_RATE = 8000


def _build(name: str) -> torch.nn.Module:
    if name == "cnn-comb":
        audio = create_model("cnn-audio", NUM_CLASSES, size="tiny", sample_rate=SAMPLE_RATE)
        spec = create_model("cnn-spec", NUM_CLASSES, size="tiny", sample_rate=SAMPLE_RATE)
        return CnnComb(audio, spec, NUM_CLASSES)
    return create_model(name, NUM_CLASSES, size="tiny", sample_rate=SAMPLE_RATE)


def _trained_ish(model: torch.nn.Module) -> torch.nn.Module:
    """Move BatchNorm statistics and weights away from their init so buffers matter too."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, SAMPLE_RATE))
    return model.eval()


@pytest.fixture
def tiny_model():
    return _trained_ish(_build("cnn-audio"))


def test_every_model_round_trips_with_identical_outputs(tmp_path):
    names = list_models()
    assert {"cnn-audio", "cnn-spec", "cnn-comb"} <= set(names)
    x = torch.randn(3, SAMPLE_RATE, generator=torch.Generator().manual_seed(1))
    for name in names:
        model = _trained_ish(_build(name))
        meta = {"labels": list("abcde"), "sample_rate": SAMPLE_RATE, "input_seconds": 1.0}
        json_path = save_checkpoint(tmp_path / name / "best", model, meta)
        loaded, loaded_meta = load_checkpoint(json_path)
        assert type(loaded) is type(model)
        assert not loaded.training
        assert loaded_meta["model"] == name == model.name
        assert loaded_meta["num_classes"] == NUM_CLASSES
        assert loaded_meta["format_version"] == FORMAT_VERSION
        assert loaded_meta["labels"] == list("abcde")
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_path_forms_and_no_pickle(tmp_path, tiny_model, monkeypatch):
    run = tmp_path / "run"
    save_checkpoint(run / "best", tiny_model, {"labels": list("abcde")})
    assert sorted(p.name for p in run.iterdir()) == ["best.json", "best.safetensors"]

    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    x = torch.randn(2, SAMPLE_RATE)
    with torch.no_grad():
        expected = tiny_model(x)
    for path in (run, run / "best.json", run / "best.safetensors", run / "best"):
        model, meta = load_checkpoint(path)
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        assert meta["labels"] == list("abcde")


def test_clear_errors_name_the_file(tmp_path, tiny_model):
    stem = tmp_path / "ck"
    save_checkpoint(stem, tiny_model, {})
    json_path = tmp_path / "ck.json"
    good = json.loads(json_path.read_text())

    with pytest.raises(CheckpointError, match="no best.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="nothing.json"):
        load_checkpoint(tmp_path / "nothing.json")

    json_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"ck\.json: corrupt JSON"):
        load_checkpoint(stem)

    json_path.write_text(json.dumps({k: v for k, v in good.items() if k != "model_config"}))
    with pytest.raises(CheckpointError, match="missing key.*model_config"):
        load_checkpoint(stem)

    json_path.write_text(json.dumps({**good, "model": "cnn-nope"}))
    with pytest.raises(CheckpointError, match="cnn-nope"):
        load_checkpoint(stem)

    json_path.write_text(json.dumps({**good, "num_classes": NUM_CLASSES + 2}))
    with pytest.raises(CheckpointError, match=r"ck\.safetensors.*shape mismatch"):
        load_checkpoint(stem)

    json_path.write_text(json.dumps({**good, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(stem)

    json_path.write_text(json.dumps(good))
    (tmp_path / "ck.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(CheckpointError, match=r"ck\.safetensors: corrupt"):
        load_checkpoint(stem)
    (tmp_path / "ck.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_checkpoint(stem)


def test_bad_metadata_writes_nothing(tmp_path, tiny_model):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "ck", tiny_model, {"oops": object()})
    assert list(tmp_path.iterdir()) == []


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 3)
        self.b = torch.nn.Linear(3, 3)
        self.b.weight = self.a.weight  # shared storage under two names


def test_shared_tensors_are_saved(tmp_path):
    model = Tied()
    save_tensors(tmp_path / "tied", model.state_dict(), {"note": "tied"})
    tensors, meta = load_tensors(tmp_path / "tied")
    assert meta["note"] == "tied" and meta["format_version"] == FORMAT_VERSION
    fresh = Tied()
    fresh.load_state_dict(tensors)
    assert torch.equal(fresh.a.weight, model.a.weight)


def test_resume_state_round_trip_without_pickle(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    data = torch.randn(16, 4)
    for _ in range(3):
        optimizer.zero_grad()
        net(data).square().mean().backward()
        optimizer.step()
        scheduler.step()
    state = {
        "epoch": 3,
        "best": float("-inf"),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
    }
    tensors, skeleton = flatten_state(state)
    save_tensors(tmp_path / "state", tensors, {"state": skeleton})

    monkeypatch.setattr(pickle, "loads", None)
    monkeypatch.setattr(torch, "load", None)
    loaded_tensors, meta = load_tensors(tmp_path / "state")
    restored = unflatten_state(loaded_tensors, meta["state"])
    assert restored["epoch"] == 3 and restored["best"] == float("-inf")
    assert restored["python_rng"] == random.getstate()
    np_state = restored["numpy_rng"]
    assert np_state[0] == "MT19937" and np_state[1].dtype == np.uint32
    np.testing.assert_array_equal(np_state[1], np.random.get_state()[1])
    assert torch.equal(restored["torch_rng"], torch.get_rng_state())
    # Int keys of the optimizer state survive, and a step from the restored optimizer equals a
    # step from the original.
    assert set(restored["optimizer"]["state"]) == set(optimizer.state_dict()["state"])
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    twin.load_state_dict(net.state_dict())
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    twin_optimizer.load_state_dict(restored["optimizer"])
    for model, opt in ((net, optimizer), (twin, twin_optimizer)):
        opt.zero_grad()
        model(data).square().mean().backward()
        opt.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)
