"""``wavemel embed``: clip-level (and per-window) embeddings of audio files, with an index."""

from __future__ import annotations

import argparse
import sys

from wavemel.cli._options import add_inference_options, inference_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="write the embeddings of audio files or folders computed by a trained run",
        description="Write each file's clip-level embedding (the mean of its windows' dense-layer "
        "features) into OUT, as NAME.npy or NAME.safetensors, plus OUT/index.csv mapping files "
        "to outputs. Folders are searched recursively for audio files. Files that cannot be "
        "decoded are listed at the end and make the exit status 1; every other file is still "
        "embedded.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder, or a checkpoint .json")
    parser.add_argument("paths", metavar="PATH", nargs="+", help="audio files or folders")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--timestamps",
        action="store_true",
        help="also write every window's embedding with its start and end time",
    )
    parser.add_argument(
        "--format",
        choices=("npy", "safetensors"),
        default="npy",
        help="npy: NAME.npy (+ NAME.windows.npy, NAME.times.npy); safetensors: one "
        "NAME.safetensors (default: npy)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty folder that wavemel did not make (nothing is deleted)",
    )
    add_inference_options(parser, aggregate=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel._paths import display_path
    from wavemel.data.files import find_audio_files
    from wavemel.embed import EmbeddingFolder, EmbeddingRecord, embed_files, write_index
    from wavemel.errors import WavemelError
    from wavemel.infer import Tagger

    # Everything is checked before the folder is made: a typo must not leave an empty folder.
    folder = EmbeddingFolder.check(args.out, force=args.force, run=args.run)
    kwargs = inference_kwargs(args)
    files, problems = find_audio_files(args.paths)
    if not files and not problems:
        raise WavemelError(f"no audio files found in {', '.join(map(display_path, args.paths))}")
    tagger = Tagger.from_checkpoint(args.run, **kwargs)
    folder.create()

    records = [EmbeddingRecord(display_path(p.path), error=str(p)) for p in problems]
    progress = None
    if sys.stderr.isatty() and len(files) > 1:
        from tqdm import tqdm  # lazy: only when a bar is shown

        progress = tqdm(total=len(files), desc="embed", unit="file", leave=False)
    for record in embed_files(
        tagger, files, folder.path, timestamps=args.timestamps, format=args.format
    ):
        records.append(record)
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
    index = write_index(folder.path, records)

    failed = [record for record in records if record.error]
    done = len(records) - len(failed)
    dims = sorted({record.dim for record in records if not record.error})
    width = f", {dims[0]}-d" if len(dims) == 1 else ""
    shown = display_path(folder.path)
    print(f"wrote {done} embedding(s){width} to {shown} (index {display_path(index)})")
    if failed:
        print(f"wavemel: {len(failed)} file(s) could not be embedded:", file=sys.stderr)
        for record in failed:
            print(f"  {record.error}", file=sys.stderr)
        return 1
    return 0
