"""``wavemel reproduce``: the poster's grid (Table 1, Figures 3 and 4) in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from wavemel.cli._options import add_study_options, study_kwargs
from wavemel.study.presets import PRESETS, StudyConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="train, combine and evaluate the poster's grid and write report.md",
        description="Train cnn-audio and cnn-spec at 1, 2 and 3 s input, combine each pair into "
        "cnn-comb, score all of them (and cnn-comb with one input set to zero) and an MFCC + "
        "logistic-regression baseline, then write OUT/report.md, OUT/results.json and the "
        "figures. Scores the dataset's labelled test split, or k folds when it has none. "
        "Rerunning the same command skips finished runs.",
    )
    parser.add_argument("--data", required=True, help="dataset root (or CSV manifest)")
    parser.add_argument("--out", required=True, type=Path, help="study folder")
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="cpu",
        help="tiny: seconds, for tests; cpu: small models and 3 seeds (or every fold), about "
        "9 min a seed on 2 idle cores for fsdk18-mini; paper: paper-size models and 3 seeds, "
        "for a GPU (default cpu)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the preset's)")
    parser.add_argument(
        "--lengths", type=float, nargs="+", help="input lengths in seconds (default 1 2 3)"
    )
    parser.add_argument("--format", default=None, help="dataset format (default: detect)")
    parser.add_argument("--label-pattern", default=None, help="file-name pattern (format pattern)")
    parser.add_argument(
        "--group-field", default=None, help="keep this field's groups in one fold (e.g. speaker)"
    )
    parser.add_argument(
        "--folds", type=int, default=None, help="k folds for data without a labelled test split"
    )
    parser.add_argument("--max-folds", type=int, default=None, help="run only the first N folds")
    parser.add_argument("--sample-rate", type=int, default=None, help="model sample rate in Hz")
    add_study_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.study.grid import reproduce

    config = StudyConfig(
        data=args.data,
        out=str(args.out),
        preset=args.preset,
        format=args.format,
        label_pattern=args.label_pattern,
        group_field=args.group_field,
        seeds=tuple(args.seeds) if args.seeds else None,
        lengths=tuple(args.lengths) if args.lengths else None,
        folds=args.folds,
        max_folds=args.max_folds,
        sample_rate=args.sample_rate,
        **study_kwargs(args),
    )
    report = reproduce(config, command=_command_line(config, args.force))
    print(f"report: {report}")
    print(f"numbers: {report.parent / 'results.json'}")
    return 0


def _command_line(config: StudyConfig, force: bool) -> str:
    """The command as it would be typed, rebuilt from the parsed options (also correct when
    ``main(argv)`` is called from Python, where ``sys.argv`` is someone else's)."""
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.study.report import equivalent_command

    return equivalent_command(config) + (" --force" if force else "")
