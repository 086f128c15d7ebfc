"""Tagging a folder of short files: decoding in order vs decoding ahead, against the model alone.

Saves a randomly initialised checkpoint per model (weights do not change speed), then, for each,
measures in one process, one after the other and repeated in alternation so that a change in the
machine's load hits both alike:

* ``model only``: the folder decoded beforehand (``load_audio`` at the model's rate), then only the
  windows through the model (``predict_waveforms``, same batch size): the ceiling;
* ``workers 0``: ``Tagger.predict_many`` on the files, each decoded when its turn comes (before);
* ``workers N``: the same with ``decode_workers=N`` (after);
* ``decode only``: the tagger's reading path alone (blocks read and dropped), with 0 and N
  workers: what decoding costs and how much of it the threads take off the main thread;

``--workers`` defaults to ``min(4, cores)``, not to the CLI's device-dependent default. And,
unless ``--no-cli``, the whole ``wavemel predict FOLDER --json`` command (start-up included)
with ``--decode-workers 0`` and ``N``, each in a fresh subprocess. The load average is printed
before and after: on a shared machine it says what else was running.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/tag_folder.py \
        --folder /work/shared/data/fsdk18-mini/FSDKaggle2018.audio_test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _checkpoints import random_checkpoint  # benchmarks/ is on sys.path

SAMPLE_RATE = 16000
NUM_CLASSES = 41  # FSDKaggle2018
INPUT_SECONDS = 2.0
DEFAULT_FOLDER = Path("/work/shared/data/fsdk18-mini/FSDKaggle2018.audio_test")


def _timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def measure(
    run: Path, files: list[Path], workers: int, batch_size: int, rounds: int, device: str
) -> dict:
    """Median seconds over ``rounds`` of each in-process way (run in alternation), and all runs."""
    from wavemel.audio import load_audio
    from wavemel.errors import EmptyClipWarning
    from wavemel.infer import Tagger, predict_waveforms

    options = {"device": device, "batch_size": batch_size}
    before = Tagger.from_checkpoint(run, **options, decode_workers=0)
    after = Tagger.from_checkpoint(run, **options, decode_workers=workers)
    waveforms = []
    for path in files:
        try:
            waveforms.append(load_audio(path, before.sample_rate))
        except Exception:  # noqa: BLE001 - a bad file is skipped by all three alike
            continue
    audio_seconds = sum(w.shape[0] for w in waveforms) / before.sample_rate

    def model_only():
        return predict_waveforms(
            before.model, waveforms, input_samples=before.input_samples, batch_size=batch_size
        )

    def tag(tagger):
        return lambda: [p for _, p, _ in tagger.predict_many(files)]

    def decode(tagger):
        def read_all():
            _, blocks_of, close = tagger._reader(files)
            try:
                for index in range(len(files)):
                    try:
                        for _ in blocks_of(index):
                            pass
                    except Exception:  # noqa: BLE001 - bad files cost what they cost
                        continue
            finally:
                close()

        return read_all

    ways = {
        "model only": model_only,
        "workers 0": tag(before),
        f"workers {workers}": tag(after),
        "decode only, workers 0": decode(before),
        f"decode only, workers {workers}": decode(after),
    }
    runs: dict[str, list[float]] = {name: [] for name in ways}
    answers = {}
    model_only()  # warm-up: allocator growth and first-call costs are not charged to a way
    warnings.simplefilter("ignore", EmptyClipWarning)  # the folder's two empty files
    for _ in range(rounds):
        for name, way in ways.items():
            seconds, answers[name] = _timed(way)
            runs[name].append(seconds)
    same = all(
        (a is None and b is None) or np.array_equal(a, b)
        for a, b in zip(answers["workers 0"], answers[f"workers {workers}"])
    )
    median = {name: float(np.median(times)) for name, times in runs.items()}
    return {"seconds": median, "runs": runs, "audio_seconds": audio_seconds, "identical": same}


def cli_seconds(run: Path, target: Path, workers: int, device: str) -> float:
    """Wall time of a fresh ``wavemel predict TARGET --json`` (start-up, loading and tagging)."""
    command = [sys.executable, "-m", "wavemel", "predict", str(run), str(target), "--json"]
    command += ["--device", device, "--decode-workers", str(workers)]
    seconds, done = _timed(lambda: subprocess.run(command, capture_output=True, check=False))
    if done.returncode not in (0, 1):  # 1: some files could not be tagged (reported)
        raise RuntimeError(done.stderr.decode(errors="replace")[-500:])
    return seconds


def main() -> int:
    import torch

    from wavemel.data.files import find_audio_files

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--models", nargs="+", default=["cnn-spec", "cnn-comb"])
    parser.add_argument("--size", default="small")
    # Not default_decode_workers(): on the CPU that is often 0, the "before" column again.
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating repeats (median)")
    parser.add_argument("--no-cli", action="store_true", help="skip the wavemel predict runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not args.folder.is_dir():
        print(f"{args.folder}: no such folder (pass --folder)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    files, _ = find_audio_files([args.folder])
    load = os.getloadavg()
    print(
        f"# {len(files)} files in {args.folder}; {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, batch {args.batch_size}, {INPUT_SECONDS:g} s windows at "
        f"{SAMPLE_RATE} Hz, {args.size} random-init, device {args.device}; load average before "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    print("| model | way | s (median) | files/s | audio s/s | vs model only |")
    print("|---|---|---:|---:|---:|---:|")
    report = []
    with tempfile.TemporaryDirectory(prefix="wavemel-tagfolder-") as tmp:
        for model in args.models:
            run = Path(tmp) / f"{model}-{args.size}"
            random_checkpoint(run / "best", model, args.size, input_seconds=INPUT_SECONDS)
            row = measure(run, files, args.workers, args.batch_size, args.rounds, args.device)
            ceiling = row["seconds"]["model only"]
            for way, seconds in row["seconds"].items():
                share = "" if way.startswith("decode") else f"{ceiling / seconds:.0%}"
                print(
                    f"| {model} | {way} | {seconds:.2f} | {len(files) / seconds:.0f} "
                    f"| {row['audio_seconds'] / seconds:.0f} | {share} |",
                    flush=True,
                )
            if not args.no_cli:
                # One short file: what start-up (imports, checkpoint, first batch) costs alone.
                startup = cli_seconds(run, files[0], 0, args.device)
                print(f"| {model} | `wavemel predict` on one file (start-up) | {startup:.2f} |||")
                row["cli"] = {"one file": startup}
                for workers in (0, args.workers):
                    seconds = cli_seconds(run, args.folder, workers, args.device)
                    row["cli"][workers] = seconds
                    print(
                        f"| {model} | `wavemel predict --decode-workers {workers}` (start-up "
                        f"included) | {seconds:.2f} | {len(files) / seconds:.0f} "
                        f"| {row['audio_seconds'] / seconds:.0f} | |",
                        flush=True,
                    )
            print(f"# {model}: workers 0 and {args.workers} identical: {row['identical']}")
            report.append({"model": model, **row})
    load = os.getloadavg()
    print(f"# load average after {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["identical"] for r in report) else 1


if __name__ == "__main__":
    raise SystemExit(main())
