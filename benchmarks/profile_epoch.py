"""Where a cpu-preset-like training run spends its time, phase by phase, measured from outside.

Runs ``wavemel.train.train`` once per ``--val-every`` value, one after the other in one process
(the cpu preset's model size, sample rate, batch size, learning rate, mixup, validation split and
in-process loading; a short run: 4 epochs by default) on the built-in synthetic
data or on a dataset given with ``--data``, with timers put around the loop's pieces by
monkeypatching (``wavemel/train/loop.py`` itself is untouched):

* prepare data: ``prepare_data`` (index, split, clip cache build; once per run);
* data loading: each ``next()`` on the epoch's DataLoader (cache reads, crops, collation);
* augment + mixup: ``TrainStep.inputs`` (shift/crop/pad/replicate, mixup);
* forward: the model's ``forward`` during training steps, with the front end (cnn-spec's log-mel,
  inside the forward) shown apart;
* loss, backward (``Tensor.backward``), optimizer (``GradScaler.step``, i.e. AdamW);
* validation: ``validate`` (cache reads + whole-clip windows through the model);
* checkpointing: ``save_checkpoint``, ``save_state`` and the metrics line;
* other: the rest of the epochs (LR schedule, zero_grad, progress bar, loss bookkeeping).

Timers use ``time.perf_counter``; on CPU every torch call is synchronous, so phases do not leak
into each other. Prints one table (seconds, share of the epochs, share of the run) and writes the
same figures as JSON.

    python benchmarks/profile_epoch.py --model cnn-spec --epochs 4 --val-every 1 2 \
        --json profile_epoch.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

# Phases inside an epoch, in table order; "forward" includes "front end" (shown indented).
EPOCH_PHASES = (
    "data loading",
    "augment + mixup",
    "forward",
    "loss",
    "backward",
    "optimizer",
    "validation",
    "checkpointing",
)
CORE = ("forward", "backward")


class PhaseClock:
    """Seconds and calls per phase; a phase timed while another named one runs is skipped."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.running: set[str] = set()

    def reset(self) -> None:
        """Forget every figure (before the next run of the same instrumented process)."""
        self.seconds.clear()
        self.calls.clear()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.calls[name] += 1

    def wrap(self, name: str, function: Callable, unless: str | None = None) -> Callable:
        """``function`` timed into ``name`` (not while ``unless`` runs: e.g. validation)."""

        @functools.wraps(function)
        def timed(*args, **kwargs):
            if unless in self.running:
                return function(*args, **kwargs)
            self.running.add(name)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)
                self.running.discard(name)

        return timed

    def hook_module(self, name: str, module: torch.nn.Module, unless: str) -> None:
        """Time ``module``'s forward calls into ``name`` with forward (pre-)hooks."""
        starts: list[float] = []

        def before(*_):
            starts.append(time.perf_counter())

        def after(*_):
            start = starts.pop()
            if unless not in self.running:
                self.add(name, time.perf_counter() - start)

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)


