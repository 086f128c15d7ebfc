"""A randomly initialised checkpoint for the benchmarks (weights do not change speed or memory)."""

from __future__ import annotations

from pathlib import Path

import torch

from wavemel.checkpoint import save_checkpoint
from wavemel.models import CnnComb, create_model


def random_checkpoint(
    stem: Path,
    model: str,
    size: str,
    *,
    num_classes: int = 41,  # FSDKaggle2018
    sample_rate: int = 16000,
    input_seconds: float = 2.0,
) -> Path:
    """Write ``stem.safetensors`` + ``stem.json`` of one family and size; returns the JSON path.

    cnn-comb joins a cnn-audio and a cnn-spec branch of the same size. Seeded, so every
    benchmark run times the same network.
    """
    torch.manual_seed(0)
    if model == "cnn-comb":
        audio = create_model("cnn-audio", num_classes, size=size, sample_rate=sample_rate)
        spec = create_model("cnn-spec", num_classes, size=size, sample_rate=sample_rate)
        network = CnnComb(audio, spec, num_classes)
    else:
        network = create_model(model, num_classes, size=size, sample_rate=sample_rate)
    meta = {
        "labels": [f"class_{i:02d}" for i in range(num_classes)],
        "sample_rate": sample_rate,
        "input_seconds": input_seconds,
    }
    return save_checkpoint(stem, network.eval(), meta)
