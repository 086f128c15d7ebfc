"""``wavemel augment-preview FILE -o fig.png``: the augmentations of one clip as log-mels."""

from __future__ import annotations

import argparse
from pathlib import Path

from wavemel.errors import WavemelError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "augment-preview",
        help="draw a clip's log-mel and each training augmentation applied to it",
        description=(
            "Draw a figure like the poster's Figure 3: the original log-mel spectrogram of FILE "
            "and one panel per augmentation (time shift, random crop, random padding, "
            "replication, mixup), with seeded random parameters stated in each title."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="audio clip to show")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="PNG",
        help="figure to write (.png, .pdf or .svg)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing figure")
    parser.add_argument(
        "--input-seconds",
        type=float,
        default=2.0,
        help="network input length that crop/pad/replicate target (default: 2)",
    )
    parser.add_argument(
        "--sample-rate", type=int, default=22050, help="resample the clip to this rate in Hz"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random parameters")
    parser.add_argument(
        "--mix-with",
        type=Path,
        metavar="FILE2",
        help="second clip for the mixup panel (default: the clip played backwards)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.figures import check_figure_path, render_augmentation_figure

    if args.sample_rate <= 0:
        raise WavemelError(f"--sample-rate must be positive, got {args.sample_rate}")
    if not args.input_seconds > 0:
        raise WavemelError(f"--input-seconds must be positive, got {args.input_seconds}")
    # Before decoding anything: a wrong suffix or a figure of the user's fails at once.
    check_figure_path(args.output, overwrite=args.force)
    titles = render_augmentation_figure(
        args.file,
        args.output,
        sample_rate=args.sample_rate,
        input_seconds=args.input_seconds,
        seed=args.seed,
        mix_with=args.mix_with,
    )
    print(f"wrote {args.output} ({len(titles)} panels)")
    for title in titles:
        print(f"  {title}")
    return 0
