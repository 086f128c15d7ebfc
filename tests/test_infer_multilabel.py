"""Multi-label inference: sigmoid window scores, not renormalised; the checkpoint's thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.checkpoint import save_checkpoint
from wavemel.cli import main
from wavemel.errors import CheckpointError
from wavemel.infer import Tagger, predict_waveforms
from wavemel.models import create_model

RATE = 8000


class WindowProbe(torch.nn.Module):
    """Logits that depend on the whole window, deterministic."""

    def __init__(self, num_classes: int = 3, input_samples: int = 50) -> None:
        super().__init__()
        self.num_classes = num_classes
        generator = torch.Generator().manual_seed(1)
        self.weight = torch.nn.Parameter(
            torch.randn(input_samples, num_classes, generator=generator)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x @ self.weight)


def _windows_logits(model: WindowProbe, clip: np.ndarray, width: int) -> torch.Tensor:
    windows = torch.from_numpy(np.stack([clip[i : i + width] for i in range(0, len(clip), width)]))
    return model(windows).detach()


def test_sigmoid_scores_are_window_means_not_renormalised():
    model = WindowProbe()
    clip = np.random.default_rng(0).standard_normal(150).astype(np.float32)  # three windows
    logits = _windows_logits(model, clip, 50)
    [mean] = predict_waveforms(model, [clip], input_samples=50, activation="sigmoid")
    np.testing.assert_allclose(mean, torch.sigmoid(logits).mean(dim=0).numpy(), rtol=1e-6)
    assert not np.isclose(mean.sum(), 1.0)
    [geometric] = predict_waveforms(
        model, [clip], input_samples=50, activation="sigmoid", aggregate="geometric"
    )
    expected = torch.exp(torch.nn.functional.logsigmoid(logits).mean(dim=0)).numpy()
    np.testing.assert_allclose(geometric, expected, rtol=1e-6)
    # The default is unchanged: softmax rows that sum to 1.
    [softmax] = predict_waveforms(model, [clip], input_samples=50)
    np.testing.assert_allclose(softmax, torch.softmax(logits, dim=1).mean(dim=0).numpy(), rtol=1e-6)


def _checkpoint(tmp_path, **meta):
    torch.manual_seed(0)
    labels = ["bark", "meow", "purr"]
    model = create_model("cnn-audio", len(labels), size="tiny", sample_rate=RATE).eval()
    base = {"labels": labels, "sample_rate": RATE, "input_seconds": 0.5}
    return save_checkpoint(tmp_path / "run" / "best", model, {**base, **meta})


def test_tagger_reads_activation_and_thresholds_from_the_checkpoint(tmp_path):
    _checkpoint(tmp_path, multi_label=True, thresholds=[0.2, 0.9, 0.5])
    tagger = Tagger.from_checkpoint(tmp_path / "run", device="cpu")
    assert tagger.multi_label and tagger.activation == "sigmoid"
    np.testing.assert_allclose(tagger.thresholds, [0.2, 0.9, 0.5])
    # Every label at or above its own threshold, best first.
    assert tagger.above_threshold(np.array([0.3, 0.95, 0.5])) == [
        ("meow", 0.95),
        ("purr", 0.5),
        ("bark", 0.3),
    ]
    assert tagger.above_threshold(np.array([0.1, 0.8, 0.4])) == []


def test_single_label_checkpoint_stays_softmax(tmp_path):
    _checkpoint(tmp_path)
    tagger = Tagger.from_checkpoint(tmp_path / "run", device="cpu")
    assert not tagger.multi_label and tagger.thresholds is None
    probabilities = tagger.predict_proba(np.zeros(RATE, dtype=np.float32))
    assert probabilities.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="top-1"):
        tagger.above_threshold(probabilities)


@pytest.mark.parametrize("thresholds", [[0.5, 0.5], [0.5, "x", 0.5], [0.5, float("nan"), 0.5]])
def test_crafted_thresholds_are_one_line_naming_the_file(tmp_path, thresholds):
    _checkpoint(tmp_path, multi_label=True)
    json_path = tmp_path / "run" / "best.json"
    meta = json.loads(json_path.read_text())
    meta["thresholds"] = thresholds
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="thresholds") as info:
        Tagger.from_checkpoint(json_path, device="cpu")
    assert str(json_path) in str(info.value) and "\n" not in str(info.value)


def test_predict_prints_labels_above_threshold_and_writes_probability_submission(tmp_path, capsys):
    _checkpoint(tmp_path, multi_label=True, thresholds=[0.0, 1.0, 0.0])
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(0).uniform(-0.5, 0.5, RATE), RATE)
    submission = tmp_path / "submission.csv"
    assert main(["predict", str(tmp_path / "run"), str(clip), "--submission", str(submission)]) == 0
    line = capsys.readouterr().out.strip()
    # Threshold 0 always tags, 1.0 (above any sigmoid here) never: bark and purr, then the top-3.
    tags, top = line.split("\t")[1:]
    assert sorted(part.split()[0] for part in tags.split("  ")) == ["bark", "purr"]
    assert top.startswith("(top-3: ")
    header, row = submission.read_text().splitlines()
    assert header == "fname,bark,meow,purr"
    assert row.startswith("clip.wav,") and len(row.split(",")) == 4
