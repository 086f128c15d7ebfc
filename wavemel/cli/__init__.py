"""The ``wavemel`` command line.

Every module in this package whose name does not start with ``_`` is a sub-command: it defines
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
``argparse.Namespace`` and returning an exit status. Modules import heavy dependencies (torch)
inside their ``run`` functions so that ``wavemel --help`` stays fast, and so that
:func:`main` can choose the thread count and OpenMP wait policy (``wavemel._threads``) before
torch is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterator

from wavemel._threads import configure_threads
from wavemel.errors import WavemelError

_THREADS_HELP = (
    "CPU threads for torch (default: WAVEMEL_THREADS, OMP_NUM_THREADS, else one per core that "
    "other processes leave free)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wavemel",
        description="Audio tagging with CNNs on raw waveforms and log-mel spectrograms.",
    )
    parser.add_argument("--threads", type=int, metavar="N", help=_THREADS_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    _add_threads_to_subcommands(parser)
    return parser


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Print every warning as ``wavemel: warning: MESSAGE`` (not Python's two-line format)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"wavemel: warning: {message}", file=file or sys.stderr)

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _add_threads_to_subcommands(parser: argparse.ArgumentParser) -> None:
    """Accept ``--threads`` after any (nested) sub-command too, e.g. ``wavemel data inspect``."""
    for action in parser._actions:  # argparse exposes sub-parsers only through this list
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                # SUPPRESS: absent here keeps the value given before the sub-command.
                sub.add_argument(
                    "--threads", type=int, metavar="N", default=argparse.SUPPRESS,
                    help=_THREADS_HELP,
                )  # fmt: skip
                _add_threads_to_subcommands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        # Before any sub-command imports torch: OpenMP reads its settings once, at load time.
        configure_threads(args.threads)
        with _one_line_warnings():
            return int(args.func(args) or 0)
    except WavemelError as exc:
        print(f"wavemel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wavemel: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, as other command-line tools do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 141
