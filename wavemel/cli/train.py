"""``wavemel train``: train cnn-audio, cnn-spec or cnn14 on a dataset into a run folder.

Settings are layered: built-in defaults, then ``--config FILE.json`` (any ``TrainConfig`` field),
then the flags given on the command line. Under ``torchrun --nproc_per_node=N -m wavemel train``
the same command trains with DistributedDataParallel (``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse
from typing import Any

S = argparse.SUPPRESS  # only flags the user gives override the config file and the defaults


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``combine``: optimisation, device and run-folder handling."""
    parser.add_argument("--epochs", type=int, default=S, help="training epochs")
    parser.add_argument(
        "--batch-size", dest="batch_size", type=int, default=S, help="clips per batch and process"
    )
    parser.add_argument("--lr", type=float, default=S, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", dest="weight_decay", type=float, default=S)
    parser.add_argument(
        "--warmup-epochs",
        dest="warmup_epochs",
        type=float,
        default=S,
        help="linear warm-up length before the cosine decay",
    )
    parser.add_argument(
        "--mixup-alpha", dest="mixup_alpha", type=float, default=S, help="mixup Beta alpha; 0 = off"
    )
    parser.add_argument(
        "--unverified-weight",
        dest="unverified_weight",
        type=float,
        default=S,
        help="loss weight of clips whose label was not manually verified (default 1)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=S,
        help="stop after this many epochs without a better val MAP@3 (0 = never)",
    )
    parser.add_argument(
        "--hop-seconds",
        dest="hop_seconds",
        type=float,
        default=S,
        help="window hop of the whole-clip validation (default: the input length)",
    )
    parser.add_argument(
        "--val-every",
        dest="val_every",
        type=int,
        default=S,
        help="validate every N epochs and after the last (default 1)",
    )
    parser.add_argument("--device", default=S, help="auto (default), cpu or cuda")
    parser.add_argument("--workers", type=int, default=S, help="data-loading processes")
    parser.add_argument("--cache-dir", dest="cache_dir", default=S, help="decoded-clip cache")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="mixed precision on CUDA (default on)",
    )
    parser.add_argument(
        "--channels-last",
        dest="channels_last",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="NHWC memory format for cnn-spec on CUDA (default on)",
    )
    parser.add_argument(
        "--cpu-amp",
        dest="cpu_amp",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="bfloat16 autocast for CPU training steps (fast with AMX / AVX512-BF16; default off)",
    )
    parser.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    parser.add_argument("--config", metavar="FILE.json", help="settings file (JSON object)")
    parser.add_argument(
        "--force", action="store_true", default=S, help="replace an existing run folder"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        default=S,
        help="continue the interrupted run in --out (its config.json is used)",
    )


def add_noisy_flags(parser: argparse.ArgumentParser) -> None:
    """The noisy-label lever: drop (or down-weight) the worst-fitting unverified clips."""
    parser.add_argument(
        "--noisy-drop",
        dest="noisy_drop",
        type=float,
        default=S,
        metavar="FRACTION",
        help="each epoch from --noisy-after on, give this fraction of the unverified clips with "
        "the highest loss --noisy-weight (default 0 = off; chosen clips go to RUN/noisy.jsonl)",
    )
    parser.add_argument(
        "--noisy-after",
        dest="noisy_after",
        type=int,
        default=S,
        metavar="EPOCH",
        help="first epoch (1-based) that trains with the choice (default 5)",
    )
    parser.add_argument(
        "--noisy-weight",
        dest="noisy_weight",
        type=float,
        default=S,
        help="loss weight of the chosen clips (default 0: dropped)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train cnn-audio, cnn-spec or cnn14",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=S, help="cnn-audio (default), cnn-spec or cnn14")
    parser.add_argument("--data", default=S, metavar="ROOT", help="dataset root or CSV manifest")
    parser.add_argument("--out", default=S, metavar="RUN", help="run folder to create")
    parser.add_argument("--size", default=S, help="model size: tiny, small (default) or paper")
    parser.add_argument("--sample-rate", dest="sample_rate", type=int, default=S)
    parser.add_argument(
        "--input-seconds",
        dest="input_seconds",
        type=float,
        default=S,
        help="training input length in seconds (default 2)",
    )
    parser.add_argument("--folds", type=int, default=S, help="k of the stratified k-fold split")
    parser.add_argument("--fold", type=int, default=S, help="validation fold (default 0)")
    parser.add_argument(
        "--val-split",
        dest="val_split",
        default=S,
        help="validate on this split of the dataset (e.g. test) instead of a fold",
    )
    parser.add_argument("--seed", type=int, default=S)
    parser.add_argument("--format", default=S, help="dataset layout (default: detect it)")
    parser.add_argument(
        "--label-pattern",
        dest="label_pattern",
        default=S,
        help="file-name template for --format pattern, e.g. '{label}_{speaker}_{take}.wav'",
    )
    parser.add_argument(
        "--group-field",
        dest="group_field",
        default=S,
        help="metadata field whose clips stay in one fold (e.g. speaker)",
    )
    parser.add_argument(
        "--mixup-on", dest="mixup_on", default=S, help="wave (default) or spec (cnn-spec only)"
    )
    add_spec_mask_flags(parser)
    parser.add_argument(
        "--init",
        default=S,
        metavar="RUN",
        help="fine-tune this checkpoint (e.g. an imported cnn14); new classifier if labels differ",
    )
    parser.add_argument(
        "--freeze",
        dest="freeze_blocks",
        type=int,
        default=S,
        metavar="N",
        help="keep the first N conv blocks frozen (cnn14)",
    )
    parser.add_argument(
        "--multi-label",
        dest="multi_label",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="sigmoid outputs, binary cross-entropy and per-label thresholds (default: on when "
        "any training clip has several labels)",
    )
    parser.add_argument(
        "--ema-decay",
        dest="ema_decay",
        type=float,
        default=S,
        metavar="D",
        help="validate and save an exponential moving average of the weights with this decay "
        "(warmed up; 0 = off, the default; typical 0.999)",
    )
    add_noisy_flags(parser)
    add_runtime_flags(parser)
    parser.set_defaults(func=run)


def add_spec_mask_flags(parser: argparse.ArgumentParser) -> None:
    """SpecAugment-style masking of the log-mel in training (cnn-spec and cnn14; default off)."""
    parser.add_argument(
        "--spec-freq-masks",
        dest="spec_freq_masks",
        type=int,
        default=S,
        metavar="N",
        help="mask N bands of mel bins of each training example (default 0: none)",
    )
    parser.add_argument(
        "--spec-freq-width",
        dest="spec_freq_width",
        type=int,
        default=S,
        metavar="BINS",
        help="largest width of a frequency mask in mel bins (default 8)",
    )
    parser.add_argument(
        "--spec-time-masks",
        dest="spec_time_masks",
        type=int,
        default=S,
        metavar="N",
        help="mask N bands of frames of each training example (default 0: none)",
    )
    parser.add_argument(
        "--spec-time-width",
        dest="spec_time_width",
        type=float,
        default=S,
        metavar="FRACTION",
        help="largest width of a time mask as a fraction of the input's frames (default 0.1)",
    )


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    """A ``config_cls`` from its defaults, then ``--config FILE``, then the flags given."""
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.train.config import layer_config

    overrides = {k: v for k, v in vars(args).items() if k in config_cls.__dataclass_fields__}
    return layer_config(config_cls, args.config, overrides)


def run(args: argparse.Namespace) -> int:
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.train.config import TrainConfig
    from wavemel.train.loop import train

    train(config_from_args(TrainConfig, args))
    return 0
