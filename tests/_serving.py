"""Helpers for the serve tests: a tiny checkpoint and a real uvicorn server on a free port."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.checkpoint import save_checkpoint
from wavemel.models import create_model

RATE = 8000
LABELS = ["bark", "meow", "siren", "speech"]


def make_run(folder):
    """A run folder with an untrained tiny cnn-audio (fast; its answers are still deterministic)."""
    torch.manual_seed(0)
    model = create_model("cnn-audio", len(LABELS), size="tiny", sample_rate=RATE).eval()
    meta = {"labels": LABELS, "sample_rate": RATE, "input_seconds": 1.0}
    save_checkpoint(folder / "best", model, meta)
    return folder


def write_clip(path, seconds, seed, rate=RATE, **kwargs):
    """A noise clip whose colour depends on ``seed`` (different clips get different tags)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(int(seconds * rate))
    smooth = np.convolve(noise, np.ones(1 + seed % 7) / (1 + seed % 7), mode="same")
    sf.write(path, (0.3 * smooth).astype(np.float32), rate, **kwargs)
    return path


class LiveServer:
    """uvicorn serving ``app`` in a thread on 127.0.0.1 (a socket bound to port 0: no race)."""

    def __init__(self, app) -> None:
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self._thread.start()
        # Bounded wait for start-up (model already loaded): a server that never starts fails.
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(60)
        self._socket.close()
