"""``wavemel levers``: which training changes help, each against the preset's recipe, per seed."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from wavemel.cli._options import add_study_options, study_kwargs
from wavemel.errors import WavemelError
from wavemel.study.presets import PRESETS, StudyConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "levers",
        help="train each training lever and the baseline per seed; report what to keep",
        description="For every seed train the baseline (the preset's recipe) and each lever "
        "(a registered change of TrainConfig / CombineConfig fields), score them on the test "
        "split (or a held-out fold), and write OUT/results.json and OUT/report.md. A lever is "
        "kept only when its validation MAP@3 beats the baseline's on every seed. Rerunning the "
        "same command skips finished runs; editing a lever retrains only that lever's runs.",
    )
    # Not required by argparse: --list needs neither.
    parser.add_argument("--data", help="dataset root (or CSV manifest)")
    parser.add_argument("--out", type=Path, help="study folder")
    parser.add_argument(
        "--levers", nargs="+", metavar="NAME", help="levers to run (default: all registered)"
    )
    parser.add_argument("--list", action="store_true", help="print the registered levers and exit")
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="cpu",
        help="tiny: seconds, for tests; cpu: small models, 3 seeds (default cpu)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the preset's)")
    parser.add_argument(
        "--length", type=float, default=2.0, help="input length in seconds (default 2)"
    )
    parser.add_argument("--format", default=None, help="dataset format (default: detect)")
    parser.add_argument(
        "--max-folds",
        type=int,
        default=None,
        help="data without a test split: run only the first N folds",
    )
    add_study_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.study.levers import run_levers, select_levers

    if args.list:
        for lever in select_levers(None):
            overrides = ", ".join(f"{k}={v!r}" for k, v in lever.overrides.items()) or "-"
            print(f"{lever.name:<14} {'+'.join(lever.models):<28} {overrides}")
        return 0
    if not args.data or not args.out:
        raise WavemelError("wavemel levers needs --data and --out (or --list)")
    config = StudyConfig(
        data=args.data,
        out=str(args.out),
        preset=args.preset,
        format=args.format,
        seeds=tuple(args.seeds) if args.seeds else None,
        lengths=(args.length,),
        max_folds=args.max_folds,
        **study_kwargs(args),
    )
    report = run_levers(config, args.levers, command=_command_line(args))
    print(f"report: {report}")
    print(f"numbers: {report.parent / 'results.json'}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command as it would be typed, rebuilt from the parsed options."""
    words = ["wavemel", "levers", "--data", str(args.data), "--out", str(args.out)]
    words += ["--preset", args.preset, "--length", f"{args.length:g}"]
    if args.seeds:
        words += ["--seeds", *map(str, args.seeds)]
    if args.levers:
        words += ["--levers", *args.levers]
    for option in ("format", "max_folds", "epochs", "comb_epochs", "val_every", "cache_dir"):
        value = getattr(args, option)
        if value is not None:
            words += ["--" + option.replace("_", "-"), str(value)]
    if args.no_recipe:
        words += ["--no-recipe"]
    if args.device != "auto":
        words += ["--device", args.device]
    return " ".join(shlex.quote(w) for w in words)
