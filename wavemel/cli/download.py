"""``wavemel download NAME --to DIR``: fetch and unpack a public data set."""

from __future__ import annotations

import argparse
from pathlib import Path

from wavemel.errors import WavemelError

# The registry keys of wavemel.data.download.SOURCES, repeated here so that ``wavemel --help``
# does not import the data package (numpy, soundfile); tests check that the two agree.
DATASETS = ("esc50", "fsdd", "fsdkaggle2018")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download and unpack a public data set (resumable, checksummed)",
        description="Download a public data set from its official host and unpack it into the "
        "layout the data adapters read. Interrupted downloads resume when run again.",
        epilog="fsdkaggle2018: Zenodo record 2552860 (~4.8 GB; every zip is checked against the "
        "md5 that Zenodo lists for the record); fsdd: Free Spoken Digit Dataset (GitHub); esc50: "
        "ESC-50 (GitHub). GitHub snapshots carry no checksum and are checked for being valid "
        "archives.",
    )
    parser.add_argument("name", choices=DATASETS, help="data set to fetch")
    parser.add_argument("--to", type=Path, required=True, help="parent folder of the data set")
    parser.add_argument("--force", action="store_true", help="replace an existing data set folder")
    parser.add_argument(
        "--keep-archives", action="store_true", help="keep the downloaded archives after unpacking"
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="fetch archives (and fsdkaggle2018's zenodo-record-2552860.json checksum list) from "
        "BASE_URL/<file name> (a mirror); default $WAVEMEL_DOWNLOAD_BASE_URL or the official host",
    )
    parser.add_argument("--retries", type=int, default=4, help="retries per archive (default 4)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the server to answer or send more bytes (default 60)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: the data package imports soundfile, which `wavemel --help` must not
    from wavemel.data.download import SOURCES, download_dataset

    if args.retries < 0:
        raise WavemelError(f"--retries must be 0 or more, got {args.retries}")
    if not args.timeout > 0:  # also refuses nan
        raise WavemelError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    source = SOURCES[args.name]
    root = download_dataset(
        args.name,
        args.to,
        base_url=args.base_url,
        force=args.force,
        keep_archives=args.keep_archives,
        retries=args.retries,
        timeout=args.timeout,
        progress=not args.quiet,
    )
    print(f"{source.name}: ready in {root}")
    if source.format_hint:
        print(f"read it with: --data {root} {source.format_hint}")
    print(f"licence and citation: {source.homepage}")
    return 0
