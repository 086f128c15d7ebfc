"""Peak memory and speed of tagging very long files with ``Tagger`` (block-wise reading).

Writes synthetic 16 kHz files of the given lengths (in blocks, so writing never holds the file in
memory), saves a randomly initialised checkpoint per model family and size, and tags every file
with every checkpoint, each measurement in a fresh SUBPROCESS so that its peak resident set size
(``ru_maxrss``) belongs to that measurement alone. Weights do not matter for memory or speed.

Prints one row per (model, size, file length): peak RSS, RSS before tagging (interpreter, torch
and the model), the growth while tagging, wall time and the real-time factor (audio seconds per
wall second). Peak RSS must not grow with the file length.

    python benchmarks/long_file_inference.py --minutes 10 60 --sizes tiny small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _checkpoints import random_checkpoint  # benchmarks/ is on sys.path

SAMPLE_RATE = 16000
NUM_CLASSES = 41  # FSDKaggle2018
INPUT_SECONDS = 2.0


def write_long_file(path: Path, minutes: float, seed: int = 0) -> None:
    """A mono PCM-16 WAV of tones, chirps and noise, written 10 s at a time."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    block = 10 * SAMPLE_RATE
    total = int(minutes * 60 * SAMPLE_RATE)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as handle:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / SAMPLE_RATE
            freq = rng.uniform(100, 4000)
            signal = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)
            handle.write(signal.astype(np.float32))


def child(checkpoint: str, audio: str, threads: int, batch_size: int) -> None:
    """Tag one file; print a JSON line with timings and RSS (KiB, Linux ``ru_maxrss``)."""
    import soundfile as sf
    import torch

    from wavemel.infer import Tagger

    torch.set_num_threads(threads)
    tagger = Tagger.from_checkpoint(checkpoint, device="cpu", batch_size=batch_size)
    # Warm-up on a short waveform so one-off allocator growth is not charged to the file.
    tagger.predict_proba(np.zeros(tagger.input_samples * 2, dtype=np.float32))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    probabilities = tagger.predict_proba(audio)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = sf.info(audio).duration
    assert abs(probabilities.sum() - 1.0) < 1e-6
    print(json.dumps({"before_kib": before, "peak_kib": peak, "wall": wall, "audio": seconds}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--models", nargs="+", default=["cnn-audio", "cnn-spec"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp folder)")
    parser.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "AUDIO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, threads=args.threads, batch_size=args.batch_size)
        return 0

    with tempfile.TemporaryDirectory(prefix="wavemel-longfile-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        files = {}
        for minutes in args.minutes:
            path = work / f"long-{minutes:g}min.wav"
            if not path.exists():
                write_long_file(path, minutes)
            files[minutes] = path
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch threads {args.threads}, batch {args.batch_size}, "
            f"{INPUT_SECONDS:g} s windows, hop = window, {SAMPLE_RATE} Hz PCM-16 WAV"
        )
        header = (
            "| model | size | file | peak RSS MiB | RSS before tagging MiB | growth MiB "
            "| wall s | real-time factor |"
        )
        print(header)
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for model in args.models:
            for size in args.sizes:
                checkpoint = random_checkpoint(
                    work / f"{model}-{size}", model, size, input_seconds=INPUT_SECONDS
                )
                for minutes, path in files.items():
                    command = [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--batch-size",
                        str(args.batch_size),
                        "--child",
                        str(checkpoint),
                        str(path),
                    ]
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        print(
                            f"| {model} | {size} | {minutes:g} min | failed: {done.stderr[-300:]}"
                        )
                        continue
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    peak, before = row["peak_kib"] / 1024, row["before_kib"] / 1024
                    print(
                        f"| {model} | {size} | {minutes:g} min | {peak:.0f} | {before:.0f} "
                        f"| {peak - before:.0f} | {row['wall']:.1f} "
                        f"| {row['audio'] / row['wall']:.0f}x |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
