"""wavemel's models beside PANNs' CNN14 and a MobileNetV2: CPU inference cost of a 10 s clip.

Needs the ``bench`` extra (``pip install -e ".[bench]"``: panns-inference, torchlibrosa). Run
from the repository root::

    python benchmarks/peers.py                            # every model, 2 s of timing each
    python benchmarks/peers.py --sizes tiny --budget 0.5  # quick look

Every model tags one 10 s clip (batch 1, ``eval()``, no gradients) in one process with the same
thread count: wavemel's cnn-audio, cnn-spec and cnn-comb at each size (16 kHz, 10 classes,
random weights, the whole clip in one forward pass) and, at 32 kHz with 527 AudioSet classes
and random weights, PANNs' CNN14 from ``panns_inference.models`` and a MobileNetV2 in the PANNs
layout (log-mel 64 bins, the standard MobileNetV2 inverted-residual stages, mean over
frequency, max + mean over time, a 1024-unit dense layer) built here, because panns-inference
0.1.1 ships only CNN14 (this rebuild has the paper's 4.1 M weights, but fewer MACs than the
paper's 2.8 G multiply-adds: compare it here, not with the paper's figure).

Printed: median seconds per clip, real-time factor (seconds of compute per second of audio),
parameters (less torchlibrosa's fixed STFT and mel kernels) and multiply-accumulates per clip
(Conv/Linear layers through forward hooks, as ``benchmarks/models.py`` counts them; torchlibrosa
computes its STFT as a convolution, ~1 G of PANNs' count per 10 s; wavemel's FFT is added as
there).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

# AudioSet's class count: CNN14's head in the published checkpoints.
AUDIOSET_CLASSES = 527
PANNS_SAMPLE_RATE = 32000


def import_panns_models():
    """``panns_inference.models`` without the network.

    Importing the package runs its ``config`` module, which downloads AudioSet's
    ``class_labels_indices.csv`` into ``~/panns_data/`` when it is missing and then reads it;
    offline that fails. The benchmark needs no labels, so HOME points at a temporary folder
    holding a stand-in file with the same name and columns (index, mid, display_name) while the
    package is imported.
    """
    home = os.environ.get("HOME")
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "panns_data" / "class_labels_indices.csv"
        labels.parent.mkdir()
        with labels.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "mid", "display_name"])
            writer.writerows([i, f"/m/stand-in{i}", f"class {i}"] for i in range(AUDIOSET_CLASSES))
        os.environ["HOME"] = tmp
        try:
            import panns_inference.models as panns_models
        finally:
            if home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = home
    return panns_models


def build_mobilenet_v2(num_classes: int = AUDIOSET_CLASSES):
    """MobileNetV2 on a 32 kHz log-mel, laid out as in the PANNs paper (random weights)."""
    import torch
    from torch import nn
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
        conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        return [conv, nn.BatchNorm2d(cout)]

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1) + [nn.ReLU6()] if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + [nn.ReLU6()]
            layers += conv_bn(hidden, cout, 1)
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.block(x) if self.residual else self.block(x)

    class MobileNetV2(nn.Module):
        # (expansion, channels, repeats, first stride): the standard MobileNetV2 stages.
        STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip

        def __init__(self):
            super().__init__()
            self.spectrogram = Spectrogram(n_fft=1024, hop_length=320, freeze_parameters=True)
            self.logmel = LogmelFilterBank(
                sr=PANNS_SAMPLE_RATE, n_fft=1024, n_mels=64, fmin=50, fmax=14000,
                freeze_parameters=True,
            )  # fmt: skip
            self.bn0 = nn.BatchNorm2d(64)
            layers, cin = conv_bn(1, 32, 3, 2) + [nn.ReLU6()], 32
            for expand, cout, repeats, stride in self.STAGES:
                for i in range(repeats):
                    layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                    cin = cout
            self.features = nn.Sequential(*layers, *conv_bn(cin, 1280, 1), nn.ReLU6())
            self.fc1 = nn.Linear(1280, 1024)
            self.head = nn.Linear(1024, num_classes)

        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            x = self.logmel(self.spectrogram(wave))  # (B, 1, frames, 64)
            x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
            x = self.features(x).mean(dim=3)  # (B, 1280, frames')
            x = x.amax(dim=2) + x.mean(dim=2)
            return torch.sigmoid(self.head(torch.relu(self.fc1(x))))

    return MobileNetV2()


def time_inference(model, wave, budget_s: float) -> float:
    """Median seconds of one no-grad forward pass after a warm-up, within ``budget_s``."""
    import numpy as np
    import torch

    times: list[float] = []
    with torch.no_grad():
        model(wave)  # warm-up: allocations, oneDNN kernel choice
        started = time.perf_counter()
        while not times or (time.perf_counter() - started < budget_s and len(times) < 50):
            begin = time.perf_counter()
            model(wave)
            times.append(time.perf_counter() - begin)
    return float(np.median(times))


def count_weights(model) -> int:
    """Parameters, less torchlibrosa's fixed STFT and mel kernels (1.1 M, not learnt)."""
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    fixed = {
        id(p)
        for m in model.modules()
        if isinstance(m, (Spectrogram, LogmelFilterBank))
        for p in m.parameters()
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in fixed)


def peers(sizes: list[str]) -> list[tuple[str, object, int]]:
    """``(name, model, sample_rate)`` for every model to time, built lazily in this order."""
    from wavemel.models import create_model, list_sizes

    rows = []
    for name in ("cnn-audio", "cnn-spec", "cnn-comb"):
        for size in sizes:
            if size in list_sizes(name):
                rows.append((f"wavemel {name} {size}", lambda n=name, s=size: create_model(
                    n, 10, size=s, sample_rate=16000), 16000))  # fmt: skip
    panns = import_panns_models()
    rows.append(("PANNs CNN14", lambda: panns.Cnn14(
        sample_rate=PANNS_SAMPLE_RATE, window_size=1024, hop_size=320, mel_bins=64, fmin=50,
        fmax=14000, classes_num=AUDIOSET_CLASSES), PANNS_SAMPLE_RATE))  # fmt: skip
    rows.append(("MobileNetV2 (PANNs layout)", build_mobilenet_v2, PANNS_SAMPLE_RATE))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, help="torch threads (default: the CLI's choice)")
    parser.add_argument("--budget", type=float, default=2.0, help="timing seconds per model")
    args = parser.parse_args(argv)

    from wavemel._threads import configure_threads

    plan = configure_threads(args.threads)  # before torch loads, as the wavemel command does
    import torch
    from models import count_macs  # benchmarks/models.py

    print(
        f"torch {torch.__version__}, {plan.reason}, {platform.processor() or 'cpu'}; "
        f"one {args.clip_seconds:g} s clip per forward pass, batch 1, eval, no gradients\n"
    )
    print("| model | rate | params | GMACs/clip | s/clip | real-time factor |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, build, rate in peers(args.sizes):
        torch.manual_seed(0)
        model = build().eval()
        samples = int(round(args.clip_seconds * rate))
        wave = 0.1 * torch.randn(1, samples)
        seconds = time_inference(model, wave, args.budget)
        params = count_weights(model)
        macs = count_macs(model, samples)
        print(
            f"| {name} | {rate // 1000} kHz | {params / 1e6:.2f} M | {macs / 1e9:.3f} "
            f"| {seconds:.4f} | {seconds / args.clip_seconds:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
