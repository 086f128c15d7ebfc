"""The quickstart tour's work: the built-in data, the three networks and their scores.

1. :func:`prepare_data` generates the built-in synthetic sound-event dataset into ``OUT/data``
   and :func:`inspect_data` reports on it;
2. :func:`train_and_score` trains cnn-audio and cnn-spec on three of its five folds (one more
   chooses the epochs)
   (``OUT/runs/cnn-audio``, ``OUT/runs/cnn-spec``), combines them into cnn-comb, training only the
   new head (``OUT/runs/cnn-comb``), and scores the three networks on the held-out fold;
3. :func:`write_summary` writes ``OUT/summary.json``.

Finished runs are reused when the command is repeated with the same settings, an interrupted run
is resumed, and a run made with other settings is only replaced with ``force``.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wavemel._io import atomic_write_json
from wavemel.data.adapters import load_dataset
from wavemel.data.inspect import inspect_dataset
from wavemel.data.synthetic import generate, is_synthetic_dataset
from wavemel.errors import DataError, WavemelError
from wavemel.evaluate import evaluate_run
from wavemel.train import CombineConfig, TrainConfig, combine, train
from wavemel.train.run_folder import config_differences, inspect_run_folder

__all__ = [
    "SPLIT_NOTE",
    "TourSettings",
    "inspect_data",
    "prepare_data",
    "say",
    "train_and_score",
    "write_summary",
]

#: The split every quickstart score is on.
SPLIT_NOTE = "held-out fold 0 of 5 (epochs chosen on fold 1)"


def say(message: str) -> None:
    """A progress note on stderr."""
    # Progress notes go to stderr so that stdout carries only the reports.
    print(f"[quickstart] {message}", file=sys.stderr, flush=True)


def prepare_data(
    out: Path, *, force: bool = False, clips_per_class: int = 40, seed: int = 0
) -> Path:
    """Generate (or reuse) the built-in dataset in ``out/data``.

    Args:
        out: The quickstart's output folder.
        force: Replace ``out/data`` when it holds a built-in dataset made with other settings.
            A folder that is not a built-in dataset is never removed.
        clips_per_class: Clips per class.
        seed: Dataset seed.

    Returns:
        The dataset root (folder-per-class layout).

    Raises:
        DataError: ``out/data`` exists with other content (and ``force`` does not apply).
    """
    data = out / "data"
    try:
        return generate(data, clips_per_class=clips_per_class, seed=seed)
    except DataError as exc:
        # Only our own earlier output may go, never a user's folder that happens to be there.
        ours = is_synthetic_dataset(data)
        if not (force and ours):
            hint = " (an earlier quickstart's dataset: --force replaces it)" if ours else ""
            raise DataError(f"{exc}{hint}") from None
        say(f"--force: removing {data} (built-in dataset made with other settings)")
        shutil.rmtree(data)
        return generate(data, clips_per_class=clips_per_class, seed=seed)


def inspect_data(root: Path) -> dict[str, Any]:
    """Load ``root`` as a folder-per-class dataset and return its inspection report."""
    return inspect_dataset(load_dataset(root, format="folder"))


def _train_or_reuse(config: TrainConfig | CombineConfig, force: bool) -> Path:
    """Train the run described by ``config``, resume it when interrupted, reuse it when finished.

    Raises:
        WavemelError: The folder holds a run made with other settings (and no ``force``).
    """
    run_dir = Path(config.out)
    status = inspect_run_folder(run_dir)
    if status.is_run and not force:
        # Fields left None (cnn-comb's split settings) are filled from the branch runs when
        # training starts, so only the settings given here are compared.
        changed = config_differences(run_dir, config.to_dict(), ignore=("force", "resume"))
        if changed:
            raise WavemelError(
                f"{run_dir}: a run made with other settings ({', '.join(changed)}); "
                "use --force to retrain or --out to choose another folder"
            )
        if status.kind == "finished":
            say(f"reusing the finished run {run_dir}")
            return run_dir
    resume = status.kind == "interrupted" and not force
    if resume:
        say(f"resuming the interrupted run {run_dir}")
    config = config.replace(force=status.is_run and not resume, resume=resume)
    if isinstance(config, CombineConfig):
        return combine(config)
    return train(config)


@dataclass(frozen=True)
class TourSettings:
    """What the quickstart trains (the command's flags).

    Attributes:
        size: model size of both branches.
        epochs: epochs per branch.
        comb_epochs: epochs of cnn-comb's head.
        input_seconds: training input length in seconds.
        seed: split and training seed.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    size: str = "small"
    epochs: int = 15
    comb_epochs: int = 6
    input_seconds: float = 1.0
    seed: int = 0
    device: str = "auto"


def train_and_score(
    data: Path, out: Path, settings: TourSettings = TourSettings(), *, force: bool = False
) -> dict[str, dict[str, Any]]:
    """Train cnn-audio and cnn-spec on ``data``, combine them and score all three.

    Fold 0 of 5 (stratified) is held out: no run trains on it or chooses an epoch with it (fold
    1 validates), and it is the split the table reports, so model selection never sees the
    clips that are scored.

    Args:
        data: the built-in dataset's root (folder-per-class).
        out: the quickstart's output folder (runs in ``out/runs``, clip cache in ``out/cache``).
        settings: sizes and schedules.
        force: retrain runs made with other settings instead of refusing.

    Returns:
        ``{model name: evaluation dict}`` as returned by :func:`wavemel.evaluate.evaluate_run`.
    """
    size, epochs, comb_epochs = settings.size, settings.epochs, settings.comb_epochs
    input_seconds, seed, device = settings.input_seconds, settings.seed, settings.device
    data, out = data.resolve(), out.resolve()
    runs = out / "runs"
    cache = str(out / "cache")
    common = dict(
        data=str(data),
        format="folder",
        size=size,
        sample_rate=16000,
        input_seconds=input_seconds,
        epochs=epochs,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=1.0,
        folds=5,
        fold=1,
        test_fold=0,
        seed=seed,
        patience=0,
        device=device,
        workers=0,
        cache_dir=cache,
    )
    run_dirs = {}
    for model in ("cnn-audio", "cnn-spec"):
        say(f"training {model} ({size}, {epochs} epochs, {input_seconds:g} s input)")
        config = TrainConfig(model=model, out=str(runs / model), **common)
        run_dirs[model] = _train_or_reuse(config, force)
    say(f"training cnn-comb's head ({comb_epochs} epochs; both branches frozen)")
    comb = CombineConfig(
        audio_run=str(run_dirs["cnn-audio"]),
        spec_run=str(run_dirs["cnn-spec"]),
        out=str(runs / "cnn-comb"),
        epochs=comb_epochs,
        lr=2e-3,
        patience=0,
        device=device,
        workers=0,
        cache_dir=cache,
    )
    run_dirs["cnn-comb"] = _train_or_reuse(comb, force)
    results = {}
    for model, run_dir in run_dirs.items():
        say(f"scoring {model} on the held-out fold")
        results[model] = evaluate_run(run_dir, split="heldout", device=device)
    return results


def write_summary(out: Path, results: dict[str, dict[str, Any]], wall_seconds: float) -> dict:
    """Write ``out/summary.json`` (atomically): the wall time and each network's scores."""
    summary = {
        "wall_seconds": round(wall_seconds, 1),
        "split": SPLIT_NOTE,
        "results": {
            model: {"map3": r["map3"], "top1": r["top1"], "n_clips": r["n_clips"]}
            for model, r in results.items()
        },
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
