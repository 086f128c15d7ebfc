"""``wavemel quickstart``: the whole tour on built-in data, no download needed.

1. generates the built-in synthetic sound-event dataset into ``OUT/data`` and prints its
   inspection report;
2. trains cnn-audio and cnn-spec on three of its five folds, choosing their epochs on a fourth
   (``OUT/runs/cnn-audio``, ``OUT/runs/cnn-spec``);
3. combines them into cnn-comb, training only the new head (``OUT/runs/cnn-comb``);
4. scores the three networks on the fifth, held-out fold (never trained on, never used to
   choose an epoch) and prints a MAP@3 table
   (``OUT/summary.json``).

Finished runs are reused when the command is repeated with the same settings, an interrupted run
is resumed, and a run made with other settings is only replaced with ``--force``. The work is done
by :mod:`wavemel.study.quickstart`; this module parses the options and prints.
"""

from __future__ import annotations

import argparse
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
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.data.inspect import format_report
    from wavemel.study.quickstart import (
        TourSettings,
        inspect_data,
        prepare_data,
        say,
        train_and_score,
        write_summary,
    )

    started = time.perf_counter()
    say(f"generating the built-in dataset in {args.out / 'data'}")
    data = prepare_data(
        args.out, force=args.force, clips_per_class=args.clips_per_class, seed=args.seed
    )
    report = inspect_data(data)
    print(format_report(report))
    if report["problems"]:
        say(f"{len(report['problems'])} problems in the built-in dataset (see above)")
        return 1
    say(f"data ready in {time.perf_counter() - started:.1f} s: {data}")
    if args.data_only:
        return 0
    settings = TourSettings(
        size=args.size,
        epochs=args.epochs,
        comb_epochs=args.comb_epochs,
        input_seconds=args.input_seconds,
        seed=args.seed,
        device=args.device,
    )
    results = train_and_score(data, args.out, settings, force=args.force)
    print()
    print("MAP@3 on the held-out fold (fold 0 of 5; epochs chosen on fold 1) of the built-in data:")
    print(format_table(results))
    summary = write_summary(args.out, results, time.perf_counter() - started)
    say(f"done in {summary['wall_seconds']:.0f} s; runs in {args.out / 'runs'}")
    return 0
