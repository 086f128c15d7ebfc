"""GPU check in one command: CUDA tests, AMP / channels-last / compile parity, training speed.

Run from the repository root on a CUDA machine. Sized for under 8 minutes on one H200 (not yet
timed on one): nothing new starts after ``--budget-s`` (6 minutes), and what is skipped is
listed as such::

    python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --dry-run          # every step on CPU, tiny models, seconds

Steps:

1. The test suite's CUDA tests (``pytest -k cuda``; they skip themselves without a GPU).
2. Parity, per paper-size model in eval mode on one fixed batch: float32 eager logits (TF32
   off) against bfloat16 autocast (max error within ``AMP_TOLERANCE`` of the largest logit),
   channels-last and ``torch.compile`` (both within ``FP32_TOLERANCE``).
3. Training, per model and variant (float32; bf16 AMP; bf16 + channels-last for the models
   that prefer it, as the trainer decides; bf16 + ``torch.compile``): ``--steps`` steps of the
   trainer's own ``train_one_epoch`` and ``TrainStep`` (waveform augmentation, mixup,
   soft-target loss, AdamW) on random clips from a real ``DataLoader`` with workers. The loader
   is wrapped so that every step is timed in two parts with the GPU synchronised between them:
   waiting in ``next(loader)`` and the step itself. Reported after ``--warmup`` steps
   (compilation, cuDNN autotuning): samples/s, the share of the time the GPU waited for data,
   ``torch.cuda.max_memory_allocated`` and the mean loss.

Every figure is printed as one table at the end and, with ``--out``, written as JSON. The exit
status is 1 when a test or a parity check failed or a loss was not finite, else 0; on a machine
without CUDA the script says so and exits 0 without checking anything (unless ``--dry-run``).
"""

from __future__ import annotations

import argparse
import copy
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wavemel._io import atomic_write_json  # noqa: E402
from wavemel.augment import Mixup, WaveformAugment  # noqa: E402
from wavemel.models import create_model  # noqa: E402
from wavemel.train.loader import collate_windows, shift_margin  # noqa: E402
from wavemel.train.loop import TrainStep, train_one_epoch  # noqa: E402
from wavemel.train.state import Progress  # noqa: E402

MODELS = ("cnn-audio", "cnn-spec", "cnn-comb")
NUM_CLASSES = 41  # FSDKaggle2018's label count
# Max |logits - float32 logits| / max |float32 logits|. bfloat16 keeps 8 significant bits, and
# errors add up over ~10 layers; the float32 variants only reorder sums.
AMP_TOLERANCE = 5e-2
FP32_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Variant:
    """One way of running the training step."""

    name: str
    amp: bool = False
    channels_last: bool = False
    compile: bool = False


VARIANTS = (
    Variant("fp32"),
    Variant("bf16", amp=True),
    Variant("bf16+channels-last", amp=True, channels_last=True),
    Variant("bf16+compile", amp=True, compile=True),
)


@dataclass
class Settings:
    """What the run measures and on what."""

    device: torch.device
    size: str
    sample_rate: int
    input_seconds: float
    batch: int
    steps: int
    warmup: int
    workers: int
    budget_s: float
    compile_backend: str = "inductor"
    started: float = field(default_factory=time.perf_counter)

    @property
    def input_samples(self) -> int:
        return int(round(self.input_seconds * self.sample_rate))

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.budget_s


class RandomClips(torch.utils.data.Dataset):
    """Random windows in the trainer's item format: ``(wave, soft target, weight)``."""

    def __init__(self, count: int, window: int, num_classes: int):
        self.count, self.window, self.num_classes = count, window, num_classes

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        rng = np.random.default_rng(index)
        wave = (0.1 * rng.standard_normal(self.window)).astype(np.float32)
        target = np.zeros(self.num_classes, dtype=np.float32)
        target[index % self.num_classes] = 1.0
        return wave, target, 1.0


