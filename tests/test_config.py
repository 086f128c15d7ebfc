"""Run configs: every field's type checked from its annotation, old run folders still load."""

from __future__ import annotations

import dataclasses
import json

import pytest

from wavemel.errors import CheckpointError, WavemelError
from wavemel.train.config import (
    CombineConfig,
    TrainConfig,
    load_config_file,
    resume_config,
)


@pytest.mark.parametrize(
    ("field", "value", "wanted"),
    [
        ("epochs", "30", "an integer"),
        ("epochs", 3.0, "an integer"),
        ("epochs", True, "an integer"),
        ("lr", "0.001", "a finite number"),
        ("lr", float("nan"), "a finite number"),
        ("lr", float("inf"), "a finite number"),
        ("lr", False, "a finite number"),
        ("model", 5, "a string"),
        ("amp", 1, "true or false"),
        ("hop_seconds", "0.5", "a finite number or null"),
        ("format", ["csv"], "a string or null"),
    ],
)
def test_a_field_of_the_wrong_type_is_one_line_naming_file_and_field(
    tmp_path, field, value, wanted
):
    # Fails on the old from_dict, which passed any value on to the dataclass unchecked.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TrainConfig().to_dict(), field: value}))
    with pytest.raises(WavemelError) as info:
        TrainConfig.load(path)
    assert str(info.value).startswith(f"{path}: field {field!r} must be {wanted}, got ")
    assert "\n" not in str(info.value)


def test_optional_fields_accept_null_and_numbers_accept_integers():
    values = {"hop_seconds": None, "lr": 1, "folds": 3, "format": None}
    config = TrainConfig.from_dict(values)
    assert (config.hop_seconds, config.lr, config.folds) == (None, 1, 3)
    assert CombineConfig.from_dict({"folds": None, "seed": None}).folds is None


def test_a_config_file_of_either_kind_is_type_checked(tmp_path):
    # evaluate reads RUN/config.json as a dict; it may come from train or from combine.
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CombineConfig(audio_run="a", spec_run="b").to_dict()))
    assert load_config_file(path)["folds"] is None  # None is valid for a combined run
    path.write_text(json.dumps({"fold": "1"}))
    with pytest.raises(WavemelError, match="field 'fold' must be an integer"):
        load_config_file(path)


def test_resume_names_the_saved_file_for_out_of_range_settings(tmp_path):
    # The old message said "--epochs must be at least 1", naming a flag the user never gave.
    TrainConfig(data="d", out=str(tmp_path), epochs=0).save(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json: --epochs must be at least 1"):
        resume_config(TrainConfig(out=str(tmp_path), resume=True))


def test_shared_fields_have_one_definition_and_the_json_format_is_unchanged():
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    combine = {f.name: f for f in dataclasses.fields(CombineConfig)}
    same = [n for n in train if n in combine and train[n].default == combine[n].default]
    assert len(same) >= 22
    # A config.json as main wrote it before the refactor (sorted keys, every field) still loads.
    old = {
        "amp": True, "batch_size": 32, "cache_dir": None, "channels_last": True,
        "compile": False, "data": "/d", "device": "auto", "epochs": 30, "fold": 0, "folds": 5,
        "force": False, "format": None, "group_field": None, "hop_seconds": None,
        "input_seconds": 2.0, "label_pattern": None, "log_every": 10, "lr": 0.001,
        "mixup_alpha": 0.4, "mixup_on": "wave", "model": "cnn-audio", "out": "/o",
        "p_replicate": 0.5, "patience": 10, "pin_memory": True, "resume": False,
        "sample_rate": 16000, "seed": 0, "size": "small", "unverified_weight": 1.0,
        "val_split": None, "verified_weight": 1.0, "warmup_epochs": 1.0,
        "weight_decay": 0.01, "workers": 2,
    }  # fmt: skip
    config = TrainConfig.from_dict(old)
    # Fields added since then (fine-tuning, the held-out fold, multi-label, log-mel masking,
    # ...) take their defaults; the rest is unchanged.
    loaded = config.to_dict()
    assert {k: loaded[k] for k in old} == old
    defaults = TrainConfig().to_dict()
    assert {k: loaded[k] for k in set(loaded) - set(old)} == {
        k: defaults[k] for k in set(loaded) - set(old)
    }
    assert {"init", "freeze_blocks", "test_fold", "multi_label", "val_every", "ema_decay"} <= set(
        loaded
    )
