"""Random-crop reads per second: ClipStore (memory-mapped cache) against decoding every time.

A training loader wants one ``--crop-seconds`` crop at a random position of a random clip per
example. "decode" loads and resamples the whole file (``wavemel.audio.load_audio``) and then
crops; "cache" reads just the crop from a :class:`wavemel.data.cache.ClipStore`. Both run in the
same process one after the other, on the same random sequence of clips, with the files already in
the OS page cache (a warm-up pass reads every file), so the ratio compares decoding work, not disk.

Data sets: the built-in synthetic one (16 kHz files read at 16 kHz: decode without resampling),
and ``../shared/data/fsdk18-mini`` when present (22.05 kHz files read at 16 kHz: decode +
resample, the realistic case).

    python benchmarks/cache_vs_decode.py [--seconds 3] [--fsdk18 PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from wavemel.audio import load_audio
from wavemel.data.cache import ClipStore
from wavemel.data.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


def _crop_start(rng: np.random.Generator, length: int, crop: int) -> int:
    return int(rng.integers(0, length - crop + 1)) if length > crop else 0


def bench_decode(paths, rate, crop, seconds, seed):
    rng = np.random.default_rng(seed)
    reads, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        samples = load_audio(paths[int(rng.integers(len(paths)))], rate)
        start = _crop_start(rng, len(samples), crop)
        _ = samples[start : start + crop].copy()
        reads += 1
    return reads / (time.perf_counter() - started)


def bench_cache(store, crop, seconds, seed):
    rng = np.random.default_rng(seed)
    reads, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        i = int(rng.integers(len(store)))
        _ = store.read(i, _crop_start(rng, store.length(i), crop), crop)
        reads += 1
    return reads / (time.perf_counter() - started)


def run_one(name, paths, rate, args, cache_dir):
    for path in paths:  # warm the page cache so that both methods read from memory
        path.read_bytes()
    started = time.perf_counter()
    store = ClipStore.build(paths, rate, cache_dir, progress=False, workers=args.workers)
    build_seconds = time.perf_counter() - started
    store.read(0, 0, 1)
    crop = int(round(args.crop_seconds * rate))
    decode = bench_decode(paths, rate, crop, args.seconds, args.seed)
    cache = bench_cache(store, crop, args.seconds, args.seed)
    hours = store.total_samples / rate / 3600
    print(
        f"| {name} | {len(paths)} | {hours * 60:.1f} min | {build_seconds:.1f} s "
        f"| {decode:,.0f} | {cache:,.0f} | {cache / decode:,.0f}x |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per method and set")
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--clips-per-class", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads for the build")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fsdk18",
        type=Path,
        default=REPO.parent / "shared" / "data" / "fsdk18-mini",
        help="FSDKaggle2018-layout folder whose audio_train clips are benchmarked too, if present",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(
            f"random {args.crop_seconds:g} s crops at {args.sample_rate} Hz, "
            f"{args.seconds:g} s per method; clips/s"
        )
        print("| data | clips | audio | cache build | decode clips/s | cache clips/s | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        synthetic = generate(tmp / "synthetic", clips_per_class=args.clips_per_class)
        paths = sorted(synthetic.rglob("*.wav"))
        run_one("synthetic (16 kHz files)", paths, args.sample_rate, args, tmp / "cache")
        train = args.fsdk18 / "FSDKaggle2018.audio_train"
        if train.is_dir():
            paths = sorted(train.glob("*.wav"))
            run_one("fsdk18-mini (22.05 kHz files)", paths, args.sample_rate, args, tmp / "cache")


if __name__ == "__main__":
    main()
