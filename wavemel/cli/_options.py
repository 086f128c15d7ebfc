"""Command-line options shared by several sub-commands.

The commands that score clips (``evaluate``, ``predict``, ``embed``) all load a checkpoint into a
``wavemel.infer.Tagger`` and score whole clips, so they take the same window hop, aggregation,
batch size, device and decoding-thread options with the same defaults. The two studies
(``reproduce``, ``levers``) take the same schedule overrides and study-folder options.
"""

from __future__ import annotations

import argparse
import math

from wavemel.errors import WavemelError

__all__ = ["add_inference_options", "add_study_options", "inference_kwargs", "study_kwargs"]


def add_inference_options(parser: argparse.ArgumentParser, *, aggregate: bool = True) -> None:
    """Add ``--hop-seconds``, ``--aggregate``, ``--batch-size``, ``--device`` and
    ``--decode-workers`` to ``parser``.

    ``aggregate=False`` leaves out ``--aggregate`` (``embed`` averages features, not
    probabilities).
    """
    parser.add_argument(
        "--hop-seconds",
        type=float,
        metavar="S",
        help="window hop for whole-clip scoring (default: the training input length, no overlap)",
    )
    if aggregate:
        parser.add_argument(
            "--aggregate",
            choices=("mean", "geometric"),
            default="mean",
            help="how window probabilities are combined (default: mean)",
        )
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="windows per pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument(
        "--decode-workers",
        type=int,
        metavar="N",
        help="threads decoding the next files while the model scores; 0 reads each file in "
        "turn (default: up to 4 with a GPU; on the CPU only cores nothing else uses)",
    )


def inference_kwargs(args: argparse.Namespace) -> dict:
    """The options above as keyword arguments of ``Tagger.from_checkpoint`` / ``evaluate_run``.

    ``aggregate`` is there only when the parser has ``--aggregate``.

    Raises:
        WavemelError: ``--batch-size`` or ``--hop-seconds`` is not positive, or
            ``--decode-workers`` is negative.
    """
    if args.batch_size < 1:
        raise WavemelError(f"--batch-size must be at least 1, got {args.batch_size}")
    # "nan" and "inf" parse as floats; a NaN hop would otherwise pass "<= 0" and crash later.
    if args.hop_seconds is not None and not 0 < args.hop_seconds < math.inf:
        raise WavemelError(
            f"--hop-seconds must be a positive number of seconds, got {args.hop_seconds}"
        )
    if args.decode_workers is not None and args.decode_workers < 0:
        raise WavemelError(f"--decode-workers must be 0 or more, got {args.decode_workers}")
    kwargs = {
        "device": args.device,
        "hop_seconds": args.hop_seconds,
        "batch_size": args.batch_size,
        "decode_workers": args.decode_workers,
    }
    if hasattr(args, "aggregate"):
        kwargs["aggregate"] = args.aggregate
    return kwargs


def add_study_options(parser: argparse.ArgumentParser) -> None:
    """Add the schedule overrides (``--epochs``, ``--comb-epochs``, ``--val-every``,
    ``--no-recipe``) and ``--device``, ``--cache-dir``, ``--force``, ``--quiet`` to ``parser``."""
    parser.add_argument("--epochs", type=int, default=None, help="branch epochs (preset's)")
    parser.add_argument("--comb-epochs", type=int, default=None, help="cnn-comb head epochs")
    parser.add_argument(
        "--val-every",
        type=int,
        default=None,
        help="branches validate every N epochs and after the last (preset's)",
    )
    parser.add_argument(
        "--no-recipe",
        action="store_true",
        help="the preset's schedule without its recipe (the training settings it adopted, "
        "such as bfloat16 CPU steps), e.g. to compare with a study made before them",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--cache-dir", default=None, help="clip cache (default OUT/cache)")
    parser.add_argument(
        "--force", action="store_true", help="discard a previous study in OUT and start over"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def study_kwargs(args: argparse.Namespace) -> dict:
    """The ``StudyConfig`` fields of :func:`add_study_options`' options."""
    return {
        "epochs": args.epochs,
        "comb_epochs": args.comb_epochs,
        "val_every": args.val_every,
        "no_recipe": args.no_recipe,
        "device": args.device,
        "cache_dir": args.cache_dir,
        "force": args.force,
        "progress": not args.quiet,
    }
