"""Checkpoints: safetensors + JSON round trips, clear errors, no pickle anywhere."""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save

from wavemel.checkpoint import (
    FORMAT_VERSION,
    CheckpointInfo,
    flatten_state,
    load_checkpoint,
    load_model,
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


def _interrupted_save(monkeypatch, stem, model, meta) -> None:
    """``save_checkpoint`` killed between renaming the weights and renaming the JSON."""
    real_replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt  # like a kill: no cleanup code of the writer runs after it
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(stem, model, meta)
    monkeypatch.setattr(os, "replace", real_replace)


def test_kill_between_the_renames_still_loads_one_consistent_save(tmp_path, monkeypatch):
    # Fails on the code before the pair ids: epoch 2's weights were loaded with epoch 1's JSON.
    model = _build("cnn-audio").eval()
    stem = tmp_path / "run" / "best"
    save_checkpoint(stem, model, {"epoch": 1})
    torch.manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    _interrupted_save(monkeypatch, stem, model, {"epoch": 2})
    names = sorted(p.name for p in stem.parent.iterdir())
    assert any(name.startswith(".best.json.tmp-") for name in names), names

    loaded, meta = load_checkpoint(stem)
    assert meta["epoch"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # The loader finished the commit: the pending JSON is now best.json.
    assert sorted(p.name for p in stem.parent.iterdir()) == ["best.json", "best.safetensors"]


def test_mismatched_pair_without_pending_json_names_both_files(tmp_path, monkeypatch):
    model = _build("cnn-audio").eval()
    stem = tmp_path / "best"
    save_checkpoint(stem, model, {"epoch": 1})
    _interrupted_save(monkeypatch, stem, model, {"epoch": 2})
    for pending in tmp_path.glob(".best.json.tmp-*"):
        pending.unlink()
    with pytest.raises(CheckpointError, match="different saves") as info:
        load_checkpoint(stem)
    assert "best.json" in str(info.value) and "best.safetensors" in str(info.value)
    # The next save repairs the pair.
    save_checkpoint(stem, model, {"epoch": 3})
    assert load_checkpoint(stem)[1]["epoch"] == 3


def test_next_save_removes_temp_files_of_dead_writers_only(tmp_path, tiny_model):
    stem = tmp_path / "best"
    save_checkpoint(stem, tiny_model, {})
    dead_pid = 4_000_000  # above Linux's default pid_max: no such process
    while True:
        try:
            os.kill(dead_pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        dead_pid += 1
    stale = [
        tmp_path / f".best.json.tmp-{dead_pid}",
        tmp_path / f".best.safetensors.tmp-{dead_pid}",
    ]
    live = tmp_path / f".best.json.tmp-{os.getppid()}"  # a running writer's file stays
    for path in (*stale, live):
        path.write_bytes(b"partial")
    save_checkpoint(stem, tiny_model, {"again": True})
    assert not any(path.exists() for path in stale)
    assert live.exists()
    assert load_checkpoint(stem)[1]["again"] is True


def test_resume_state_pair_is_checked_too(tmp_path, monkeypatch):
    save_tensors(tmp_path / "state", {"x": torch.zeros(2)}, {"n": 1})
    real_replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_tensors(tmp_path / "state", {"x": torch.ones(2)}, {"n": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    tensors, meta = load_tensors(tmp_path / "state")
    assert meta["n"] == 2 and torch.equal(tensors["x"], torch.ones(2))


@pytest.mark.parametrize(
    ("dtype", "message"),
    [(torch.int8, "int8"), (torch.float16, "float16"), (torch.float64, "float64")],
)
def test_weights_of_another_dtype_are_refused_not_cast(tmp_path, tiny_model, dtype, message):
    # Fails on the old loader, which let load_state_dict cast them silently.
    stem = tmp_path / "ck"
    save_checkpoint(stem, tiny_model, {})
    json_path = tmp_path / "ck.json"
    pair_id = json.loads(json_path.read_text())["pair_id"]
    state = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in tiny_model.state_dict().items()
    }
    (tmp_path / "ck.safetensors").write_bytes(save(state, metadata={"pair_id": pair_id}))
    with pytest.raises(CheckpointError, match=rf"ck\.safetensors: tensor .* is torch\.{message}"):
        load_checkpoint(stem)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, tiny_model, bad):
    # Fails on the old loader: NaN weights loaded and the tagger printed nan scores.
    stem = tmp_path / "ck"
    save_checkpoint(stem, tiny_model, {})
    pair_id = json.loads((tmp_path / "ck.json").read_text())["pair_id"]
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["classifier.weight"][0, 0] = bad
    (tmp_path / "ck.safetensors").write_bytes(save(state, metadata={"pair_id": pair_id}))
    with pytest.raises(CheckpointError, match="'classifier.weight' holds NaN or infinite"):
        load_checkpoint(stem)


def test_checkpoint_info_is_typed_and_tagger_reads_it(tmp_path, tiny_model):
    meta = {
        "labels": list("abcde"),
        "sample_rate": SAMPLE_RATE,
        "input_seconds": 1,
        "label_prior": [1, 1, 2, 0, 0],
        "eval_fill": "pad",
    }
    save_checkpoint(tmp_path / "ck", tiny_model, meta)
    model, info = load_model(tmp_path / "ck")
    assert isinstance(info, CheckpointInfo)
    assert (info.sample_rate, info.input_seconds, info.input_samples) == (SAMPLE_RATE, 1.0, 8000)
    assert info.labels == list("abcde") and info.eval_fill == "pad"
    from wavemel.infer import Tagger

    tagger = Tagger.from_checkpoint(tmp_path / "ck", device="cpu")
    assert tagger.fill == "pad" and tagger.input_samples == 8000
    np.testing.assert_allclose(tagger.prior, [0.25, 0.25, 0.5, 0, 0])
