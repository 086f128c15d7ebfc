"""``wavemel serve``: tag uploads over HTTP, with a web page at ``/`` (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import socket

from wavemel.cli._options import add_inference_options, inference_kwargs
from wavemel.errors import WavemelError

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
    parser.add_argument(
        "--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)"
    )
    parser.add_argument(
        "--top-k", type=int, default=5, metavar="K", help="tags per answer (default: 5)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        metavar="MB",
        help="largest upload in MiB (default: 20)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, metavar="S", help="longest clip (default: 600)"
    )
    parser.add_argument(
        "--max-clips",
        type=int,
        default=16,
        metavar="N",
        help="most clips scored together (default: 16)",
    )
    add_inference_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
    try:  # lazy: an optional extra, and torch stays out of `wavemel --help`
        import uvicorn

        from wavemel.serve import Limits, create_app
    except ImportError as exc:
        raise WavemelError(
            f"wavemel serve needs the serve extra ({exc.name} is missing): "
            "pip install 'wavemel[serve]'"
        ) from None
    from wavemel.infer import Tagger  # lazy: imports torch

    # Bound here, before the model loads: a busy port is one line, not uvicorn's log and exit 3.
    listener = _listen(args.host, args.port)
    tagger = Tagger.from_checkpoint(args.run, **inference_kwargs(args))
    limits = Limits(int(args.max_upload_mb * _MIB), args.max_seconds)
    app = create_app(tagger, limits=limits, top_k=args.top_k, max_clips=args.max_clips)
    host, port = listener.getsockname()[:2]
    print(f"wavemel: serving {args.run} on http://{host}:{port}/", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    with listener:
        server.run(sockets=[listener])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (IPv6 when ``host`` is an IPv6 address).

    Raises:
        WavemelError: The address is in use, not local, or not a valid host.
    """
    from wavemel._io import os_error_reason  # lazy: numpy stays out of `wavemel --help`

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WavemelError(f"--host {host}: not an address this machine can use ({exc})") from None
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise WavemelError(
            f"--host {host} --port {port}: cannot listen ({os_error_reason(exc)})"
        ) from None
    return listener
