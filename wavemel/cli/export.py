"""``wavemel export``: write a run's model as one ONNX graph, log-mel front end inside."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a run's model as an ONNX file (waveform in, logits out)",
        description="Export the best checkpoint of a run (any model: cnn-audio, cnn-spec, "
        "cnn-comb, cnn14) as one ONNX graph from waveform (batch, samples) to logits (batch, "
        "classes), with the log-mel front end inside, a dynamic batch and number of samples, "
        "and the labels, sample rate, input length and front-end settings in its metadata. The "
        "graph is checked against PyTorch with onnxruntime before it is written. "
        "`wavemel predict model.onnx ...` tags with it. Needs the ONNX extra: "
        "pip install 'wavemel[onnx]'.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder, or a checkpoint .json")
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE.onnx", help="where to write the model"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: torch and the exporter load only when the command runs (`wavemel --help` stays fast)
    from wavemel.export import export_onnx

    result = export_onnx(args.run, args.output, force=args.force)
    print(
        f"wrote {result.path} ({result.model}, opset {result.opset}, "
        f"{result.size_bytes / 1e6:.1f} MB); onnxruntime logits match PyTorch's within "
        f"{result.max_rel_diff:.1e} relative"
    )
    return 0