class TimedLoader:
    """Iterates a loader, timing the wait in ``next()`` apart from the step between two calls.

    The GPU is synchronised before each ``next()``, so a step's time includes its kernels.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device):
        self.loader, self.device = loader, device
        self.waits: list[float] = []
        self.steps: list[float] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        got = None
        while True:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            asked = time.perf_counter()
            if got is not None:
                self.steps.append(asked - got)
            try:
                batch = next(batches)
            except StopIteration:
                return
            got = time.perf_counter()
            self.waits.append(got - asked)
            yield batch


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether the model says NHWC helps it (as the trainer asks before using it)."""
    return bool(getattr(model, "prefers_channels_last", False))


def build(name: str, s: Settings) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES, size=s.size, sample_rate=s.sample_rate).to(s.device)


def _compile(model: nn.Module, s: Settings) -> nn.Module:
    return torch.compile(model, backend=s.compile_backend)


def max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max |out - ref| relative to the largest reference logit."""
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def check_parity(name: str, s: Settings) -> list[dict]:
    """Eval-mode logits of each variant against float32 eager on one fixed batch."""
    model = build(name, s).eval()
    x = 0.1 * torch.randn(4, s.input_samples, generator=torch.Generator().manual_seed(1))
    x = x.to(s.device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    # TF32 convolutions (cuDNN's default) would blur the float32 reference itself.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    try:
        with torch.no_grad():
            ref = model(x).float()
            checks = [("bf16 autocast", AMP_TOLERANCE, model, True)]
            if prefers_channels_last(model):
                layout = copy.deepcopy(model).to(memory_format=torch.channels_last)
                checks.append(("channels-last", FP32_TOLERANCE, layout, False))
            checks.append(("compile", FP32_TOLERANCE, _compile(copy.deepcopy(model), s), False))
            for check, tolerance, variant, amp in checks:
                if s.over_budget():
                    rows.append(dict(model=name, check=check, status="skipped (budget)"))
                    continue
                with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=amp):
                    error = max_error(variant(x), ref)
                status = "ok" if error <= tolerance else "FAIL"
                rows.append(
                    dict(model=name, check=check, error=error, tolerance=tolerance, status=status)
                )
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return rows


def train_variant(name: str, variant: Variant, s: Settings) -> dict:
    """``s.steps`` training steps of ``name`` run as ``variant``; the figures of one row."""
    model = build(name, s)
    if variant.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    window = s.input_samples + shift_margin(s.input_samples)
    loader = torch.utils.data.DataLoader(
        RandomClips((s.steps + s.warmup) * s.batch, window, NUM_CLASSES),
        batch_size=s.batch,
        shuffle=True,
        num_workers=s.workers,
        collate_fn=collate_windows,
        pin_memory=s.device.type == "cuda",
        drop_last=True,
    )
    timed = TimedLoader(loader, s.device)
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    step = TrainStep(
        augment=WaveformAugment(s.input_samples).to(s.device),
        mixup=Mixup(0.4),
        device=s.device,
        lr_schedule=lambda step: 1e-3,
        amp_dtype=torch.bfloat16 if variant.amp else None,
        log_every=10**9,  # reading the loss for the bar would synchronise every step
    )
    trained = _compile(model, s) if variant.compile else model
    loss = train_one_epoch(trained, timed, optimizer, step, Progress())
    waits, steps = timed.waits[s.warmup :], timed.steps[s.warmup :]
    total = sum(waits) + sum(steps)
    memory = torch.cuda.max_memory_allocated(s.device) if s.device.type == "cuda" else 0
    return dict(
        model=name,
        variant=variant.name,
        steps=len(steps),
        samples_per_s=s.batch * len(steps) / total if total else float("nan"),
        data_wait_share=sum(waits) / total if total else float("nan"),
        max_memory_gib=memory / 2**30,
        loss=loss,
        status="ok" if math.isfinite(loss) else "FAIL",
    )


def run_cuda_tests(timeout_s: float) -> dict:
    """The suite's tests whose names mention CUDA, in a subprocess."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda", "tests"]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(status="FAIL", summary=f"timed out after {timeout_s:g} s")
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr.strip()[-200:]
    return dict(status="ok" if done.returncode == 0 else "FAIL", summary=summary)


