"""Multi-label training end to end: synthetic events mixed in pairs, sigmoid + BCE, thresholds."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.cli import main
from wavemel.data.synthetic import SYNTHETIC_CLASSES, synthesize_clip
from wavemel.evaluate import evaluate_run
from wavemel.infer import Tagger
from wavemel.metrics import lwlrap, mean_average_precision
from wavemel.train.config import TrainConfig
from wavemel.train.loader import multi_hot_targets
from wavemel.train.loop import Objective, soft_binary_cross_entropy, train

SR = 8000


def _mixture(a: str, b: str, number: int) -> np.ndarray:
    """Two events of different classes summed (the shorter one padded with silence)."""
    first = synthesize_clip(a, number, sample_rate=SR, min_seconds=0.5, max_seconds=1.0)
    second = synthesize_clip(b, number + 500, sample_rate=SR, min_seconds=0.5, max_seconds=1.0)
    mixed = np.zeros(max(len(first), len(second)), dtype=np.float32)
    mixed[: len(first)] += 0.5 * first
    mixed[: len(second)] += 0.5 * second
    return mixed


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Every pair of the 8 synthetic classes, 5 times: 3 for training, 1 val, 1 test (140 clips)."""
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for take, split in enumerate(("train", "train", "train", "val", "test")):
        for a, b in itertools.combinations(SYNTHETIC_CLASSES, 2):
            name = f"{a}+{b}_{take}.wav"
            sf.write(root / name, _mixture(a, b, take), SR, subtype="PCM_16")
            rows.append([name, f"{a},{b}", split])
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return root


def _chance(targets: np.ndarray, metric, draws: int = 200) -> float:
    """A metric's mean over random scores for these targets (its chance level on this set)."""
    rng = np.random.default_rng(0)
    return float(np.mean([metric(rng.random(targets.shape), targets) for _ in range(draws)]))


def test_bce_matches_manual_and_applies_weights():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.5, 1.0]])  # a mixup blend in the second row
    p = torch.sigmoid(logits)
    per_label = -(targets * p.log() + (1 - targets) * (1 - p).log())
    assert torch.allclose(soft_binary_cross_entropy(logits, targets), per_label.mean())
    weights = torch.tensor([1.0, 0.0])
    assert torch.allclose(
        soft_binary_cross_entropy(logits, targets, weights), per_label[0].mean() / 2
    )
    # The objective picks the loss; single-label keeps the softmax cross-entropy.
    assert torch.allclose(Objective(multi_label=True).loss(logits, targets), per_label.mean())
    assert not torch.allclose(Objective().loss(logits, targets), per_label.mean())


def test_multi_hot_targets_give_each_label_a_one():
    target = multi_hot_targets(("b", "c"), {"a": 0, "b": 1, "c": 2})
    np.testing.assert_array_equal(target, [0, 1, 1])


def test_multi_label_is_detected_unless_the_config_says_otherwise(pairs, tmp_path):
    from wavemel.train.loader import prepare_data

    base = TrainConfig(
        data=str(pairs), out=str(tmp_path / "run"), sample_rate=SR, val_split="val",
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    detected = prepare_data(base, progress=False)
    assert detected.multi_label
    assert {float(item.target.sum()) for item in detected.train} == {2.0}  # multi-hot
    forced_off = prepare_data(base.replace(multi_label=False), progress=False)
    assert not forced_off.multi_label
    # Single-label training as before: the two labels share the mass of one distribution.
    assert {float(item.target.max()) for item in forced_off.train} == {0.5}


def test_multi_label_run_end_to_end(pairs, tmp_path, capsys):
    config = TrainConfig(
        model="cnn-spec",
        size="tiny",
        data=str(pairs),
        out=str(tmp_path / "run"),
        sample_rate=SR,
        input_seconds=0.5,
        epochs=60,
        batch_size=16,
        lr=3e-3,
        warmup_epochs=0.5,
        val_split="val",
        workers=0,
        device="cpu",
        patience=0,
        cache_dir=str(tmp_path / "cache"),
    )
    run = train(config)  # multi_label left to detection: every clip has two labels
    saved = json.loads((run / "config.json").read_text())
    assert saved["multi_label"] is True
    meta = json.loads((run / "best.json").read_text())
    assert meta["multi_label"] is True and len(meta["thresholds"]) == len(SYNTHETIC_CLASSES)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"val_map", "val_lwlrap"} <= set(rows[-1]) and "thresholds" not in rows[-1]

    tagger = Tagger.from_checkpoint(run, device="cpu")
    assert tagger.multi_label
    np.testing.assert_allclose(tagger.thresholds, meta["thresholds"])
    probabilities = tagger.predict_proba(pairs / "chirp+ringing_4.wav")
    # Sigmoid outputs: each label scored on its own, not a distribution.
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert not np.isclose(probabilities.sum(), 1.0)

    result = evaluate_run(run, split="test", device="cpu")
    targets = np.zeros((len(result["clips"]), len(tagger.labels)), dtype=bool)
    for row, clip in enumerate(result["clips"]):
        targets[row, [tagger.labels.index(label) for label in clip["labels"]]] = True
    # Chance on these 28 test clips (two labels of eight each): lwlrap 0.43, mAP 0.33; the run
    # gets about 0.72 and 0.69.
    chance_lwlrap = _chance(targets, lwlrap)
    chance_map = _chance(targets, mean_average_precision)
    assert result["multi_label"] is True and result["n_clips"] == 28
    assert result["lwlrap"] > chance_lwlrap + 0.2, (result["lwlrap"], chance_lwlrap)
    assert result["map"] > chance_map + 0.2, (result["map"], chance_map)
    assert 0 <= result["micro_f1"] <= 1 and 0 <= result["macro_f1"] <= 1
    assert all(clip["tags"] is not None for clip in result["clips"])

    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert f"lwlrap        {result['lwlrap']:>8.4f}" in table and "micro f1 @thr" in table

    # predict lists every label above its threshold, then the top-k.
    assert main(["predict", str(run), str(pairs / "chirp+ringing_4.wav"), "--json"]) == 0
    [answer] = json.loads(capsys.readouterr().out)["results"]
    expected = [
        label
        for label, p in zip(tagger.labels, probabilities)
        if p >= tagger.thresholds[tagger.labels.index(label)]
    ]
    assert sorted(tag["label"] for tag in answer["labels"]) == sorted(expected)
    assert len(answer["tags"]) == 3
