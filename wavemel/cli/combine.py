"""``wavemel combine``: train cnn-comb's head on a trained cnn-audio run and cnn-spec run.

Both runs must share labels, sample rate, input length and split settings; the new run uses that
split. Only the new dense head is trained; the branch weights stay frozen, unless
--finetune-epochs N then trains everything end to end for N more epochs at --finetune-lr (the
best epoch of both stages is kept).
"""

from __future__ import annotations

import argparse

from wavemel.cli.train import S, add_runtime_flags, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "combine",
        help="train cnn-comb on two trained branches",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--audio", dest="audio_run", default=S, metavar="RUN_A", help="cnn-audio run"
    )
    parser.add_argument("--spec", dest="spec_run", default=S, metavar="RUN_B", help="cnn-spec run")
    parser.add_argument(
        "--data", default=S, metavar="ROOT", help="dataset root (default: the branches' data)"
    )
    parser.add_argument("--out", default=S, metavar="RUN", help="run folder to create")
    parser.add_argument("--hidden", type=int, default=S, help="width of the head's dense layer")
    parser.add_argument("--dropout", type=float, default=S, help="dropout in the head")
    parser.add_argument(
        "--head-init",
        dest="head_init",
        choices=("new", "branches"),
        default=S,
        help="new: random head weights (the poster's); branches: start from the branches' own "
        "dense layers side by side (logits = the sum of theirs before training)",
    )
    parser.add_argument(
        "--finetune-epochs",
        dest="finetune_epochs",
        type=int,
        default=S,
        metavar="N",
        help="then train branches and head end to end for this many epochs (default 0: off)",
    )
    parser.add_argument(
        "--finetune-lr",
        dest="finetune_lr",
        type=float,
        default=S,
        metavar="LR",
        help="peak learning rate of the fine-tune, branches and head (default 1e-4)",
    )
    parser.add_argument(
        "--finetune-freeze-bn",
        dest="finetune_freeze_bn",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="keep the branches' BatchNorm statistics fixed while fine-tuning (default off)",
    )
    add_runtime_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.train.combine import combine
    from wavemel.train.config import CombineConfig

    combine(config_from_args(CombineConfig, args))
    return 0
