"""Training loop, configs, run-folder safety, clip weights and combine checks (tiny, on CPU)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wavemel.cli import main
from wavemel.errors import CheckpointError, WavemelError
from wavemel.train.combine import combine
from wavemel.train.config import CombineConfig, TrainConfig, layer_config
from wavemel.train.loader import WindowDataset, collate_windows, prepare_data, soft_targets
from wavemel.train.loop import lr_at_step, soft_cross_entropy, train

SR = 8000


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from wavemel.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    return generate(root, clips_per_class=6, sample_rate=SR, min_seconds=0.3, max_seconds=1.2)


def _config(data: Path, tmp: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        model="cnn-audio",
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
        mixup_alpha=0.0,
        patience=0,
        cache_dir=str(tmp / "cache"),
    )
    return base.replace(**changes)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- pure pieces ------------------------------------------------------------------------------


def test_soft_cross_entropy_matches_manual_and_applies_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    logp = torch.log_softmax(logits, dim=1)
    per_example = torch.stack([-logp[0, 0], -(0.5 * logp[1, 1] + 0.5 * logp[1, 2])])
    assert torch.allclose(soft_cross_entropy(logits, targets), per_example.mean())
    weights = torch.tensor([1.0, 0.25])
    weighted = soft_cross_entropy(logits, targets, weights)
    assert torch.allclose(weighted, (per_example * weights).mean())
    # Down-weighting an example lowers the loss (not normalised away).
    assert weighted < soft_cross_entropy(logits, targets)


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at_step(s, 100, 10, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(b <= a for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 1e-6
    assert lr_at_step(100, 100, 0, 1.0) == pytest.approx(0.0)


def test_soft_targets_split_multi_label_mass():
    target = soft_targets(("b", "c"), {"a": 0, "b": 1, "c": 2})
    assert target.tolist() == [0.0, 0.5, 0.5]


# --- config layering ----------------------------------------------------------------------------


def test_config_json_round_trip_and_layering(tmp_path):
    cfg = TrainConfig(model="cnn-spec", data="/d", out="/o", epochs=7, hop_seconds=0.5)
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    (tmp_path / "file.json").write_text(json.dumps({"epochs": 3, "lr": 0.01, "size": "tiny"}))
    layered = layer_config(TrainConfig, tmp_path / "file.json", {"epochs": 9, "lr": None})
    assert (layered.epochs, layered.lr, layered.size) == (9, 0.01, "tiny")  # flag > file > default
    assert layered.batch_size == TrainConfig().batch_size
    (tmp_path / "typo.json").write_text(json.dumps({"epoch": 3}))
    with pytest.raises(WavemelError, match="unknown setting.*epoch"):
        layer_config(TrainConfig, tmp_path / "typo.json")


def test_config_check_rejects_bad_settings():
    with pytest.raises(WavemelError, match="--model"):
        TrainConfig(model="cnn-comb", data="d", out="o").check()
    with pytest.raises(WavemelError, match="--fold"):
        TrainConfig(data="d", out="o", folds=3, fold=3).check()
    with pytest.raises(WavemelError, match="spec"):
        TrainConfig(data="d", out="o", model="cnn-audio", mixup_on="spec").check()


# --- data ---------------------------------------------------------------------------------------


def test_unverified_clips_get_their_weight(synth, tmp_path):
    files = sorted(synth.rglob("*.wav"))
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "manually_verified"])
        for i, path in enumerate(files):
            writer.writerow([str(path), path.parent.name, i % 2])
    cfg = _config(manifest, tmp_path, format="csv", unverified_weight=0.3)
    data = prepare_data(cfg, progress=False)
    store_paths = [Path(p).name for p in data.store.paths]
    verified = {path.name: i % 2 == 1 for i, path in enumerate(files)}
    weights = {store_paths[item.index]: item.weight for item in data.train + data.val}
    assert set(weights.values()) == {1.0, 0.3}
    for name, weight in weights.items():
        assert weight == (1.0 if verified[name] else 0.3)
    # ... and reach the batches the loss sees.
    dataset = WindowDataset(data.store, data.train, 5000, seed=0)
    dataset.set_epoch(0)
    waves, lengths, targets, batch_weights = collate_windows([dataset[i] for i in range(6)])
    assert waves.shape == (6, int(lengths.max()))
    assert targets.shape == (6, len(data.labels))
    expected = [data.train[i].weight for i in range(6)]
    assert batch_weights.tolist() == pytest.approx(expected)


def test_windows_depend_only_on_seed_and_epoch(synth, tmp_path):
    data = prepare_data(_config(synth, tmp_path), progress=False)
    a = WindowDataset(data.store, data.train, 2000, seed=1)
    b = WindowDataset(data.store, data.train, 2000, seed=1)
    a.set_epoch(3)
    b.set_epoch(2)
    b.set_epoch(3)
    assert np.array_equal(a.starts, b.starts)
    a.set_epoch(4)
    assert not np.array_equal(a.starts, b.starts)
    for i in range(len(a)):
        wave, _, _ = a[i]
        assert len(wave) == min(2000, data.store.length(data.train[i].index))


# --- training -----------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_the_run_folder(synth, tmp_path):
    cfg = _config(synth, tmp_path, epochs=5, lr=3e-3, warmup_epochs=0.5)
    run = train(cfg)
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
    assert rows[-1]["train_loss"] < math.log(8)  # below the uniform-guess loss
    for name in ("best.json", "best.safetensors", "last.json", "last.safetensors", "config.json"):
        assert (run / name).exists(), name
    meta = json.loads((run / "best.json").read_text())
    assert meta["model"] == "cnn-audio"
    assert meta["sample_rate"] == SR and meta["input_seconds"] == 0.5
    assert len(meta["labels"]) == 8 and len(meta["label_prior"]) == 8
    assert meta["label_prior"] == pytest.approx([1 / 8] * 8, abs=0.05)
    best = max(r["val_map3"] for r in rows)
    assert meta["metrics"]["val_map3"] == best
    assert meta["train_config"]["data"] == str(synth)
    assert TrainConfig.load(run / "config.json") == cfg.replace(force=False, resume=False)


def test_existing_run_folder_needs_force(synth, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 99}\n')
    args = [
        "train", "--model", "cnn-spec", "--size", "tiny", "--data", str(synth), "--out", str(out),
        "--sample-rate", str(SR), "--input-seconds", "0.5", "--epochs", "1", "--batch-size", "8",
        "--folds", "3", "--workers", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "c"),
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "wavemel: error:" in err and "--force" in err and "--resume" in err
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 99}\n'  # untouched

    assert main(args + ["--force"]) == 0
    assert [r["epoch"] for r in _metrics(out)] == [1]  # old log replaced
    assert json.loads((out / "best.json").read_text())["model"] == "cnn-spec"

    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("x")
    assert main(args[:8] + [str(stranger)] + args[9:] + ["--force"]) == 2
    assert "not a wavemel run folder" in capsys.readouterr().err
    assert (stranger / "thesis.tex").exists()


def test_resume_without_state_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "resume" in capsys.readouterr().err


# --- combine ------------------------------------------------------------------------------------


def _fake_branch(run: Path, name: str, labels: list[str], **train_changes) -> Path:
    from wavemel.checkpoint import save_checkpoint
    from wavemel.models import create_model

    model = create_model(name, len(labels), size="tiny", sample_rate=SR)
    train_config = TrainConfig(model=name, data="/data/x", out=str(run), sample_rate=SR)
    meta = {
        "labels": labels,
        "sample_rate": SR,
        "input_seconds": 1.0,
        "train_config": train_config.replace(**train_changes).to_dict(),
    }
    save_checkpoint(run / "best", model, meta)
    return run


@pytest.mark.parametrize(
    ("spec_changes", "spec_labels", "message"),
    [
        ({"fold": 2}, ["a", "b", "c"], "differ in fold"),
        ({"seed": 5}, ["a", "b", "c"], "differ in seed"),
        ({"data": "/data/other"}, ["a", "b", "c"], "differ in data"),
        ({}, ["a", "b", "d"], "differ in labels"),
    ],
)
def test_combine_refuses_mismatched_runs(tmp_path, spec_changes, spec_labels, message):
    audio = _fake_branch(tmp_path / "a", "cnn-audio", ["a", "b", "c"])
    spec = _fake_branch(tmp_path / "s", "cnn-spec", spec_labels, **spec_changes)
    config = CombineConfig(audio_run=str(audio), spec_run=str(spec), out=str(tmp_path / "c"))
    with pytest.raises(CheckpointError, match=message):
        combine(config)
    assert not (tmp_path / "c").exists()


def test_combine_refuses_branches_in_the_wrong_slots(tmp_path):
    audio = _fake_branch(tmp_path / "a", "cnn-audio", ["a", "b", "c"])
    spec = _fake_branch(tmp_path / "s", "cnn-spec", ["a", "b", "c"])
    swapped = CombineConfig(audio_run=str(spec), spec_run=str(audio), out=str(tmp_path / "c"))
    with pytest.raises(CheckpointError, match=r"--spec must be a log-mel .*not cnn-audio"):
        combine(swapped)
    assert not (tmp_path / "c").exists()


def test_combine_trains_only_the_head(synth, tmp_path):
    audio = train(_config(synth, tmp_path, out=str(tmp_path / "a"), epochs=1))
    spec = train(_config(synth, tmp_path, out=str(tmp_path / "s"), epochs=1, model="cnn-spec"))
    out = combine(
        CombineConfig(
            audio_run=str(audio),
            spec_run=str(spec),
            out=str(tmp_path / "c"),
            epochs=2,
            batch_size=8,
            hidden=16,
            workers=0,
            device="cpu",
        )
    )
    from wavemel.checkpoint import load_checkpoint

    comb, meta = load_checkpoint(out)
    assert meta["model"] == "cnn-comb"
    assert meta["train_config"]["fold"] == 0 and meta["train_config"]["cache_dir"]
    assert len(_metrics(out)) == 2
    # The frozen branches kept the trained branch weights exactly.
    branch, _ = load_checkpoint(audio)
    for name, tensor in branch.state_dict().items():
        if name in comb.audio.state_dict():
            assert torch.equal(comb.audio.state_dict()[name], tensor), name

    # --resume of a finished combine run reads its own config.json (branches, head, epochs) and
    # has nothing left to do.
    before = (out / "metrics.jsonl").read_text()
    again = combine(CombineConfig(out=str(out), resume=True, device="cpu", workers=0))
    assert again == out and (out / "metrics.jsonl").read_text() == before


def test_resume_config_keeps_the_saved_run_and_changes_only_runtime_settings(tmp_path):
    from wavemel.train.config import resume_config

    saved = TrainConfig(data="/data/x", out=str(tmp_path), epochs=7, lr=0.01, workers=3)
    saved.save(tmp_path / "config.json")
    asked = TrainConfig(out=str(tmp_path), resume=True, epochs=99, device="cpu", workers=0)
    resolved = resume_config(asked)
    assert resolved == saved.replace(resume=True, device="cpu", workers=0)
    with pytest.raises(WavemelError, match="--out"):
        resume_config(TrainConfig(resume=True))
    with pytest.raises(CheckpointError, match="no config.json"):
        resume_config(CombineConfig(out=str(tmp_path / "none"), resume=True))


def test_bad_and_empty_training_clips_are_left_out_with_one_warning(synth, tmp_path):
    import shutil

    import soundfile as sf

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    sf.write(data / "chirp" / "zz_empty.wav", np.zeros(0, dtype=np.float32), SR)
    (data / "chirp" / "zz_broken.wav").write_bytes(b"RIFF not really a wave file")
    cfg = _config(data, tmp_path, val_split=None, folds=2)
    with pytest.warns(UserWarning, match="left out") as caught:
        prepared = prepare_data(cfg, progress=False)
    left_out = [w for w in caught if "left out" in str(w.message)]
    assert len(left_out) == 1
    val_names = {Path(prepared.store.paths[item.index]).name for item in prepared.val}
    for bad in ("zz_empty.wav", "zz_broken.wav"):
        # A bad training clip is named in the warning; a bad validation clip stays (uniform).
        in_warning = bad in str(left_out[0].message)
        assert in_warning != (bad in val_names), bad
        assert in_warning == any(bad in line for line in prepared.excluded)
    used = {Path(prepared.store.paths[item.index]).name for item in prepared.train}
    assert not used & {"zz_empty.wav", "zz_broken.wav"}
    for item in prepared.train:
        assert prepared.store.length(item.index) > 0


def test_package_exports_the_combine_function_even_after_its_module_is_imported():
    import wavemel.train
    import wavemel.train.combine  # noqa: F401  (would rebind the package attribute if unguarded)
    from wavemel.train import combine as exported

    assert exported is combine and callable(exported)
    assert wavemel.train.train.__module__ == "wavemel.train.loop"


def test_run_config_records_absolute_paths(synth, tmp_path, monkeypatch):
    # evaluate, --resume and combine read config.json back, maybe from another directory.
    monkeypatch.chdir(synth.parent)
    run = train(_config(Path(synth.name), tmp_path, epochs=1, cache_dir="cache"))
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"] == str(synth.resolve())
    assert saved["cache_dir"] == str((synth.parent / "cache").resolve())


@pytest.mark.parametrize("model", ["cnn-audio", "cnn-spec"])
def test_input_shorter_than_the_model_minimum_is_a_one_line_error(synth, tmp_path, model):
    with pytest.raises(WavemelError, match="--input-seconds .* needs at least"):
        train(_config(synth, tmp_path, model=model, input_seconds=0.002))


def test_manifest_rows_without_a_file_are_named_in_a_warning(synth, tmp_path):
    manifest = tmp_path / "manifest.csv"
    rows = [(str(p), p.parent.name) for p in sorted(synth.glob("*/*.wav"))]
    rows.append((str(synth / "chirp" / "zz_typo.wav"), "chirp"))
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    cfg = _config(manifest, tmp_path, folds=2)
    with pytest.warns(UserWarning, match="zz_typo.wav"):
        prepared = prepare_data(cfg, progress=False)
    assert len(prepared.train) + len(prepared.val) == len(rows) - 1


def test_val_every_validates_every_nth_and_the_last_epoch_and_picks_best_among_them(
    synth, tmp_path
):
    run = train(_config(synth, tmp_path, epochs=5, val_every=2))
    records = _metrics(run)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    validated = [r["epoch"] for r in records if "val_map3" in r]
    assert validated == [2, 4, 5]
    best = max((r for r in records if "val_map3" in r), key=lambda r: r["val_map3"])
    finished = json.loads((run / "finished.json").read_text())
    assert finished["best_epoch"] == best["epoch"]
    assert finished["best_val_map3"] == pytest.approx(best["val_map3"])
    with pytest.raises(WavemelError, match="--val-every"):
        _config(synth, tmp_path, val_every=0).check()
