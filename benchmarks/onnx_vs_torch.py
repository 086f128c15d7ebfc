"""Inference throughput of onnxruntime against PyTorch on the CPU, model by model.

Run from the repository root (needs the ONNX extra)::

    python benchmarks/onnx_vs_torch.py                      # every model at size small
    python benchmarks/onnx_vs_torch.py --models cnn-spec --threads 1

Each model is freshly initialised at ``--size`` (41 classes, as FSDKaggle2018), saved as a
checkpoint and exported with :func:`wavemel.export.export_onnx`, so the ONNX graph is what
``wavemel export`` writes (log-mel front end inside). Both backends then score the same random
windows of ``--seconds`` at ``--sample-rate`` with the same number of threads (torch's intra-op
threads and onnxruntime's intra-op pool), at each ``--batches`` size. A measurement scores 64
windows (64 calls at batch 1, one call at batch 64) after one warm-up call; the two backends take
turns within each of ``--repeats`` rounds and the best of each is reported as windows per second.
PyTorch runs without autograd (``torch.inference_mode``), as the tagger does. The last rows time
cnn-spec's log-mel front end alone against ``torch.stft``, exported as ``wavemel export`` does
(the STFT as a DFT ``Conv``) and with ONNX's ``STFT`` operator instead.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wavemel.checkpoint import save_checkpoint  # noqa: E402
from wavemel.export import export_onnx, waveform_graph  # noqa: E402
from wavemel.models import create_model, list_models  # noqa: E402
from wavemel.onnx_backend import load_onnx, make_session  # noqa: E402

NUM_CLASSES = 41
WINDOWS_PER_MEASUREMENT = 64


def windows_per_second(runs: list, batch: np.ndarray, repeats: int) -> list[float]:
    """Best-of-``repeats`` rate of each ``run(batch)`` over :data:`WINDOWS_PER_MEASUREMENT` windows.

    The runs take turns within each repeat, so a change in the load of a shared machine hits
    every backend alike instead of whichever was being measured at the time.
    """
    calls = math.ceil(WINDOWS_PER_MEASUREMENT / batch.shape[0])
    for run in runs:
        run(batch)  # warm-up: allocations, onnxruntime's first-run graph work
    best = [math.inf] * len(runs)
    for _ in range(repeats):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            for _ in range(calls):
                run(batch)
            best[index] = min(best[index], time.perf_counter() - start)
    return [calls * batch.shape[0] / seconds for seconds in best]


def compare(label: str, run_torch, run_onnx, args: argparse.Namespace) -> list[tuple]:
    """Rows ``(label, size, batch, torch w/s, onnxruntime w/s)``, one per ``--batches`` size."""
    rng = np.random.default_rng(0)
    width = int(round(args.seconds * args.sample_rate))
    rows = []
    for size in args.batches:
        batch = (0.1 * rng.standard_normal((size, width))).astype(np.float32)
        rates = windows_per_second([run_torch, run_onnx], batch, args.repeats)
        rows.append((label, args.size, size, *rates))
    return rows


def torch_runner(module: torch.nn.Module):
    def run(batch: np.ndarray) -> None:
        with torch.inference_mode():
            module(torch.from_numpy(batch))

    return run


def bench_model(name: str, args: argparse.Namespace, folder: Path) -> list[tuple]:
    """One model as ``wavemel export`` writes it, against the same PyTorch model."""
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, size=args.size, sample_rate=args.sample_rate).eval()
    meta = {
        "labels": [f"class{i}" for i in range(NUM_CLASSES)],
        "sample_rate": args.sample_rate,
        "input_seconds": args.seconds,
    }
    checkpoint = save_checkpoint(folder / name / "best", model, meta)
    onnx_model, _ = load_onnx(export_onnx(checkpoint, folder / f"{name}.onnx").path, args.threads)

    def run_onnx(batch: np.ndarray) -> None:
        onnx_model(torch.from_numpy(batch))

    return compare(name, torch_runner(model), run_onnx, args)


def bench_frontend(args: argparse.Namespace) -> list[tuple]:
    """cnn-spec's log-mel front end alone: ``torch.stft`` against both exported STFT forms.

    The three take turns in every round, so the two ONNX rows share one PyTorch figure.
    """
    spec = create_model("cnn-spec", NUM_CLASSES, size=args.size, sample_rate=args.sample_rate)
    frontend = spec.frontend.eval()
    width = int(round(args.seconds * args.sample_rate))
    forms = {"DFT Conv": "conv", "STFT op": "fft"}
    sessions = {
        label: make_session(
            waveform_graph(
                frontend, width, frontend.n_fft, output_name="logmel", dft=dft
            ).SerializeToString(),
            threads=args.threads,
        )
        for label, dft in forms.items()
    }
    runs = [torch_runner(frontend)]
    runs += [lambda batch, s=s: s.run(None, {"waveform": batch}) for s in sessions.values()]
    rng = np.random.default_rng(0)
    rows = []
    for size in args.batches:
        batch = (0.1 * rng.standard_normal((size, width))).astype(np.float32)
        torch_rate, *onnx_rates = windows_per_second(runs, batch, args.repeats)
        for label, rate in zip(sessions, onnx_rates):
            rows.append((f"log-mel front end, ONNX {label}", args.size, size, torch_rate, rate))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--size", default="small", help="named model size (default: small)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64], metavar="B")
    parser.add_argument("--seconds", type=float, default=2.0, help="window length (default 2)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--threads", type=int, default=2, help="threads for both backends")
    parser.add_argument("--repeats", type=int, default=5, help="measurements, best is kept")
    args = parser.parse_args(argv)

    import onnxruntime

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{args.threads} thread(s) each, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    print(f"{args.seconds:g} s windows at {args.sample_rate} Hz, best of {args.repeats}\n")
    print("| model | size | batch | PyTorch windows/s | onnxruntime windows/s | ORT / torch |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tables = [lambda name=name: bench_model(name, args, Path(tmp)) for name in args.models]
        for table in [*tables, lambda: bench_frontend(args)]:
            for model, size, batch, torch_rate, onnx_rate in table():
                print(
                    f"| {model} | {size} | {batch} | {torch_rate:.1f} | {onnx_rate:.1f} | "
                    f"{onnx_rate / torch_rate:.2f}x |",
                    flush=True,
                )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
