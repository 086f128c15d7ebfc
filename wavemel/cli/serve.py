"""``wavemel serve``: tag uploads over HTTP, with a web page at ``/`` (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

from wavemel.cli._options import add_inference_options, inference_kwargs

_MIB = 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a run over HTTP, with a web page for uploads and recordings",
        description="Load a run's best checkpoint once and answer POST /v1/tag (multipart field "
        "'file' or a raw audio body) with its top tags and, with ?timeline=1, window scores and "
        "segments; GET /v1/model and /healthz; the page at / uploads or records clips.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder, or a checkpoint .json")
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="tags per answer")
    parser.add_argument(
        "--max-upload-mb", type=float, default=20.0, metavar="MB", help="largest upload (20)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, metavar="S", help="longest clip (600)"
    )
    parser.add_argument(
        "--max-clips", type=int, default=16, metavar="N", help="clips scored together (16)"
    )
    add_inference_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wavemel.errors import WavemelError

    for name, value in (("--top-k", args.top_k), ("--max-clips", args.max_clips)):
        if value < 1:
            raise WavemelError(f"{name} must be at least 1, got {value}")
    for name, value in (
        ("--max-upload-mb", args.max_upload_mb),
        ("--max-seconds", args.max_seconds),
    ):
        if not value > 0:
            raise WavemelError(f"{name} must be positive, got {value}")
    if not 0 <= args.port <= 65535:
        raise WavemelError(f"--port must be in 0..65535, got {args.port}")
    try:
        import uvicorn

        from wavemel.serve import Limits, create_app
    except ImportError as exc:
        raise WavemelError(
            f"wavemel serve needs the serve extra ({exc.name} is missing): "
            "pip install 'wavemel[serve]'"
        ) from None
    from wavemel.infer import Tagger

    tagger = Tagger.from_checkpoint(args.run, **inference_kwargs(args))
    limits = Limits(int(args.max_upload_mb * _MIB), args.max_seconds)
    app = create_app(tagger, limits=limits, top_k=args.top_k, max_clips=args.max_clips)
    print(f"wavemel: serving {args.run} on http://{args.host}:{args.port}/", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    except OSError as exc:
        raise WavemelError(
            f"--host {args.host} --port {args.port}: cannot listen ({exc})"
        ) from None
    return 0
