"""``wavemel evaluate``: MAP@3 (Public/Private), top-1, per-class MAP@3 and AP of a run."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from wavemel.cli._options import add_inference_options, inference_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained run on the test split or its validation fold",
        description="Score a run's best checkpoint on whole clips: MAP@3 (with Public/Private "
        "when the data has leaderboard usage), top-1 accuracy, per-class MAP@3 and AP. Writes "
        "evaluation_<split>.json and confusion_<split>.png into the run folder.",
    )
    parser.add_argument(
        "run",
        metavar="RUN",
        nargs="+",
        help="run folder (or a checkpoint .json in one); several runs are scored as one ensemble "
        "(the mean of their clip probabilities; same labels, rate, activation and split; needs "
        "--out-dir)",
    )
    parser.add_argument(
        "--data", metavar="ROOT", help="dataset root (default: the one the run was trained on)"
    )
    parser.add_argument(
        "--split",
        choices=("test", "val", "heldout"),
        default="test",
        help="the dataset's labelled test clips (a k-fold run's held-out fold when it has one), "
        "the run's validation fold, or its held-out fold (default: test)",
    )
    parser.add_argument(
        "--zero-input",
        choices=("audio", "spec"),
        help="cnn-comb ablation: zero that branch's input (the poster's)",
    )
    parser.add_argument(
        "--mean-input",
        choices=("audio", "spec"),
        help="cnn-comb ablation: replace that branch's features by their training mean",
    )
    add_inference_options(parser)
    parser.add_argument(
        "--out-dir", metavar="DIR", help="where to write (default: RUN; needed for an ensemble)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def format_table(result: dict) -> str:
    """Human-readable summary: headline metrics, then one row per class."""
    name = result["model"] + (f" zero-{result['zero_input']}" if result.get("zero_input") else "")
    name += f" mean-{result['mean_input']}" if result.get("mean_input") else ""
    lines = [
        f"{result['run']} ({name}) on {result['split']}: {result['n_clips']} clips",
        "",
        f"{'metric':<14}{'value':>8}",
        f"{'MAP@3':<14}{result['map3']:>8.4f}",
    ]
    for part in ("public", "private"):
        value = result.get(f"map3_{part}")
        if value is not None:
            label = f"MAP@3 {part.capitalize()}"
            lines.append(f"{label:<14}{value:>8.4f}  ({result[f'n_{part}']} clips)")
    lines.append(f"{'top-1 acc':<14}{result['top1']:>8.4f}")
    if result.get("multi_label"):
        for key, label in (("map", "mAP (macro)"), ("lwlrap", "lwlrap")):
            lines.append(f"{label:<14}{result[key]:>8.4f}")
        for key in ("micro_f1", "macro_f1"):
            value = result[key]
            shown = "-" if value is None or value != value else f"{value:.4f}"  # NaN: undefined
            lines.append(f"{key.replace('_', ' ') + ' @thr':<14}{shown:>8}")
    lines += ["", f"{'class':<28}{'n':>5}{'MAP@3':>8}{'AP':>8}"]
    for label, row in result["per_class"].items():
        if row["n"] == 0:
            continue
        ap = "-" if row["ap"] is None else f"{row['ap']:.3f}"
        lines.append(f"{label[:27]:<28}{row['n']:>5}{row['map3']:>8.3f}{ap:>8}")
    lines += ["", f"wrote {result['json_path']}", f"wrote {result['confusion_png']}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.evaluate import evaluate_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_run(
            args.run[0] if len(args.run) == 1 else args.run,
            args.data,
            split=args.split,
            zero_input=args.zero_input,
            mean_input=args.mean_input,
            out_dir=args.out_dir,
            **inference_kwargs(args),
            progress=not args.json and sys.stderr.isatty(),
        )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    for warning in caught:
        print(f"wavemel: warning: {warning.message}", file=sys.stderr)
    return 0
