"""``wavemel quickstart``: the whole tour on built-in data, no download needed.

1. generates the built-in synthetic sound-event dataset into ``OUT/data`` and prints its
   inspection report;
2. trains cnn-audio and cnn-spec on four of its five folds (``OUT/runs/cnn-audio``,
   ``OUT/runs/cnn-spec``);
3. combines them into cnn-comb, training only the new head (``OUT/runs/cnn-comb``);
4. scores the three networks on the held-out fold and prints a MAP@3 table
   (``OUT/summary.json``).

Finished runs are reused when the command is repeated with the same settings, an interrupted run
is resumed, and a run made with other settings is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("quickstart-runs")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="generate the built-in dataset and walk through wavemel on it",
        description="Generate the built-in synthetic dataset into OUT/data and print its "
        "inspection report: the whole tour on built-in data, no download needed.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for the data and runs (default: {DEFAULT_OUT}/)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a previous quickstart's output made with other settings",
    )
    parser.add_argument(
        "--clips-per-class",
        type=int,
        default=40,
        metavar="N",
        help="clips per class in the built-in dataset (default: 40)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    parser.add_argument(
        "--size",
        choices=("tiny", "small"),
        default="small",
        help="model size of both branches (default: small)",
    )
    parser.add_argument("--epochs", type=int, default=15, help="epochs per branch (default: 15)")
    parser.add_argument(
        "--comb-epochs", type=int, default=6, help="epochs of cnn-comb's head (default: 6)"
    )
    parser.add_argument(
        "--input-seconds",
        type=float,
        default=1.0,
        help="training input length in seconds (default: 1.0)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--data-only", action="store_true", help="only generate and inspect the dataset"
    )
    parser.set_defaults(func=run)


def _say(message: str) -> None:
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
    from wavemel.data.synthetic import generate, is_synthetic_dataset
    from wavemel.errors import DataError

    data = out / "data"
    try:
        return generate(data, clips_per_class=clips_per_class, seed=seed)
    except DataError as exc:
        # Only our own earlier output may go, never a user's folder that happens to be there.
        ours = is_synthetic_dataset(data)
        if not (force and ours):
            hint = " (an earlier quickstart's dataset: --force replaces it)" if ours else ""
            raise DataError(f"{exc}{hint}") from None
        _say(f"--force: removing {data} (built-in dataset made with other settings)")
        shutil.rmtree(data)
        return generate(data, clips_per_class=clips_per_class, seed=seed)


def inspect_data(root: Path) -> dict[str, Any]:
    """Load ``root`` as a folder-per-class dataset and return its inspection report."""
    from wavemel.data.adapters import load_dataset
    from wavemel.data.inspect import inspect_dataset

    return inspect_dataset(load_dataset(root, format="folder"))


def _finished(run_dir: Path, config: Any) -> bool | None:
    """Whether ``run_dir`` holds a finished run of ``config``.

    Returns:
        True when it finished with the same settings, False when it was interrupted with the same
        settings (resumable), None when there is no run there.

    Raises:
        WavemelError: The folder holds a run made with other settings.
    """
    from wavemel.errors import WavemelError
    from wavemel.train.config import load_config_file

    saved_config = run_dir / "config.json"
    if not saved_config.is_file():
        return None
    # Fields left None (cnn-comb's split settings) are filled from the branch runs when training
    # starts, so only the settings given here are compared.
    saved = load_config_file(saved_config)
    wanted = {
        k: v for k, v in config.to_dict().items() if k not in ("force", "resume") and v is not None
    }
    changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if changed:
        raise WavemelError(
            f"{run_dir}: a run made with other settings ({', '.join(changed)}); "
            "use --force to retrain or --out to choose another folder"
        )
    last = run_dir / "last.json"
    if not last.is_file():
        return False
    epoch = load_config_file(last).get("metrics", {}).get("epoch")
    return epoch == config.epochs


def _train_or_reuse(config: Any, force: bool) -> Path:
    """Train (or resume, or reuse) the run described by ``config``."""
    from wavemel.train import CombineConfig, combine, train

    run_dir = Path(config.out)
    status = None if force else _finished(run_dir, config)
    if status:
        _say(f"reusing the finished run {run_dir}")
        return run_dir
    config = config.replace(force=force, resume=status is False)
    if status is False:
        _say(f"resuming the interrupted run {run_dir}")
    if isinstance(config, CombineConfig):
        return combine(config)
    return train(config)


def train_and_score(
    data: Path,
    out: Path,
    *,
    size: str = "small",
    epochs: int = 15,
    comb_epochs: int = 6,
    input_seconds: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train cnn-audio and cnn-spec on ``data``, combine them and score all three.

    The validation fold (fold 0 of 5, stratified) picks each run's best epoch and is the split
    the table reports, so the figures are validation scores, not test scores.

    Returns:
        ``{model name: evaluation dict}`` as returned by :func:`wavemel.evaluate.evaluate_run`.
    """
    from wavemel.evaluate import evaluate_run
    from wavemel.train import CombineConfig, TrainConfig

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
        fold=0,
        seed=seed,
        patience=0,
        device=device,
        workers=0,
        cache_dir=cache,
    )
    run_dirs = {}
    for model in ("cnn-audio", "cnn-spec"):
        _say(f"training {model} ({size}, {epochs} epochs, {input_seconds:g} s input)")
        config = TrainConfig(model=model, out=str(runs / model), **common)
        run_dirs[model] = _train_or_reuse(config, force)
    _say(f"training cnn-comb's head ({comb_epochs} epochs; both branches frozen)")
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
        _say(f"scoring {model} on the held-out fold")
        results[model] = evaluate_run(run_dir, split="val", device=device)
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The MAP@3 / top-1 table printed at the end of the quickstart."""
    lines = [
        f"{'model':<10} {'MAP@3':>7} {'top-1':>7} {'clips':>6}",
        "-" * 33,
    ]
    for model, result in results.items():
        lines.append(
            f"{model:<10} {result['map3']:>7.3f} {result['top1']:>7.3f} {result['n_clips']:>6d}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from wavemel.data.inspect import format_report

    started = time.perf_counter()
    _say(f"generating the built-in dataset in {args.out / 'data'}")
    data = prepare_data(
        args.out, force=args.force, clips_per_class=args.clips_per_class, seed=args.seed
    )
    report = inspect_data(data)
    print(format_report(report))
    if report["problems"]:
        _say(f"{len(report['problems'])} problems in the built-in dataset (see above)")
        return 1
    _say(f"data ready in {time.perf_counter() - started:.1f} s: {data}")
    if args.data_only:
        return 0
    results = train_and_score(
        data,
        args.out,
        size=args.size,
        epochs=args.epochs,
        comb_epochs=args.comb_epochs,
        input_seconds=args.input_seconds,
        seed=args.seed,
        device=args.device,
        force=args.force,
    )
    print()
    print("Validation MAP@3 on the held-out fold (fold 0 of 5) of the built-in data:")
    print(format_table(results))
    summary = {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "split": "val (fold 0 of 5)",
        "results": {
            model: {"map3": r["map3"], "top1": r["top1"], "n_clips": r["n_clips"]}
            for model, r in results.items()
        },
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(f"done in {summary['wall_seconds']:.0f} s; runs in {args.out / 'runs'}")
    return 0
