"""``wavemel quickstart``: the whole tour on built-in data, no download needed.

Generates the built-in synthetic sound-event dataset into ``OUT/data`` and prints its inspection
report. Each step is a small function so that later steps (training and scoring the three
networks) can be added after :func:`prepare_data` without touching it.
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
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
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


def run(args: argparse.Namespace) -> int:
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
    return 0
