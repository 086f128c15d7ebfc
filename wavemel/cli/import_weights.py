"""``wavemel import-weights``: turn weights trained elsewhere into a wavemel run folder.

``wavemel import-weights panns-cnn14 Cnn14_mAP=0.431.pth -o runs/cnn14 --labels
class_labels_indices.csv`` converts the PANNs AudioSet CNN14 into a cnn14 run that ``predict``,
``evaluate``, ``combine --spec`` and ``train --model cnn14 --init`` accept. The file is loaded with
``torch.load(weights_only=True)``; the run holds safetensors + JSON only.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-weights",
        help="convert a PANNs CNN14 checkpoint into a run folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=["panns-cnn14"], help="what the file holds")
    parser.add_argument("weights", metavar="FILE.pth", help="the checkpoint to convert")
    parser.add_argument("-o", "--out", required=True, metavar="RUN", help="run folder to create")
    parser.add_argument(
        "--labels",
        metavar="CSV",
        help="AudioSet's class_labels_indices.csv (index,mid,display_name); default: numbered",
    )
    parser.add_argument(
        "--sample-rate",
        dest="sample_rate",
        type=int,
        default=32000,
        help="rate the model was trained at (default 32000, the AudioSet release)",
    )
    parser.add_argument(
        "--hop-length",
        dest="hop_length",
        type=int,
        help="its frame hop in samples (default 10 ms: 320 at 32 kHz)",
    )
    parser.add_argument("--fmin", type=float, default=50.0, help="its lowest mel frequency")
    parser.add_argument(
        "--fmax", type=float, help="its highest mel frequency (default 14000, at most Nyquist)"
    )
    parser.add_argument(
        "--input-seconds",
        dest="input_seconds",
        type=float,
        default=10.0,
        help="window length the run tags with (default 10, AudioSet's clip length)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing run folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.convert import import_panns_cnn14

    out = import_panns_cnn14(
        args.weights,
        args.out,
        labels_csv=args.labels,
        sample_rate=args.sample_rate,
        hop_length=args.hop_length,
        fmin=args.fmin,
        fmax=args.fmax,
        input_seconds=args.input_seconds,
        force=args.force,
    )
    print(f"imported {args.weights} as cnn14 into {out}")
    return 0
