"""Benchmark the log-mel front end against librosa, and every model's cost and throughput.

Run from the repository root::

    python benchmarks/models.py                 # full table (a few minutes on 2 CPU cores)
    python benchmarks/models.py --sizes tiny     # quick look

(a) ``LogMel`` on one batch of 64 two-second 16 kHz clips against ``librosa.feature.melspectrogram``
    + ``librosa.power_to_db`` called clip by clip, best of ``--repeats`` runs, and the ratio
    (torch and numpy's BLAS both limited to ``--threads``).
(b) For each model, size and input length: parameters (trainable / total), multiply-accumulates
    per clip (Conv/Linear layers counted with forward hooks, plus the STFT and mel matmul of the
    front end), and forward+backward training throughput in clips per second.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wavemel.frontend import LogMel  # noqa: E402
from wavemel.models import create_model, list_models, list_sizes  # noqa: E402


def _best_time(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_frontend(repeats: int, batch: int = 64, seconds: float = 2.0, sr: int = 16000) -> None:
    import librosa

    front = LogMel(sr)
    rng = np.random.default_rng(0)
    clips = (0.1 * rng.standard_normal((batch, int(sr * seconds)))).astype(np.float32)
    x = torch.from_numpy(clips)

    def run_torch() -> None:
        with torch.no_grad():
            front(x)

    def run_librosa() -> None:
        for clip in clips:
            mel = librosa.feature.melspectrogram(
                y=clip, sr=sr, n_fft=front.n_fft, hop_length=front.hop_length,
                n_mels=front.n_mels, fmin=front.fmin, power=2.0,
            )  # fmt: skip
            librosa.power_to_db(mel, ref=1.0, amin=front.amin)

    run_torch(), run_librosa()  # warm-up (allocations, librosa's lazy imports)
    t_torch = _best_time(run_torch, repeats)
    t_librosa = _best_time(run_librosa, repeats)
    print(f"## (a) log-mel front end: batch of {batch} x {seconds:g} s clips at {sr} Hz")
    print(f"LogMel (torch, one batch)      {t_torch * 1e3:8.1f} ms")
    print(f"librosa (per clip, in a loop)  {t_librosa * 1e3:8.1f} ms")
    print(f"speed-up                       {t_librosa / t_torch:8.1f} x\n")


def count_macs(model: nn.Module, num_samples: int) -> int:
    """Multiply-accumulates for one clip: Conv/Linear layers via hooks, plus the front end."""
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        per_output = (
            module.in_features
            if isinstance(module, nn.Linear)
            else module.in_channels // module.groups * math.prod(module.kernel_size)
        )
        total += output.numel() // output.shape[0] * per_output

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
    ]
    training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, num_samples))
    model.train(training)
    for handle in handles:
        handle.remove()
    for front in (m for m in model.modules() if isinstance(m, LogMel)):
        frames = front.num_frames(num_samples)
        bins = front.n_fft // 2 + 1
        # A real FFT of size N costs about N/4 * log2(N) complex = N * log2(N) real MACs.
        fft = front.n_fft * math.log2(front.n_fft)
        total += int(frames * (fft + 2 * bins + front.n_mels * bins))
    return total


def training_step(name: str, size: str, seconds: float, batch: int):
    """``(step, model, params)``: one forward + backward + SGD step of a fresh 16 kHz model on a
    fixed random batch (what table (b) and ``contention.py`` time)."""
    sr = 16000
    torch.manual_seed(0)
    model = create_model(name, 10, size=size, sample_rate=sr).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3)
    x = 0.1 * torch.randn(batch, int(sr * seconds))
    y = torch.arange(batch) % 10

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step, model, params


def bf16_compare(name: str, size: str, seconds: float, batch: int, rounds: int) -> dict:
    """Training steps in float32 and with ``cpu_amp``'s bfloat16 autocast (NHWC for a model that
    prefers it, as ``fit`` does), timed in alternation on the same batch: median step times."""
    runs = {}
    for mode in ("float32", "bfloat16"):
        step, model, _ = training_step(name, size, seconds, batch)
        if mode == "bfloat16" and getattr(model, "prefers_channels_last", False):
            model.to(memory_format=torch.channels_last)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "float32")
        runs[mode] = (step, autocast)
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    for step, autocast in runs.values():
        with autocast:
            step()  # warm-up (oneDNN picks its kernels)
    for _ in range(rounds):
        for mode, (step, autocast) in runs.items():
            with autocast:
                times[mode].append(_best_time(step, 1))
    medians = {mode: float(np.median(t)) for mode, t in times.items()}
    return {mode: batch / t for mode, t in medians.items()}


def bench_model(name: str, size: str, seconds: float, batch: int, budget_s: float) -> dict:
    sr = 16000
    step, model, params = training_step(name, size, seconds, batch)
    step()  # warm-up
    times = []
    start = time.perf_counter()
    while not times or (time.perf_counter() - start < budget_s and len(times) < 20):
        times.append(_best_time(step, 1))
    step_s = float(np.median(times))
    return {
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, int(sr * seconds)),
        "batch": batch,
        "step_ms": step_s * 1e3,
        "clips_per_s": batch / step_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models())
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[1.0, 2.0, 3.0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="front-end timing repeats")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per model timing")
    parser.add_argument("--skip-frontend", action="store_true")
    parser.add_argument(
        "--bf16-compare",
        type=int,
        metavar="ROUNDS",
        help="instead of table (b): float32 against bfloat16 autocast training steps (the cpu "
        "preset's cpu_amp), batch 32, alternated for ROUNDS rounds",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    try:
        # Give numpy's BLAS (librosa's mel matmul) the same thread count as torch: like for like,
        # and no idle BLAS threads spinning against torch's on a shared machine.
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        print("threadpoolctl not installed: numpy's BLAS thread count is not limited")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}\n"
    )
    if not args.skip_frontend:
        bench_frontend(args.repeats)

    if args.bf16_compare:
        from wavemel._device import cpu_has_bf16_units

        units = "yes" if cpu_has_bf16_units() else "no (oneDNN emulates bfloat16)"
        print(f"## float32 vs bfloat16 training steps, batch 32; CPU bfloat16 units: {units}")
        print("| model | size | input | float32 clips/s | bfloat16 clips/s | ratio |")
        print("|---|---|---|---:|---:|---:|")
        for name in args.models:
            for size in args.sizes:
                for seconds in args.seconds:
                    r = bf16_compare(name, size, seconds, 32, args.bf16_compare)
                    print(
                        f"| {name} | {size} | {seconds:g} s | {r['float32']:.1f} | "
                        f"{r['bfloat16']:.1f} | {r['bfloat16'] / r['float32']:.2f}x |",
                        flush=True,
                    )
        return
    print("## (b) models: 16 kHz input, 10 classes, forward+backward+SGD step on CPU")
    print("| model | size | input | params (trainable / total) | MMACs/clip | batch | "
          "step ms | clips/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for size in args.sizes:
            if size not in list_sizes(name):
                continue
            batch = 2 if size == "paper" else 8
            for seconds in args.seconds:
                r = bench_model(name, size, seconds, batch, args.budget)
                print(
                    f"| {name} | {size} | {seconds:g} s | {r['trainable'] / 1e6:.3f} M / "
                    f"{r['total'] / 1e6:.3f} M | {r['macs'] / 1e6:,.0f} | {r['batch']} | "
                    f"{r['step_ms']:,.0f} | {r['clips_per_s']:,.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
