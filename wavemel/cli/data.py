"""``wavemel data``: dataset tools (``inspect``)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="inspect datasets", description="Dataset tools: see 'wavemel data inspect -h'."
    )
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _missing_action(parser))

    inspect = commands.add_parser(
        "inspect",
        help="layout, clip/class counts, durations and problems of a dataset",
        description="Report a dataset's layout, clip and class counts per split, durations, "
        "verified ratio, leaderboard usage, groups, and every problem found (missing, empty or "
        "unreadable files, unknown labels).",
    )
    inspect.add_argument("root", metavar="ROOT", help="dataset folder, or a CSV manifest")
    inspect.add_argument(
        "--format",
        default=None,
        metavar="F",
        # Not argparse choices: that would import the decoders just to print --help.
        help="layout: fsdkaggle2018, fsdkaggle2018-kaggle, folder, csv or pattern "
        "(default: detect it)",
    )
    inspect.add_argument(
        "--label-pattern",
        metavar="P",
        help="file-name template for --format pattern, e.g. '{label}_{speaker}_{take}.wav'",
    )
    inspect.add_argument(
        "--group-field", metavar="G", help="metadata field that names each clip's group"
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument(
        "--no-durations",
        dest="durations",
        action="store_false",
        help="skip reading file headers (faster on huge datasets)",
    )
    inspect.add_argument(
        "--metadata-only",
        action="store_true",
        help="count the metadata rows without looking at audio files (implies --no-durations)",
    )
    inspect.add_argument(
        "--max-problems",
        type=int,
        default=20,
        metavar="N",
        help="problems listed in the text report (all are in --json; default: 20)",
    )
    inspect.set_defaults(func=run_inspect)


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_inspect(args: argparse.Namespace) -> int:
    # lazy: the data package imports soundfile, which `wavemel --help` must not
    from wavemel.data.adapters import load_dataset
    from wavemel.data.inspect import format_report, inspect_dataset

    index = load_dataset(
        args.root,
        format=args.format,
        label_pattern=args.label_pattern,
        group_field=args.group_field,
        check_files=not args.metadata_only,
    )
    report = inspect_dataset(index, durations=args.durations and not args.metadata_only)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, max_problems=args.max_problems))
    return 0
