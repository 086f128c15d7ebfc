"""Load test of ``wavemel serve`` on loopback: throughput, latency and the service's peak memory.

Starts ``wavemel serve`` in a SUBPROCESS on 127.0.0.1 (a randomly initialised checkpoint unless
``--run`` is given: weights do not matter for speed), then for every clip length and number of
concurrent clients sends a fixed number of ``POST /v1/tag`` requests and stops. Every reply is
checked against the tags that :class:`wavemel.infer.Tagger` gives the same clip in this process
(several distinct clips per length, so a reply answered with another request's clip is caught);
one lost or wrong reply makes the exit status 1.

Prints one row per (clip length, clients): requests/s, p50 and p99 latency, and at the end the
service's peak resident set size (``VmHWM`` of its process).

    python benchmarks/serve_load.py --seconds 2 10 --clients 1 4 16 --requests 48
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _checkpoints import random_checkpoint  # benchmarks/ is on sys.path

SAMPLE_RATE = 16000
NUM_CLASSES = 41  # FSDKaggle2018
INPUT_SECONDS = 1.0
CLIPS_PER_LENGTH = 4


def make_clip(seconds: float, seed: int) -> bytes:
    """A WAV of a tone plus noise whose pitch depends on ``seed``."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    signal = 0.3 * np.sin(2 * np.pi * (200 + 400 * seed) * t) + 0.1 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    sf.write(buffer, signal.astype(np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_service(run: Path, port: int, threads: int) -> subprocess.Popen:
    """``wavemel serve`` in a child process; returns once ``/healthz`` answers (or fails)."""
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "wavemel", "serve", str(run), "--port", str(port)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    child = subprocess.Popen([*command, "--device", "cpu"], env=env, **quiet)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            sys.exit(f"serve_load: the service exited with status {child.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return child
        except httpx.TransportError:
            time.sleep(0.2)
    child.kill()
    sys.exit("serve_load: the service did not start within 120 s")


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` (peak resident set) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


TOP_K = 5  # the service's default --top-k
TOLERANCE = 1e-4  # batched and single-window float sums differ in the last bits


def correct(tags: list[dict], probabilities: dict[str, float]) -> bool:
    """Whether ``tags`` are the clip's top-k with its probabilities (near-ties may swap)."""
    ranked = sorted(probabilities.values(), reverse=True)
    return (
        len(tags) == TOP_K
        and all(abs(t["score"] - probabilities[t["label"]]) < TOLERANCE for t in tags)
        and min(t["score"] for t in tags) >= ranked[TOP_K] - TOLERANCE
    )


def load(url: str, clips: list[bytes], expected: list[dict], clients: int, requests: int):
    """Send ``requests`` uploads from ``clients`` threads; ``(rps, p50 s, p99 s, failures)``."""
    import httpx

    def one(index: int) -> tuple[float, bool]:
        clip = index % len(clips)
        began = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            reply = client.post(url, files={"file": (f"clip{clip}.wav", clips[clip])})
        latency = time.perf_counter() - began
        return latency, reply.status_code == 200 and correct(reply.json()["tags"], expected[clip])

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - began
    latencies = np.array([latency for latency, _ in results])
    failures = sum(1 for _, ok in results if not ok)
    return requests / wall, np.percentile(latencies, 50), np.percentile(latencies, 99), failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: random init)")
    parser.add_argument("--model", default="cnn-spec", help="family of the random checkpoint")
    parser.add_argument("--size", default="small", help="size of the random checkpoint")
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 10.0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="requests per row")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the service")
    args = parser.parse_args()

    from wavemel.infer import Tagger

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            random_checkpoint(run / "best", args.model, args.size, input_seconds=INPUT_SECONDS)
        tagger = Tagger.from_checkpoint(run, device="cpu")
        port = free_port()
        service = start_service(run, port, args.threads)
        url = f"http://127.0.0.1:{port}/v1/tag"
        lost = 0
        try:
            print(f"service pid {service.pid}, {run}, {args.requests} requests per row")
            print("| clip | clients | requests/s | p50 latency s | p99 latency s | failed |")
            print("|---:|---:|---:|---:|---:|---:|")
            for seconds in args.seconds:
                clips = [make_clip(seconds, seed) for seed in range(CLIPS_PER_LENGTH)]
                expected = []
                for clip in clips:
                    path = Path(tmp) / "expected.wav"
                    path.write_bytes(clip)
                    expected.append(dict(zip(tagger.labels, tagger.predict_proba(path))))
                for clients in args.clients:
                    rps, p50, p99, failed = load(url, clips, expected, clients, args.requests)
                    lost += failed
                    print(
                        f"| {seconds:g} s | {clients} | {rps:.1f} | {p50:.3f} | {p99:.3f} | "
                        f"{failed} |",
                        flush=True,
                    )
            print(f"service peak RSS: {peak_rss_mib(service.pid):.0f} MiB")
        finally:
            service.terminate()
            service.wait(timeout=60)
    if lost:
        print(f"serve_load: {lost} replies were lost or wrong", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
