"""An interrupted and resumed run ends exactly where an uninterrupted run ends (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wavemel.train import loop
from wavemel.train.config import TrainConfig
from wavemel.train.state import Progress, load_state

SR = 8000


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")  # wall time is the only thing allowed to differ
    return rows


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    from wavemel.data.synthetic import generate

    data = generate(tmp_path / "data", clips_per_class=4, sample_rate=SR, max_seconds=1.0)
    base = TrainConfig(
        model="cnn-audio",
        size="tiny",
        data=str(data),
        sample_rate=SR,
        input_seconds=0.5,
        epochs=3,
        batch_size=6,
        folds=4,
        workers=0,
        device="cpu",
        # Mixup, dropout, shifts, crops and replication all draw random numbers: all must repeat.
        mixup_alpha=0.4,
        patience=0,
        cache_dir=str(tmp_path / "cache"),
    )
    full = loop.train(base.replace(out=str(tmp_path / "full")))

    # Interrupt the second run in the middle of its second epoch (after two of its steps).
    partial = tmp_path / "partial"
    real_loss = loop.soft_cross_entropy
    steps_per_epoch = 4  # 24 training clips // batch 6
    calls = {"n": 0}

    def interrupting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 3:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "soft_cross_entropy", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        loop.train(base.replace(out=str(partial)))
    monkeypatch.undo()
    assert len(_metrics(partial)) == 1
    state_progress = json.loads((partial / "state" / "state.json").read_text())
    assert "state" in state_progress  # JSON skeleton + safetensors, no pickle
    assert not list(partial.rglob("*.pt")) and not list(partial.rglob("*.pkl"))

    # Only --out and --resume are needed: the rest comes from the run's config.json.
    loop.train(TrainConfig(out=str(partial), resume=True, device="cpu", workers=0))

    assert _metrics(partial) == _metrics(full)
    for stem in ("last", "best"):
        a = load_file(str(full / f"{stem}.safetensors"))
        b = load_file(str(partial / f"{stem}.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{stem}: {name}"
    meta_full = json.loads((full / "best.json").read_text())
    meta_resumed = json.loads((partial / "best.json").read_text())
    assert meta_full["metrics"]["val_map3"] == meta_resumed["metrics"]["val_map3"]

    # The saved optimizer state round-trips exactly (moments and step counts).
    from wavemel.models import create_model

    model = create_model("cnn-audio", 8, size="tiny", sample_rate=SR)
    optimizer = torch.optim.AdamW(model.parameters())
    progress = load_state(partial, model, optimizer, restore_rng=False)
    assert progress == Progress(
        epoch=3,
        step=3 * steps_per_epoch,
        best_map3=meta_full["metrics"]["best_val_map3"],
        best_epoch=meta_full["metrics"]["best_epoch"],
        epochs_without_improvement=3 - meta_full["metrics"]["best_epoch"],
    )
    steps = {float(s["step"]) for s in optimizer.state_dict()["state"].values()}
    assert steps == {3.0 * steps_per_epoch}
