"""Shared fixtures: where the project's shared data lives, and quiet, single-threaded torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Idle OpenMP threads must sleep rather than spin: on a shared 2-core machine spinning workers
# made a tiny training step 20-40x slower. Set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WAVEMEL_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(name: str) -> Path:
    """Path of a data set in ``../shared/data``; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (set WAVEMEL_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture
def fsdd_root() -> Path:
    return shared_path("fsdd") / "recordings"


@pytest.fixture
def fsdk18_mini_root() -> Path:
    return shared_path("fsdk18-mini")


@pytest.fixture
def fsdk18_meta_root() -> Path:
    return shared_path("fsdkaggle2018-meta")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    # Under pytest-xdist every worker is a process; one thread each avoids oversubscribing
    # the 2 CI cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
    yield
