"""cnn-comb's optional end-to-end fine-tune after its head (tiny models, synthetic data, CPU)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wavemel.augment import eval_fill_for
from wavemel.checkpoint import load_checkpoint
from wavemel.cli import main
from wavemel.errors import WavemelError
from wavemel.train import loop
from wavemel.train.combine import combine
from wavemel.train.config import CombineConfig, TrainConfig
from wavemel.train.loader import prepare_data

SR = 8000
# `wavemel.train.combine` is also the name of the function the package exports.
combine_module = importlib.import_module("wavemel.train.combine")
HEAD_EPOCHS = 2


@pytest.fixture(scope="module")
def branches(tmp_path_factory) -> tuple[Path, Path]:
    """A cnn-audio and a cnn-spec run on the same split (trained once for the module)."""
    from wavemel.data.synthetic import generate

    tmp = tmp_path_factory.mktemp("branches")
    data = generate(tmp / "data", clips_per_class=6, sample_rate=SR, max_seconds=1.0)
    base = TrainConfig(
        model="cnn-audio",
        size="tiny",
        data=str(data),
        sample_rate=SR,
        input_seconds=0.5,
        epochs=2,
        batch_size=8,
        folds=3,
        lr=3e-3,
        workers=0,
        device="cpu",
        mixup_alpha=0.0,
        patience=0,
        cache_dir=str(tmp / "cache"),
    )
    audio = loop.train(base.replace(out=str(tmp / "audio")))
    spec = loop.train(base.replace(out=str(tmp / "spec"), model="cnn-spec"))
    return audio, spec


def _config(branches: tuple[Path, Path], out: Path, **changes) -> CombineConfig:
    audio, spec = branches
    base = CombineConfig(
        audio_run=str(audio),
        spec_run=str(spec),
        out=str(out),
        epochs=HEAD_EPOCHS,
        batch_size=8,
        hidden=16,
        lr=3e-3,
        patience=0,
        workers=0,
        device="cpu",
    )
    return base.replace(**changes)


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")  # wall time is the only thing allowed to differ
    return rows


def _tensors(stem: Path) -> dict[str, torch.Tensor]:
    return load_file(str(stem.with_suffix(".safetensors")))


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _branch_differences(comb: torch.nn.Module, branches: tuple[Path, Path]) -> list[str]:
    """Names of the comb's branch tensors that differ from the source runs' best weights."""
    changed = []
    for slot, run in zip(("audio", "spec"), branches):
        source, _ = load_checkpoint(run)
        mine = getattr(comb, slot).state_dict()
        for name, tensor in source.state_dict().items():
            if name in mine and not torch.equal(mine[name], tensor):
                changed.append(f"{slot}.{name}")
    return changed


def _folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def head_only(branches, tmp_path_factory) -> Path:
    """The comb trained the poster's way (no fine-tune), for comparisons."""
    return combine(_config(branches, tmp_path_factory.mktemp("head") / "comb"))


def test_finetune_settings_are_checked():
    with pytest.raises(WavemelError, match="--finetune-epochs must be >= 0"):
        CombineConfig(audio_run="a", spec_run="s", out="o", finetune_epochs=-1).check()
    with pytest.raises(WavemelError, match="--finetune-lr must be positive"):
        CombineConfig(audio_run="a", spec_run="s", out="o", finetune_lr=0.0).check()


def test_without_finetune_epochs_the_branches_stay_the_source_weights(
    branches, head_only, tmp_path
):
    rows = _metrics(head_only)
    assert [row["stage"] for row in rows] == ["head"] * HEAD_EPOCHS
    comb, meta = load_checkpoint(head_only / "last")
    assert meta["train_config"]["finetune_epochs"] == 0
    assert _branch_differences(comb, branches) == []
    # finetune_lr (and the BatchNorm choice) only matter once there are fine-tune epochs.
    other = combine(_config(branches, tmp_path / "comb", finetune_lr=5.0, finetune_freeze_bn=True))
    assert _metrics(other) == rows
    for stem in ("best", "last"):
        _assert_same_tensors(_tensors(other / stem), _tensors(head_only / stem))


