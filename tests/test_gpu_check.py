"""benchmarks/gpu_check.py: its CPU dry run covers every step, and a CPU-only machine is told so."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_dry_run_exercises_parity_and_every_training_variant(tmp_path):
    out = tmp_path / "check.json"
    done = _run("--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["verdict"] == "passed" and report["tests"]["status"] == "skipped"
    checks = {(r["model"], r["check"]) for r in report["parity"]}
    for model in ("cnn-audio", "cnn-spec", "cnn-comb"):
        assert {(model, "bf16 autocast"), (model, "compile")} <= checks
    # Channels-last only where there are 2-D convolutions for it to change.
    assert ("cnn-spec", "channels-last") in checks and ("cnn-audio", "channels-last") not in checks
    assert all(r["error"] <= r["tolerance"] for r in report["parity"])
    variants = {(r["model"], r["variant"]) for r in report["training"]}
    assert ("cnn-comb", "bf16+compile") in variants and ("cnn-spec", "fp32") in variants
    for row in report["training"]:
        assert row["steps"] == report["settings"]["steps"]
        assert row["samples_per_s"] > 0 and 0 <= row["data_wait_share"] <= 1
        assert row["status"] == "ok"
    # The same figures are printed as the final table.
    assert "| cnn-comb | bf16+compile |" in done.stdout and "passed in" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_it_says_so_and_exits_zero(tmp_path):
    out = tmp_path / "check.json"
    done = _run("--out", str(out))
    assert done.returncode == 0
    assert "no CUDA device" in done.stdout and "Traceback" not in done.stderr
    assert json.loads(out.read_text())["verdict"] == "skipped: no CUDA"


def test_timed_loader_times_each_batch_once_and_yields_all():
    gpu_check = _load_script()
    timed = gpu_check.TimedLoader([1, 2, 3], torch.device("cpu"))
    assert list(timed) == [1, 2, 3] and len(timed) == 3
    assert len(timed.waits) == 3 and len(timed.steps) == 3
    assert all(t >= 0 for t in timed.waits + timed.steps)


def test_max_error_is_relative_to_the_largest_reference_logit():
    gpu_check = _load_script()
    ref = torch.tensor([[1.0, -2.0]])
    assert gpu_check.max_error(torch.tensor([[1.1, -2.0]]), ref) == pytest.approx(0.05)
    assert gpu_check.max_error(ref.clone(), ref) == 0.0