def print_report(report: dict) -> None:
    s = report["settings"]
    print(
        f"\n## gpu_check: {report['device']}, {s['size']} models, batch {s['batch']}, "
        f"{s['input_seconds']:g} s at {s['sample_rate']} Hz, {s['steps']} timed steps"
    )
    print(f"CUDA tests: {report['tests']['status']} ({report['tests']['summary']})\n")
    print("| model | parity check | max error | tolerance | status |")
    print("|---|---|---:|---:|---|")
    for r in report["parity"]:
        error = f"{r['error']:.2e}" if "error" in r else "-"
        tolerance = f"{r['tolerance']:.0e}" if "tolerance" in r else "-"
        print(f"| {r['model']} | {r['check']} | {error} | {tolerance} | {r['status']} |")
    print("\n| model | variant | samples/s | data wait | max GPU memory | loss | status |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in report["training"]:
        if "samples_per_s" not in r:
            print(f"| {r['model']} | {r['variant']} | - | - | - | - | {r['status']} |")
            continue
        print(
            f"| {r['model']} | {r['variant']} | {r['samples_per_s']:,.1f} "
            f"| {100 * r['data_wait_share']:.1f}% | {r['max_memory_gib']:.2f} GiB "
            f"| {r['loss']:.3f} | {r['status']} |"
        )
    print(f"\n{report['verdict']} in {report['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--size", default="paper")
    parser.add_argument("--batch", type=int, default=32, help="clips per step (the default)")
    parser.add_argument("--input-seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader processes")
    parser.add_argument("--budget-s", type=float, default=360.0, help="start nothing after it")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest step")
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every step on CPU with tiny models and a few steps (checks the script)",
    )
    args = parser.parse_args(argv)

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing checked (--dry-run runs the "
              "script on CPU)")  # fmt: skip
        if args.out:
            atomic_write_json(args.out, {"device": None, "verdict": "skipped: no CUDA"})
        return 0
    if args.dry_run:
        # Tiny models, a few steps, no loader processes, dynamo without inductor's compiler:
        # every code path in seconds, the figures meaningless.
        s = Settings(torch.device("cpu"), "tiny", 8000, 0.5, 4, 3, 1, 0, args.budget_s, "eager")
    else:
        s = Settings(
            torch.device("cuda"), args.size, 16000, args.input_seconds, args.batch,
            args.steps, args.warmup, args.workers, args.budget_s,
        )  # fmt: skip
    if args.dry_run or args.no_tests:
        tests = dict(status="skipped", summary="--dry-run" if args.dry_run else "--no-tests")
    else:
        tests = run_cuda_tests(timeout_s=min(180.0, args.budget_s / 2))
    parity, training = [], []
    for name in args.models:
        parity += check_parity(name, s)
    for name in args.models:
        for variant in VARIANTS:
            if variant.channels_last and not prefers_channels_last(build(name, s)):
                continue
            if s.over_budget():
                training.append(dict(model=name, variant=variant.name, status="skipped (budget)"))
                continue
            training.append(train_variant(name, variant, s))
    failed = tests["status"] == "FAIL" or any(r["status"] == "FAIL" for r in parity + training)
    settings = {
        f.name: getattr(s, f.name) for f in fields(s) if f.name not in ("device", "started")
    }
    report = dict(
        device=torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "cpu",
        torch=torch.__version__,
        settings=settings,
        tests=tests,
        parity=parity,
        training=training,
        verdict="FAILED" if failed else "passed",
        seconds=time.perf_counter() - s.started,
    )
    print_report(report)
    if args.out:
        atomic_write_json(args.out, report)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