class _TimedLoader:
    """A DataLoader whose every ``next()`` is timed; ``len`` and attributes pass through."""

    def __init__(self, loader, clock: PhaseClock) -> None:
        self._loader = loader
        self._clock = clock

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __iter__(self):
        iterator = iter(self._loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._clock.add("data loading", time.perf_counter() - start)
            yield batch


def instrument(clock: PhaseClock) -> None:
    """Put the timers around the loop's pieces (module globals and classes it uses)."""
    from wavemel.train import loop

    loop.prepare_data = clock.wrap("prepare data", loop.prepare_data)
    for name in ("init_distributed", "open_run", "start_run", "_report_end", "cleanup"):
        setattr(loop, name, clock.wrap("run folder + setup", getattr(loop, name)))
    loop.train_one_epoch = clock.wrap("train epoch", loop.train_one_epoch)
    loop.validate = clock.wrap("validation", loop.validate)
    loop.save_checkpoint = clock.wrap("checkpointing", loop.save_checkpoint)
    loop.save_state = clock.wrap("checkpointing", loop.save_state)
    loop._append_metrics = clock.wrap("checkpointing", loop._append_metrics)
    loop.soft_cross_entropy = clock.wrap("loss", loop.soft_cross_entropy)
    loop.TrainStep.inputs = clock.wrap("augment + mixup", loop.TrainStep.inputs)
    torch.Tensor.backward = clock.wrap("backward", torch.Tensor.backward, unless="validation")
    torch.amp.GradScaler.step = clock.wrap("optimizer", torch.amp.GradScaler.step)

    make_loader = loop._make_loader

    def timed_make_loader(*args, **kwargs):
        loader, dataset, sampler = make_loader(*args, **kwargs)
        return _TimedLoader(loader, clock), dataset, sampler

    loop._make_loader = timed_make_loader

    build_model = loop.build_model

    def timed_build_model(*args, **kwargs):
        start = time.perf_counter()
        model = build_model(*args, **kwargs)
        clock.add("model build", time.perf_counter() - start)
        clock.hook_module("forward", model, unless="validation")
        frontend = getattr(model, "frontend", None)
        if isinstance(frontend, torch.nn.Module):
            clock.hook_module("front end", frontend, unless="validation")
        return model

    loop.build_model = timed_build_model


def table(clock: PhaseClock, total: float) -> tuple[str, dict]:
    """The Markdown table and the JSON figures (shares of the epochs and of the whole run)."""
    seconds = clock.seconds
    epochs = seconds["train epoch"] + seconds["validation"] + seconds["checkpointing"]
    inside = sum(seconds[p] for p in EPOCH_PHASES if p not in ("validation", "checkpointing"))
    rows = [(p, seconds[p]) for p in EPOCH_PHASES]
    rows.insert(rows.index(("forward", seconds["forward"])) + 1, ("  of which front end", 0.0))
    rows.append(("other (in the epochs)", seconds["train epoch"] - inside))
    lines = ["| phase | calls | s | share of epochs | share of run |", "|---|---:|---:|---:|---:|"]
    figures: dict = {"phases": {}}
    for name, value in rows:
        key = name.strip()
        if key == "of which front end":
            value, calls = seconds["front end"], clock.calls["front end"]
        else:
            calls = clock.calls.get(key, "")
        lines.append(
            f"| {name} | {calls} | {value:.2f} | {value / epochs:.1%} | {value / total:.1%} |"
        )
        figures["phases"][key] = {"seconds": value, "share_of_epochs": value / epochs}
    outside = epochs - sum(seconds[p] for p in CORE)
    outside_opt = outside - seconds["optimizer"]
    prepare = seconds["prepare data"]
    lines.append(f"| epochs (sum of the above) | | {epochs:.2f} | 100% | {epochs / total:.1%} |")
    once = ("prepare data", "model build", "run folder + setup")
    for name in once:
        lines.append(f"| {name} (once) | | {seconds[name]:.2f} | | {seconds[name] / total:.1%} |")
    rest = total - epochs - sum(seconds[name] for name in once)
    lines += [
        f"| rest of `train()` | | {rest:.2f} | | {rest / total:.1%} |",
        f"| whole run | | {total:.2f} | | 100% |",
        "",
        f"outside forward/backward: {outside:.2f} s = {outside / epochs:.1%} of the epochs "
        f"({outside_opt / epochs:.1%} without the optimizer step)",
    ]
    figures.update(
        epochs_seconds=epochs,
        run_seconds=total,
        prepare_seconds=prepare,
        outside_forward_backward_share=outside / epochs,
        outside_forward_backward_optimizer_share=outside_opt / epochs,
    )
    return "\n".join(lines), figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset root (default: synthetic, generated)")
    parser.add_argument("--clips-per-class", type=int, default=25, help="synthetic data size")
    parser.add_argument("--model", default="cnn-spec", choices=("cnn-audio", "cnn-spec"))
    parser.add_argument("--size", default="small", help="cpu preset: small")
    parser.add_argument("--input-seconds", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--val-every",
        type=int,
        nargs="+",
        default=None,
        help="validate every N epochs; several values run one after the other, side by side "
        "(default: the cpu preset's)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("profile_epoch.json"))
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json")
    args = parser.parse_args()
    if args.json.exists() and not args.force:
        print(f"{args.json}: already exists (use --force to overwrite it)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from wavemel.data.synthetic import generate
    from wavemel.study.presets import PRESETS
    from wavemel.train import loop
    from wavemel.train.config import TrainConfig

    preset = PRESETS["cpu"]
    clock = PhaseClock()
    instrument(clock)
    results = []
    with tempfile.TemporaryDirectory(prefix="wavemel-profile-") as tmp:
        data = args.data or generate(
            Path(tmp) / "synthetic", clips_per_class=args.clips_per_class, sample_rate=16000
        )
        for every in args.val_every or [preset.val_every]:
            clock.reset()
            config = TrainConfig(
                model=args.model,
                size=args.size,
                data=str(data),
                out=str(Path(tmp) / f"run-val-every-{every}"),
                sample_rate=preset.sample_rate,
                input_seconds=args.input_seconds,
                epochs=args.epochs,
                batch_size=preset.batch_size,
                lr=preset.lr,
                mixup_alpha=preset.mixup_alpha,
                patience=preset.patience,
                workers=preset.workers,
                # The preset's split: a tenth of the training clips validates.
                folds=preset.val_folds,
                val_every=every,
                device="cpu",
                cache_dir=str(Path(tmp) / "cache"),
            )
            load = os.getloadavg()
            started = time.perf_counter()
            loop.train(config)
            total = time.perf_counter() - started
            text, figures = table(clock, total)
            after = os.getloadavg()
            print(
                f"# {args.model} {args.size}, {args.input_seconds:g} s at {preset.sample_rate} "
                f"Hz, batch {preset.batch_size}, mixup {preset.mixup_alpha}, {args.epochs} "
                f"epochs, validation every {every}, data {args.data or 'synthetic'}; "
                f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; load average "
                f"{load[0]:.1f} before, {after[0]:.1f} after"
            )
            print(text + "\n")
            figures.update(
                model=args.model,
                size=args.size,
                epochs=args.epochs,
                val_every=every,
                data=str(args.data or "synthetic"),
                threads=torch.get_num_threads(),
                load_average=[load[0], after[0]],
            )
            results.append(figures)
    for figures in results:
        print(
            f"validation every {figures['val_every']}: epochs {figures['epochs_seconds']:.1f} s, "
            f"outside forward/backward {figures['outside_forward_backward_share']:.1%}"
        )
    args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
