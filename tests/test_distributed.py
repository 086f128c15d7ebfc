"""``torchrun -m wavemel train`` with 2 processes (gloo on CPU) and the per-rank sharding."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wavemel.train.distributed import ShardSampler

SR = 8000


def test_shards_cover_each_epoch_once_and_depend_on_seed_and_epoch():
    shards = [list(ShardSampler(10, rank=r, world_size=3, seed=4)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    flat = sorted(i for shard in shards for i in shard)
    assert set(flat) == set(range(10)) and len(flat) == 12  # padded by repeating 2 indices
    again = ShardSampler(10, rank=1, world_size=3, seed=4)
    assert list(again) == shards[1]
    again.set_epoch(1)
    assert list(again) != shards[1]
    assert list(ShardSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "wavemel", *args,
    ]  # fmt: skip
    # torchrun leaves a torchelastic_* folder in TMPDIR: keep it inside the test's own folder.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(cwd)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_torchrun_two_processes_gloo(tmp_path):
    from wavemel.data.synthetic import generate

    data = generate(tmp_path / "data", clips_per_class=4, sample_rate=SR, max_seconds=1.0)
    out = tmp_path / "run"
    args = [
        "train", "--model", "cnn-audio", "--size", "tiny",
        "--data", str(data), "--out", str(out), "--sample-rate", str(SR),
        "--input-seconds", "0.5", "--epochs", "2", "--batch-size", "4", "--folds", "4",
        "--mixup-alpha", "0", "--workers", "0", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = _torchrun(args, tmp_path)

    # Rank 0 alone wrote and printed: one line per epoch, each epoch announced once.
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert result.stdout.count("epoch 1/2 ") == 1 and result.stdout.count("epoch 2/2 ") == 1
    assert "2 process(es)" in result.stdout
    for name in ("best.json", "best.safetensors", "last.json", "last.safetensors"):
        assert (out / name).exists()
    for row in rows:
        assert 0.0 < row["val_map3"] <= 1.0 and row["train_loss"] > 0

    # The logged val MAP@3 covers all validation clips: scoring the saved best model on one
    # process over the same split gives the same number.
    from wavemel.checkpoint import load_checkpoint
    from wavemel.train.config import TrainConfig
    from wavemel.train.loader import prepare_data
    from wavemel.train.loop import validate

    config = TrainConfig.load(out / "config.json")
    prepared = prepare_data(config, progress=False)
    model, meta = load_checkpoint(out)
    scores = validate(
        model,
        prepared.store,
        prepared.val,
        input_samples=config.input_samples,
        empty_distribution=meta["label_prior"],
    )
    assert scores["val_map3"] == pytest.approx(meta["metrics"]["val_map3"], abs=1e-9)
    assert len(prepared.val) == 8  # both ranks' shards (4 each) were gathered

    # cnn-comb under DDP: only the head is trainable (frozen branches are not synchronised).
    from wavemel.train.loop import train

    spec = train(config.replace(model="cnn-spec", out=str(tmp_path / "spec"), epochs=1))
    comb = tmp_path / "comb"
    combine_args = ["combine", "--audio", str(out), "--spec", str(spec), "--out", str(comb)]
    combine_args += ["--epochs", "1", "--batch-size", "4", "--hidden", "8", "--workers", "0"]
    result = _torchrun(combine_args + ["--device", "cpu"], tmp_path)
    assert result.stdout.count("epoch 1/1 ") == 1
    comb_model, comb_meta = load_checkpoint(comb)
    assert (
        comb_meta["model"] == "cnn-comb"
        and len((comb / "metrics.jsonl").read_text().splitlines()) == 1
    )
    trained_audio, _ = load_checkpoint(out)
    for name, tensor in trained_audio.state_dict().items():
        if name in comb_model.audio.state_dict():
            assert torch.equal(comb_model.audio.state_dict()[name], tensor), name


def test_torchrun_two_processes_score_and_save_the_same_ema(tmp_path):
    from wavemel.checkpoint import load_checkpoint
    from wavemel.data.synthetic import generate
    from wavemel.train.config import TrainConfig
    from wavemel.train.loader import prepare_data
    from wavemel.train.loop import validate

    data = generate(tmp_path / "data", clips_per_class=4, sample_rate=SR, max_seconds=1.0)
    out = tmp_path / "run"
    args = [
        "train", "--model", "cnn-audio", "--size", "tiny",
        "--data", str(data), "--out", str(out), "--sample-rate", str(SR),
        "--input-seconds", "0.5", "--epochs", "2", "--batch-size", "4", "--folds", "4",
        "--mixup-alpha", "0", "--workers", "0", "--device", "cpu", "--ema-decay", "0.9",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    _torchrun(args, tmp_path)

    # Each rank scored its half of the clips with its own EMA; one process scoring all of them
    # with rank 0's saved EMA gives the same loss, so the ranks' averages (BatchNorm statistics
    # included, which each rank updates from its own batches) were the same.
    config = TrainConfig.load(out / "config.json")
    prepared = prepare_data(config, progress=False)
    model, meta = load_checkpoint(out / "last")
    scores = validate(
        model,
        prepared.store,
        prepared.val,
        input_samples=config.input_samples,
        empty_distribution=meta["label_prior"],
    )
    assert scores["val_loss"] == pytest.approx(meta["metrics"]["val_loss"], rel=1e-6)
    assert scores["val_map3"] == pytest.approx(meta["metrics"]["val_map3"], abs=1e-9)
