"""``wavemel predict``: tag audio files (or folders of them) with a trained run."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from wavemel._io import atomic_write_text
from wavemel._paths import display_path
from wavemel.cli._options import add_inference_options, inference_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="tag audio files or folders with a trained run",
        description="Tag each file (folders are searched recursively for audio files) with the "
        "top-k labels of a run's best checkpoint. Files that cannot be decoded are listed at "
        "the end and make the exit status 1; every other file is still tagged.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder, checkpoint .json or exported .onnx")
    parser.add_argument("paths", metavar="PATH", nargs="+", help="audio files or folders")
    parser.add_argument("--top-k", type=int, default=3, metavar="K", help="labels per file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--submission",
        metavar="CSV",
        help="also write a Kaggle submission (fname,label with three labels for every file)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --submission")
    add_inference_options(parser)
    parser.set_defaults(func=run)


def expand_paths(paths: list[str]) -> tuple[list[Path], dict[str, str]]:
    """Files as given plus the audio files found under folders; each bad path apart.

    Returns:
        ``(files, errors)``: ``files`` as :func:`wavemel.data.files.find_audio_files` finds
        them (each file once); ``errors`` maps each missing path or entry that is not a
        regular file (FIFO, broken link, link loop), shown escaped, to its one-line reason.
    """
    from wavemel.data.files import find_audio_files

    files, problems = find_audio_files(paths)
    return files, {display_path(p.path): str(p) for p in problems}


def _submission_names(files: list[Path]) -> list[str]:
    """Each file's ``fname`` cell; two files with one name cannot both be in a submission.

    Raises:
        WavemelError: Two different files share a file name (Kaggle keys rows by it).
    """
    from wavemel.errors import WavemelError

    first: dict[str, Path] = {}
    for path in files:
        name = display_path(path.name)
        if name in first:
            raise WavemelError(
                f"--submission: {display_path(first[name])} and {display_path(path)} are both "
                f"named {name}, but a submission has one row per file name; tag them apart"
            )
        first[name] = path
    return [display_path(path.name) for path in files]


def _write_submission(path: Path, rows: list[tuple[str, list[str]]]) -> None:
    """Write ``fname,label`` rows atomically; the csv module quotes commas and newlines."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["fname", "label"])
    writer.writerows((fname, " ".join(labels)) for fname, labels in rows)
    atomic_write_text(path, text.getvalue())


def run(args: argparse.Namespace) -> int:
    import warnings

    from wavemel.errors import WavemelError
    from wavemel.infer import Tagger

    if args.top_k < 1:
        raise WavemelError(f"--top-k must be at least 1, got {args.top_k}")
    submission = Path(args.submission) if args.submission else None
    if submission is not None:
        if submission.exists() and not args.force:
            raise WavemelError(f"{submission}: already exists (use --force to overwrite it)")
        if not submission.parent.is_dir():
            raise WavemelError(f"{submission.parent}: no such folder for --submission")
    files, errors = expand_paths(args.paths)
    if not files and not errors:
        raise WavemelError(f"no audio files found in {', '.join(map(display_path, args.paths))}")
    # Checked before any tagging: a clash found after an hour of work would waste it.
    names = dict(zip(files, _submission_names(files))) if submission is not None else {}
    load = Tagger.from_onnx if str(args.run).endswith(".onnx") else Tagger.from_checkpoint
    tagger = load(args.run, **inference_kwargs(args))
    top_k = min(args.top_k, len(tagger.labels))
    results: list[tuple[Path, list[tuple[str, float]]]] = []
    # Kaggle rejects a submission that lacks a test file, so an undecodable one still gets a row
    # (the empty-clip answer: training prior or uniform); it is reported like any bad file.
    rows: list[tuple[str, list[str]]] = []
    fallback = [label for label, _ in tagger.top_k(tagger.empty_distribution, 3)]
    progress = None
    if not args.json and sys.stderr.isatty() and len(files) > 1:
        from tqdm import tqdm

        progress = tqdm(total=len(files), desc="predict", unit="file", leave=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path, probabilities, error in tagger.predict_many(files):
            if progress is not None:
                progress.update()
            if error is not None:
                errors[display_path(path)] = error
                rows.append((names.get(path, ""), fallback))
                continue
            ranked = tagger.top_k(probabilities, max(top_k, 3))
            results.append((path, ranked))
            rows.append((names.get(path, ""), [label for label, _ in ranked[:3]]))
            if not args.json:
                shown = "  ".join(f"{label} {score:.3f}" for label, score in ranked[:top_k])
                line = f"{display_path(path)}\t{shown}"
                if progress is None:
                    print(line, flush=True)
                else:
                    progress.write(line, file=sys.stdout)
    notes = [str(w.message) for w in caught]
    if progress is not None:
        progress.close()

    if args.json:
        payload = {
            "run": display_path(args.run),
            "results": [
                {
                    "path": display_path(path),
                    "tags": [{"label": label, "score": score} for label, score in ranked[:top_k]],
                }
                for path, ranked in results
            ],
            "errors": errors,
        }
        print(json.dumps(payload, indent=2))
    if submission is not None:
        _write_submission(submission, rows)
        guessed = len(rows) - len(results)
        note = f", {guessed} undecodable given the prior answer" if guessed else ""
        print(f"wrote {submission} ({len(rows)} files{note})", file=sys.stderr)
    for note in notes:
        print(f"wavemel: warning: {note}", file=sys.stderr)
    if errors:
        print(f"wavemel: {len(errors)} file(s) could not be tagged:", file=sys.stderr)
        for reason in errors.values():
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0