def test_finetune_trains_the_branches_and_records_its_stage(branches, head_only, tmp_path):
    before = [_folder_digest(run) for run in branches]
    out = tmp_path / "comb"
    args = ["combine", "--audio", str(branches[0]), "--spec", str(branches[1])]
    args += ["--out", str(out), "--epochs", str(HEAD_EPOCHS), "--batch-size", "8"]
    args += ["--hidden", "16", "--lr", "3e-3", "--patience", "0", "--workers", "0"]
    args += ["--device", "cpu", "--finetune-epochs", "2", "--finetune-lr", "1e-3"]
    assert main(args) == 0

    rows = _metrics(out)
    assert [row["stage"] for row in rows] == ["head"] * HEAD_EPOCHS + ["finetune"] * 2
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    # The head stage is the head-only run, epoch for epoch.
    assert rows[:HEAD_EPOCHS] == _metrics(head_only)
    comb, meta = load_checkpoint(out / "last")
    assert meta["metrics"]["stage"] == "finetune" and meta["metrics"]["epoch"] == 4
    assert meta["train_config"]["finetune_epochs"] == 2
    assert _branch_differences(comb, branches)  # the branch weights moved
    # The saved comb loads as before: frozen branches, eval mode, tags a clip.
    assert not any(p.requires_grad for p in comb.audio.parameters()) and not comb.audio.training
    probs = comb(torch.randn(3, SR // 2)).softmax(dim=1)
    assert probs.shape == (3, len(meta["labels"])) and torch.isfinite(probs).all()
    # The mean-input ablation's means are those of the fine-tuned branches, not the source ones.
    head_comb, _ = load_checkpoint(head_only / "last")
    assert not torch.allclose(comb.audio_feature_mean, head_comb.audio_feature_mean)
    config = combine_module._loop_config(
        combine_module.resolve_combine_config(
            _config(branches, out), load_checkpoint(branches[0])[1]
        )
    )
    data = prepare_data(config)
    fresh = copy.deepcopy(comb)
    fresh.record_feature_means(
        combine_module._training_windows(
            data, config.input_samples, eval_fill_for(config.p_replicate), 64, "cpu"
        )
    )
    assert torch.allclose(fresh.audio_feature_mean, comb.audio_feature_mean, atol=1e-6)
    assert torch.allclose(fresh.spec_feature_mean, comb.spec_feature_mean, atol=1e-6)
    # The branch runs were only read.
    assert [_folder_digest(run) for run in branches] == before


def test_a_finetune_that_hurts_validation_keeps_the_head_only_weights(
    branches, head_only, tmp_path
):
    # A huge learning rate wrecks the branches: no fine-tune epoch can be the best.
    out = combine(_config(branches, tmp_path / "comb", finetune_epochs=2, finetune_lr=50.0))
    rows = _metrics(out)
    head_best = max(row["val_map3"] for row in rows[:HEAD_EPOCHS])
    assert all(not row["val_map3"] >= head_best for row in rows[HEAD_EPOCHS:])
    best, meta = load_checkpoint(out / "best")
    assert meta["metrics"]["stage"] == "head"
    assert _branch_differences(best, branches) == []
    _assert_same_tensors(_tensors(out / "best"), _tensors(head_only / "best"))
    last, _ = load_checkpoint(out / "last")
    assert _branch_differences(last, branches)
    finished = json.loads((out / "finished.json").read_text())
    assert finished["best_epoch"] == meta["metrics"]["best_epoch"] <= HEAD_EPOCHS


@pytest.mark.parametrize("interrupt_epoch", [HEAD_EPOCHS + 1, 1], ids=["finetune", "head"])
def test_resume_gives_the_uninterrupted_weights(branches, tmp_path, monkeypatch, interrupt_epoch):
    finetune = 2
    full_config = _config(branches, tmp_path / "full", finetune_epochs=finetune, mixup_alpha=0.4)
    real_loss = loop.soft_cross_entropy
    calls = {"n": 0}

    def counting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls.get("stop"):
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "soft_cross_entropy", counting_loss)
    full = combine(full_config)
    steps = calls["n"] // (HEAD_EPOCHS + finetune)
    # Stop two steps into the epoch after `interrupt_epoch`, with that epoch's state saved.
    calls.update(n=0, stop=steps * interrupt_epoch + 3)
    partial = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        combine(full_config.replace(out=str(partial)))
    monkeypatch.undo()
    assert len(_metrics(partial)) == interrupt_epoch
    assert not (partial / "finished.json").exists()

    combine(CombineConfig(out=str(partial), resume=True, device="cpu", workers=0))
    assert _metrics(partial) == _metrics(full)
    for stem in ("best", "last"):
        _assert_same_tensors(_tensors(partial / stem), _tensors(full / stem))
    assert (partial / "finished.json").exists()


@pytest.mark.parametrize("batchnorm_train", [True, False])
def test_unfrozen_branches_train_and_choose_their_batchnorm_mode(batchnorm_train):
    from wavemel.models.cnn_comb import CnnComb

    torch.manual_seed(0)
    comb = CnnComb.from_size(4, size="tiny", sample_rate=SR)
    comb.train()
    assert not comb.audio.training and not comb.spec.training  # the poster's frozen branches
    comb.unfreeze_branches(batchnorm_train=batchnorm_train)
    assert all(p.requires_grad for p in comb.parameters())
    assert comb.audio.training is batchnorm_train and comb.spec.training is batchnorm_train
    stats = {k: v.clone() for k, v in comb.audio.state_dict().items() if "running_mean" in k}
    comb(torch.randn(4, SR // 2)).sum().backward()
    grads = [p.grad for p in comb.audio.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    moved = [not torch.equal(comb.audio.state_dict()[k], v) for k, v in stats.items()]
    assert stats and all(moved) is batchnorm_train and any(moved) is batchnorm_train
    comb.eval()
    assert not comb.audio.training and not comb.spec.training


def test_val_every_counts_within_each_stage(branches, tmp_path):
    out = combine(_config(branches, tmp_path / "comb", finetune_epochs=3, val_every=2))
    validated = [(row["epoch"], row["stage"]) for row in _metrics(out) if "val_map3" in row]
    # Every second epoch of a stage and the last of each: the head's best is known before the
    # fine-tune starts from it.
    assert validated == [(2, "head"), (4, "finetune"), (5, "finetune")]
