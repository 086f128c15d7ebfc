"""``wavemel predict``: tag audio files (or folders of them) with a trained run."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import warnings
from pathlib import Path

from wavemel._io import atomic_write_text
from wavemel._paths import display_path
from wavemel.cli._options import add_inference_options, inference_kwargs
from wavemel.errors import AudioError, WavemelError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="tag audio files or folders with a trained run",
        description="Tag each file (folders are searched recursively for audio files) with the "
        "top-k labels of a run's best checkpoint; a multi-label run first lists every label at "
        "or above its decision threshold. Files that cannot be decoded are listed at "
        "the end and make the exit status 1; every other file is still tagged.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder, checkpoint .json or exported .onnx")
    parser.add_argument("paths", metavar="PATH", nargs="+", help="audio files or folders")
    parser.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="RUN",
        help="another run (folder, .json or .onnx) whose clip probabilities are averaged with "
        "RUN's; repeat it for more (fold or seed ensembles: same labels, rate and activation)",
    )
    parser.add_argument("--top-k", type=int, default=3, metavar="K", help="labels per file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--submission",
        metavar="CSV",
        help="also write a Kaggle submission (fname,label with three labels for every file; for "
        "a multi-label run fname and one probability column per label, as FSDKaggle2019)",
    )
    parser.add_argument(
        "--timeline",
        metavar="CSV",
        help="also write per-window scores and merged segments (columns file,kind,start,end,"
        "label,score; kind is window or segment)",
    )
    parser.add_argument(
        "--all", action="store_true", help="--timeline rows for every class, not the top-k"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="P",
        help="window probability that starts a segment (default: 0.5, more likely than all "
        "other labels together)",
    )
    parser.add_argument(
        "--plot", metavar="PNG", help="for one file: its log-mel and top labels over time"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing --submission, --timeline or --plot files",
    )
    add_inference_options(parser)
    parser.set_defaults(func=run)


def expand_paths(paths: list[str]) -> tuple[list[Path], dict[str, str]]:
    """Files as given plus the audio files found under folders; each bad path apart.

    Returns:
        ``(files, errors)``: ``files`` as :func:`wavemel.data.files.find_audio_files` finds
        them (each file once); ``errors`` maps each missing path or entry that is not a
        regular file (FIFO, broken link, link loop), shown escaped, to its one-line reason.
    """
    # lazy: the data package imports soundfile, which `wavemel --help` must not
    from wavemel.data.files import find_audio_files

    files, problems = find_audio_files(paths)
    return files, {display_path(p.path): str(p) for p in problems}


def _submission_names(files: list[Path]) -> list[str]:
    """Each file's ``fname`` cell; two files with one name cannot both be in a submission.

    Raises:
        WavemelError: Two different files share a file name (Kaggle keys rows by it).
    """
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


def _check_timeline_options(args: argparse.Namespace, files: list[Path]) -> None:
    """Refuse bad --timeline / --plot / --threshold / --all settings before any tagging."""
    # lazy: figures imports torch, which `wavemel --help` must not
    from wavemel.figures import check_figure_path

    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise WavemelError(f"--threshold must be in (0, 1], got {args.threshold}")
    if (args.all or args.threshold is not None) and not (args.timeline or args.plot):
        raise WavemelError("--all and --threshold need --timeline or --plot")
    if args.timeline:
        path = Path(args.timeline)
        if path.exists() and not args.force:
            raise WavemelError(f"{path}: already exists (use --force to overwrite it)")
        if not path.parent.is_dir():
            raise WavemelError(f"{path.parent}: no such folder for --timeline")
    if args.ensemble and (args.timeline or args.plot):
        raise WavemelError("--timeline and --plot show one model's windows, not an --ensemble")
    if args.plot:
        check_figure_path(args.plot, overwrite=args.force)
        if len(files) != 1:
            raise WavemelError(f"--plot draws one file, got {len(files)}")


def _write_timelines(args: argparse.Namespace, tagger, files: list[Path], errors: dict) -> None:
    """The --timeline CSV (streamed, renamed in at the end) and the --plot figure."""
    # lazy: figures imports torch, which `wavemel --help` must not
    from wavemel.figures import plot_timeline
    from wavemel.timeline import DEFAULT_THRESHOLD, TimelineCsv, timeline

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    top_k = None if args.all else args.top_k
    sink = TimelineCsv(args.timeline, top_k) if args.timeline else contextlib.nullcontext()
    with sink:
        for path in files:
            if display_path(path) in errors:
                continue
            try:
                clip = timeline(tagger, path, hop_seconds=args.hop_seconds, threshold=threshold)
            except AudioError as exc:
                errors[display_path(path)] = str(exc)
                continue
            if args.timeline:
                sink.add(display_path(path), clip)
            if args.plot:
                shown = clip.top_labels(min(args.top_k, 5))
                plot_timeline(
                    path,
                    args.plot,
                    sample_rate=tagger.sample_rate,
                    starts=clip.series.starts,
                    ends=clip.series.ends,
                    scores=clip.series.values[:, shown],
                    labels=[clip.labels[i] for i in shown],
                    threshold=threshold,
                )
    for written in (args.timeline, args.plot):
        if written:
            print(f"wrote {written}", file=sys.stderr)


def _write_probability_submission(
    path: Path, labels: list[str], rows: list[tuple[str, list[float]]]
) -> None:
    """Write ``fname,<label>...`` rows of probabilities atomically (FSDKaggle2019's format)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["fname", *labels])
    writer.writerows([fname, *(f"{p:.6f}" for p in probabilities)] for fname, probabilities in rows)
    atomic_write_text(path, text.getvalue())


def _shown(pairs: list[tuple[str, float]]) -> str:
    return "  ".join(f"{label} {score:.3f}" for label, score in pairs)


def _text_line(path: Path, top: list[tuple[str, float]], tags: list | None) -> str:
    """``path<TAB>top-k``, or for a multi-label run ``path<TAB>tags<TAB>(top-k: ...)``."""
    if tags is None:
        return f"{display_path(path)}\t{_shown(top)}"
    shown = _shown(tags) or "(no label above its threshold)"
    return f"{display_path(path)}\t{shown}\t(top-{len(top)}: {_shown(top)})"


def _json_result(path: Path, top: list[tuple[str, float]], tags: list | None) -> dict:
    result = {"path": display_path(path), "tags": [{"label": k, "score": p} for k, p in top]}
    if tags is not None:
        # Multi-label: every label at or above its threshold, best first.
        result["labels"] = [{"label": k, "score": p} for k, p in tags]
    return result


def _load_tagger(args: argparse.Namespace):
    """RUN's tagger, or with ``--ensemble`` the ensemble of RUN and those runs."""
    # lazy: imports torch, which `wavemel --help` must not
    from wavemel.infer import Ensemble, Tagger

    runs = [args.run, *args.ensemble]
    taggers = [
        (Tagger.from_onnx if str(run).endswith(".onnx") else Tagger.from_checkpoint)(
            run, **inference_kwargs(args)
        )
        for run in runs
    ]
    if len(taggers) == 1:
        return taggers[0]
    return Ensemble(taggers, names=[display_path(run) for run in runs])


def run(args: argparse.Namespace) -> int:

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
    _check_timeline_options(args, files)
    tagger = _load_tagger(args)
    top_k = min(args.top_k, len(tagger.labels))
    results: list[tuple[Path, list[tuple[str, float]]]] = []
    tags: dict[Path, list[tuple[str, float]]] = {}  # multi-label: the labels above threshold
    probability_rows: list[tuple[str, list[float]]] = []
    # Kaggle rejects a submission that lacks a test file, so an undecodable one still gets a row
    # (the empty-clip answer: training prior or uniform); it is reported like any bad file.
    rows: list[tuple[str, list[str]]] = []
    fallback = [label for label, _ in tagger.top_k(tagger.empty_distribution, 3)]
    progress = None
    if not args.json and sys.stderr.isatty() and len(files) > 1:
        # lazy: only a terminal run over several files shows a bar
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
                probability_rows.append((names.get(path, ""), list(tagger.empty_distribution)))
                continue
            ranked = tagger.top_k(probabilities, max(top_k, 3))
            results.append((path, ranked))
            rows.append((names.get(path, ""), [label for label, _ in ranked[:3]]))
            probability_rows.append((names.get(path, ""), [float(p) for p in probabilities]))
            if tagger.multi_label:
                tags[path] = tagger.above_threshold(probabilities)
            if not args.json:
                line = _text_line(path, ranked[:top_k], tags.get(path))
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
            **({"ensemble": [display_path(r) for r in args.ensemble]} if args.ensemble else {}),
            "results": [
                _json_result(path, ranked[:top_k], tags.get(path)) for path, ranked in results
            ],
            "errors": errors,
        }
        print(json.dumps(payload, indent=2))
    if submission is not None:
        if tagger.multi_label:
            _write_probability_submission(submission, tagger.labels, probability_rows)
        else:
            _write_submission(submission, rows)
        guessed = len(rows) - len(results)
        note = f", {guessed} undecodable given the prior answer" if guessed else ""
        print(f"wrote {submission} ({len(rows)} files{note})", file=sys.stderr)
    if args.timeline or args.plot:
        _write_timelines(args, tagger, files, errors)
    for note in notes:
        print(f"wavemel: warning: {note}", file=sys.stderr)
    if errors:
        print(f"wavemel: {len(errors)} file(s) could not be tagged:", file=sys.stderr)
        for reason in errors.values():
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0
