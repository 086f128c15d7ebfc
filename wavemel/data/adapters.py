"""Dataset adapters: read a dataset's layout into a :class:`~wavemel.data.records.DatasetIndex`.

Formats (``load_dataset(root, format=...)``, ``wavemel ... --format``):

``fsdkaggle2018``
    The Zenodo release: ``FSDKaggle2018.audio_train/``, ``FSDKaggle2018.audio_test/`` and
    ``FSDKaggle2018.meta/{train_post_competition,test_post_competition_scoring_clips}.csv``.
    ``root`` may also be the metadata folder itself (CSV files only, e.g. to count rows).
``fsdkaggle2018-kaggle``
    The Kaggle competition layout: ``train.csv`` (fname,label,manually_verified),
    ``audio_train/``, ``audio_test/``, and optionally ``test_post_competition*.csv`` at the root
    for test labels.
``folder``
    One folder per class: ``ROOT/<label>/**/*.wav`` (also flac, ogg, mp3, aiff).
``csv``
    A manifest CSV (``root`` is the CSV file, or a folder holding ``manifest.csv``) with columns
    ``path,label``; several labels go in one quoted cell, ``"a,b"``. Optional columns ``split``,
    ``fold``, ``manually_verified``, ``usage``, ``group`` are understood; others land in
    ``record.fields``. Relative paths are relative to the CSV's folder and normalised, and rows
    are matched by the file they name, so one file spelled two ways is one clip (a second row is
    a ``duplicate`` problem, or ``conflicting_labels`` if its labels differ; the first row is
    kept). Training rows without a label and rows with too few cells are problems, left out.
``pattern``
    A flat folder whose file names carry the label, e.g. ``label_pattern=
    "{label}_{speaker}_{take}.wav"``; every ``{field}`` goes to ``record.fields``. Fields match
    as few characters as possible, left to right, so a value that contains the separator can
    only be the last field. A pattern with ``/`` matches paths below the root.

Auto-detection (``format=None``) tries, in this order: a ``.csv`` file -> ``csv``; a
``label_pattern`` given -> ``pattern``; ``FSDKaggle2018.meta/train_post_competition.csv`` (or that
CSV at the root) -> ``fsdkaggle2018``; ``train.csv`` next to ``audio_train/`` or ``audio_test/``
-> ``fsdkaggle2018-kaggle``; ``manifest.csv`` -> ``csv``; sub-folders holding audio -> ``folder``.

Folders are searched by :mod:`wavemel.data.files` (FIFOs, broken links and link loops are
problems named one by one, never opened). Loading never decodes audio: it lists folders, stats
sizes, and reads headers only of tiny files (to find empty ones), so indexing costs about a
directory listing (0.1 s for FSDD's 3,000 files).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from wavemel._io import require_regular_file
from wavemel._paths import display_path
from wavemel.audio import audio_info
from wavemel.data.files import file_problem, iter_audio_files, walk_audio_files
from wavemel.data.records import ClipRecord, DatasetIndex, Problem
from wavemel.errors import AudioError, DataError

__all__ = ["FORMATS", "load_dataset", "detect_format", "read_fsdkaggle2018_metadata"]

FORMATS = ("fsdkaggle2018", "fsdkaggle2018-kaggle", "folder", "csv", "pattern")

ZENODO_META = "FSDKaggle2018.meta"
ZENODO_TRAIN_AUDIO = "FSDKaggle2018.audio_train"
ZENODO_TEST_AUDIO = "FSDKaggle2018.audio_test"
TRAIN_CSV = "train_post_competition.csv"
# The Zenodo release ships only the scored rows; Kaggle mirrors ship all 9,400 (with "Ignored").
TEST_CSVS = ("test_post_competition_scoring_clips.csv", "test_post_competition.csv")
MANIFEST = "manifest.csv"

# A file this small may hold no samples at all (a WAV header alone is 44 bytes); only such files
# get their header read, so indexing stays a directory listing plus stats.
_SMALL_FILE_BYTES = 1024
# Label cells that mean "no label" in FSDKaggle2018's test CSVs (padding clips).
_NO_LABEL = {"", "none", "nan"}


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(
    root: str | os.PathLike,
    format: str | None = None,
    *,
    label_pattern: str | None = None,
    group_field: str | None = None,
    check_files: bool = True,
) -> DatasetIndex:
    """Index a dataset: every clip with its labels and split, plus the problems found.

    Args:
        root: Dataset folder (or, for ``csv``, the manifest file).
        format: One of :data:`FORMATS`; ``None`` detects it (see the module docstring).
        label_pattern: For ``pattern``: file-name template such as
            ``"{label}_{speaker}_{take}.wav"``; ``{label}`` is required.
        group_field: Name of a metadata field (pattern field, CSV column) whose value becomes
            ``record.group``, so that held-out-group folds keep each group together.
        check_files: Check that listed files exist and are not empty (stats only, no decoding).
            ``False`` reads metadata alone, e.g. the FSDKaggle2018 CSVs without their audio.

    Returns:
        The :class:`DatasetIndex`. Missing, empty or unreadable files and unknown labels are in
        ``index.problems``; records whose file is missing are left out when ``check_files``.

    Raises:
        DataError: ``root`` does not exist, no layout matches, or metadata is malformed.
    """
    # abspath, not resolve(): collapse "..", but keep symlinked data folders as the user named them.
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if format is None:
        format = detect_format(root, label_pattern=label_pattern)
    if format not in _ADAPTERS:
        raise DataError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "pattern" and not label_pattern:
        raise DataError(
            f"{root}: format 'pattern' needs a label pattern such as '{{label}}_{{speaker}}.wav'"
        )
    problems: list[Problem] = []
    records = _ADAPTERS[format](root, problems, label_pattern)
    records = _drop_duplicates(records, problems)
    if group_field:
        records = _apply_group_field(root, records, group_field)
    # The vocabulary comes from the metadata, before missing files are dropped: a class whose
    # clips are all absent is still a class of the dataset.
    labels = _label_vocabulary(records)
    records = _check_labels(records, labels, problems)
    if check_files:
        records = _check_files(records, problems)
    return DatasetIndex(root=root, format=format, labels=labels, records=records, problems=problems)


def detect_format(root: str | os.PathLike, *, label_pattern: str | None = None) -> str:
    """Guess a dataset's format from its layout (order in the module docstring).

    Raises:
        DataError: Nothing matches; the message names ``root`` and what was looked for.
    """
    root = Path(root)
    if not root.is_dir():
        # Never open a FIFO or device given as the root: reading it could block forever.
        require_regular_file(root, error=DataError, what="dataset folder or CSV manifest")
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"{root}: a file, but not a CSV manifest; give a dataset folder or a .csv")
    if label_pattern:
        return "pattern"
    if (root / ZENODO_META / TRAIN_CSV).is_file() or (root / TRAIN_CSV).is_file():
        return "fsdkaggle2018"
    if (root / "train.csv").is_file() and (
        (root / "audio_train").is_dir() or (root / "audio_test").is_dir()
    ):
        return "fsdkaggle2018-kaggle"
    if (root / MANIFEST).is_file():
        return "csv"
    if any(_has_audio(sub) for sub in _subdirs(root)):
        return "folder"
    hint = ""
    if _has_audio(root, recursive=False):
        hint = " (audio files at the top level: use --format pattern --label-pattern ...)"
    raise DataError(
        f"{root}: no known dataset layout found{hint}; looked for {ZENODO_META}/{TRAIN_CSV}, "
        f"train.csv with audio_train/, {MANIFEST}, and class sub-folders holding audio"
    )


def read_fsdkaggle2018_metadata(
    train_csv: str | os.PathLike, test_csv: str | os.PathLike | None = None
) -> DatasetIndex:
    """Read FSDKaggle2018 CSV files alone, without audio (paths point next to the CSVs).

    Args:
        train_csv: ``train_post_competition.csv`` or Kaggle's ``train.csv``.
        test_csv: Optional ``test_post_competition*.csv`` with ``label`` and ``usage``.

    Returns:
        A :class:`DatasetIndex` of format ``"fsdkaggle2018"`` with no file checks done.
    """
    train_csv = Path(os.path.abspath(train_csv))
    problems: list[Problem] = []
    records = _fsd_train_records(train_csv, train_csv.parent, problems)
    if test_csv is not None:
        test_csv = Path(os.path.abspath(test_csv))
        records += _fsd_test_records(test_csv, test_csv.parent, None, problems)
    labels = _label_vocabulary(records)
    records = _check_labels(records, labels, problems)
    return DatasetIndex(train_csv.parent, "fsdkaggle2018", labels, records, problems)


# ---------------------------------------------------------------------------------------------
# Adapters: (root, problems, label_pattern) -> records, unchecked


def _load_zenodo(root: Path, problems: list[Problem], _pattern: str | None) -> list[ClipRecord]:
    meta = root / ZENODO_META
    if not (meta / TRAIN_CSV).is_file():
        if (root / TRAIN_CSV).is_file():
            # The metadata folder itself; its audio folders, if any, are its siblings.
            meta = root
        else:
            raise DataError(f"{root}: not an FSDKaggle2018 folder (no {ZENODO_META}/{TRAIN_CSV})")
    base = meta.parent
    train_dir, test_dir = base / ZENODO_TRAIN_AUDIO, base / ZENODO_TEST_AUDIO
    records = _fsd_train_records(meta / TRAIN_CSV, train_dir, problems)
    test_csv = next((meta / name for name in TEST_CSVS if (meta / name).is_file()), None)
    records += _fsd_test_records(test_csv, test_dir, test_dir, problems)
    return records


def _load_kaggle(root: Path, problems: list[Problem], _pattern: str | None) -> list[ClipRecord]:
    train_csv = root / "train.csv"
    if not train_csv.is_file():
        raise DataError(f"{root}: not a Kaggle FSDKaggle2018 folder (no train.csv)")
    records = _fsd_train_records(train_csv, root / "audio_train", problems)
    test_csv = next((root / name for name in TEST_CSVS if (root / name).is_file()), None)
    if test_csv is None:
        test_csv = next(iter(sorted(root.glob("test_post_competition*.csv"))), None)
    test_dir = root / "audio_test"
    records += _fsd_test_records(test_csv, test_dir, test_dir, problems)
    return records


def _load_folder(root: Path, problems: list[Problem], _pattern: str | None) -> list[ClipRecord]:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (format 'folder' needs ROOT/<label>/*.wav)")
    # Top-level files are no clips here, but a link that cannot be followed may have been a
    # class folder: name it rather than lose a class without a word.
    _, top_problems = walk_audio_files(root, recursive=False)
    problems += top_problems
    records = []
    for class_dir in _subdirs(root):
        files, found_problems = walk_audio_files(class_dir)
        problems += found_problems
        # A label is written into checkpoints and reports: a folder name that is not UTF-8
        # becomes its escaped, printable form.
        label = display_path(class_dir.name)
        records += [ClipRecord(path=path, labels=(label,)) for path in files]
    if not records:
        raise DataError(f"{root}: no class sub-folders with audio files found")
    return records


def _load_csv(root: Path, problems: list[Problem], _pattern: str | None) -> list[ClipRecord]:
    manifest = root / MANIFEST if root.is_dir() else root
    if root.is_dir() and not os.path.lexists(manifest):
        raise DataError(f"{root}: no {MANIFEST} found (format 'csv' needs a manifest CSV)")
    header, rows = _read_csv(manifest, problems)
    columns = set(header)
    path_col = next((c for c in ("path", "fname", "file", "filename") if c in columns), None)
    label_col = next((c for c in ("label", "labels") if c in columns), None)
    if path_col is None or label_col is None:
        raise DataError(f"{manifest}: needs 'path' and 'label' columns, found {sorted(columns)}")
    known = {path_col, label_col, "split", "fold", "manually_verified", "usage", "group"}
    base = manifest.parent
    first_row: dict[object, tuple[int, ClipRecord]] = {}  # file key -> (line, record)
    records = []
    for line, row in rows:
        where = f"{manifest.name} line {line}"
        cell = row[path_col].strip()
        if not cell:
            problems.append(Problem(manifest, "bad_row", f"line {line}: no file named; left out"))
            continue
        # Normalised against the manifest's folder: "clips/../x.wav" and "x.wav" are one path.
        path = Path(os.path.abspath(os.path.join(base, cell)))
        fold = (row.get("fold") or "").strip()
        try:
            fold_value = int(fold) if fold else None
        except ValueError:
            raise DataError(f"{manifest}, line {line}: fold {fold!r} is not an integer") from None
        record = ClipRecord(
            path=path,
            labels=_split_labels(row[label_col]),
            split=(row.get("split") or "").strip() or "train",
            manually_verified=_parse_bool(row.get("manually_verified"), manifest, line),
            usage=(row.get("usage") or "").strip() or None,
            fold=fold_value,
            group=(row.get("group") or "").strip() or None,
            fields={k: v for k, v in row.items() if k not in known and k is not None},
        )
        if record.split == "train" and not record.labels:
            problems.append(Problem(path, "no_label", f"{where}: training row without a label"))
            continue
        key = _file_key(path)
        if key in first_row:
            problems.append(_repeated_row(where, path, line, record, *first_row[key]))
            continue
        first_row[key] = (line, record)
        records.append(record)
    return records


def _file_key(path: Path) -> object:
    """What makes two manifest paths one clip: the file itself (through links and hard links)
    when it exists, else the normalised path."""
    try:
        info = os.stat(path)
    except OSError:
        return path
    return info.st_dev, info.st_ino


def _repeated_row(
    where: str, path: Path, line: int, record: ClipRecord, first_line: int, first: ClipRecord
) -> Problem:
    """The problem of a manifest row naming the file of an earlier row (which is kept)."""
    if sorted(record.labels) != sorted(first.labels):
        labels = f"{','.join(first.labels) or 'none'} vs {','.join(record.labels) or 'none'}"
        return Problem(
            path,
            "conflicting_labels",
            f"{where}: same file as line {first_line} with other labels ({labels}); "
            f"line {first_line} kept",
        )
    return Problem(path, "duplicate", f"{where}: same file as line {first_line}; left out")


def _load_pattern(
    root: Path, problems: list[Problem], label_pattern: str | None
) -> list[ClipRecord]:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (format 'pattern' needs a folder of audio files)")
    regex, names = _compile_pattern(label_pattern or "")
    nested = "/" in label_pattern
    candidates, found_problems = walk_audio_files(root, recursive=nested)
    problems += found_problems
    records = []
    for path in candidates:
        name = path.relative_to(root).as_posix() if nested else path.name
        match = regex.fullmatch(name)
        if match is None and not Path(label_pattern).suffix:
            # A pattern without an extension describes the stem.
            match = regex.fullmatch(name.rsplit(".", 1)[0])
        if match is None:
            problems.append(
                Problem(path, "unmatched", f"file name does not match pattern {label_pattern!r}")
            )
            continue
        fields = {key: match.group(key) for key in names}
        records.append(ClipRecord(path=path, labels=(fields["label"],), fields=fields))
    if not records:
        raise DataError(f"{root}: no audio file name matches the pattern {label_pattern!r}")
    return records


_ADAPTERS: dict[str, Callable[..., list[ClipRecord]]] = {
    "fsdkaggle2018": _load_zenodo,
    "fsdkaggle2018-kaggle": _load_kaggle,
    "folder": _load_folder,
    "csv": _load_csv,
    "pattern": _load_pattern,
}


# ---------------------------------------------------------------------------------------------
# FSDKaggle2018 CSVs


def _fsd_train_records(train_csv: Path, audio_dir: Path, problems: list[Problem]):
    header, rows = _read_csv(train_csv, problems)
    _require_columns(train_csv, header, rows, ("fname", "label"))
    records = []
    for line, row in rows:
        label = row["label"].strip()
        if label.lower() in _NO_LABEL:
            path = audio_dir / row["fname"]
            where = f"{train_csv.name} line {line}"
            problems.append(Problem(path, "no_label", f"{where}: training row without a label"))
            continue
        records.append(
            ClipRecord(
                path=audio_dir / row["fname"].strip(),
                labels=(label,),
                split="train",
                manually_verified=_parse_bool(row.get("manually_verified"), train_csv, line),
                fields=_extra_fields(row, ("fname", "label", "manually_verified")),
            )
        )
    return records


def _fsd_test_records(
    test_csv: Path | None,
    csv_audio_dir: Path,
    listing_dir: Path | None,
    problems: list[Problem],
) -> list[ClipRecord]:
    """Scored test rows from the CSV, then every other audio file of the test folder unlabelled.

    A Kaggle submission must cover every test file, so unscored padding clips (usage
    ``Ignored``, or not in the Zenodo scoring CSV at all) are kept with empty labels.
    """
    records = []
    listed = set()
    if test_csv is not None:
        header, rows = _read_csv(test_csv, problems)
        _require_columns(test_csv, header, rows, ("fname", "label"))
        for _line, row in rows:
            fname = row["fname"].strip()
            label = row["label"].strip()
            usage = (row.get("usage") or "").strip() or None
            unscored = label.lower() in _NO_LABEL or usage == "Ignored"
            listed.add(fname)
            records.append(
                ClipRecord(
                    path=csv_audio_dir / fname,
                    labels=() if unscored else (label,),
                    split="test",
                    usage=usage,
                    fields=_extra_fields(row, ("fname", "label", "usage")),
                )
            )
    if listing_dir is not None and listing_dir.is_dir():
        files, found_problems = walk_audio_files(listing_dir, recursive=False)
        problems += found_problems
        for path in files:
            if path.name not in listed:
                records.append(ClipRecord(path=path, labels=(), split="test"))
    return records


# ---------------------------------------------------------------------------------------------
# Checks shared by all adapters


def _check_files(records: list[ClipRecord], problems: list[Problem]) -> list[ClipRecord]:
    """Drop records whose file is missing or not a regular file; report them, and empty files."""
    sizes: dict[Path, dict[str, int]] = {}  # folder -> {name: size}, one listing per folder
    missing_dirs: dict[Path, int] = {}
    kept = []
    for record in records:
        folder = record.path.parent
        if folder not in sizes:
            sizes[folder] = _list_sizes(folder)
            if not folder.is_dir():
                missing_dirs[folder] = 0
        size = sizes[folder].get(record.path.name)
        if size is None:
            if folder in missing_dirs:
                missing_dirs[folder] += 1  # one problem per absent folder, not one per row
            else:
                problems.append(_absent_file_problem(record.path))
            continue
        kept.append(record)
        if size < _SMALL_FILE_BYTES:
            problem = _small_file_problem(record.path, size)
            if problem is not None:
                problems.append(problem)
    for folder, count in missing_dirs.items():
        problems.append(
            Problem(folder, "missing", f"audio folder not found; {count} listed clips have no file")
        )
    return kept


def _list_sizes(folder: Path) -> dict[str, int]:
    """``{name: size}`` of the regular files in ``folder`` (links followed).

    Entries that cannot be followed (a link loop, say) are left out one by one, so one bad
    entry never hides the rest of the folder.
    """
    sizes = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        sizes[entry.name] = entry.stat().st_size
                except OSError:
                    continue
    except OSError:
        return {}
    return sizes


def _absent_file_problem(path: Path) -> Problem:
    """A listed file that is not a regular file: missing, or a FIFO, link loop, folder ..."""
    problem = file_problem(path)
    if problem is not None and problem.kind == "not_a_file":
        return replace(problem, message=f"listed in metadata, but {problem.message}")
    return Problem(path, "missing", "listed in metadata, not on disk")


def _small_file_problem(path: Path, size: int) -> Problem | None:
    if size == 0:
        return Problem(path, "unreadable", "file is 0 bytes")
    try:
        info = audio_info(path)
    except AudioError as exc:
        return Problem(path, "unreadable", str(exc).removeprefix(f"{display_path(path)}: "))
    if info.frames == 0:
        return Problem(path, "empty", f"valid {info.format} file with 0 samples")
    return None


def _apply_group_field(root: Path, records: list[ClipRecord], group_field: str):
    out = []
    for record in records:
        value = record.fields.get(group_field)
        if value is None and group_field == "group" and record.group is not None:
            value = record.group
        if value is None or str(value).strip() == "":
            # Folds are made from labelled training clips only; others may lack the field
            # (e.g. unscored test clips found only in the audio folder).
            if record.split == "train" and record.labels:
                raise DataError(
                    f"{root}: group field {group_field!r} missing for {record.path.name} "
                    f"(available fields: {sorted(record.fields) or 'none'})"
                )
            out.append(record)
            continue
        out.append(replace(record, group=str(value)))
    return out


def _drop_duplicates(records: list[ClipRecord], problems: list[Problem]) -> list[ClipRecord]:
    """Keep the first of several records of one file in one split (a clip counts once)."""
    seen: set[tuple[str, Path]] = set()
    out = []
    for record in records:
        key = (record.split, record.path)
        if key in seen:
            problems.append(
                Problem(record.path, "duplicate", f"listed twice in split {record.split!r}")
            )
            continue
        seen.add(key)
        out.append(record)
    return out


def _label_vocabulary(records: Iterable[ClipRecord]) -> list[str]:
    """Sorted labels of the training split (all splits when there is no ``train`` split)."""
    records = list(records)
    train = [r for r in records if r.split == "train"]
    return sorted({label for r in (train or records) for label in r.labels})


def _check_labels(records, labels, problems):
    """Drop labels outside the vocabulary (reporting them): a model cannot score them."""
    vocabulary = set(labels)
    out = []
    for record in records:
        unknown = [label for label in record.labels if label not in vocabulary]
        if unknown:
            problems.append(
                Problem(
                    record.path,
                    "unknown_label",
                    f"{record.split} label(s) {', '.join(unknown)} not among the training labels",
                )
            )
            record = replace(record, labels=tuple(x for x in record.labels if x in vocabulary))
        out.append(record)
    return out


# ---------------------------------------------------------------------------------------------
# Small helpers


def _read_csv(
    path: Path, problems: list[Problem]
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and ``(line, row)`` of every complete row; a short row is a ``bad_row``."""
    header: list[str] = []
    rows = []
    require_regular_file(path, error=DataError, what="CSV file")  # a FIFO would block
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or ())
            for row in reader:
                # A short row has None for its missing cells; a long one keeps them under None.
                if None in row.values():
                    cells = sum(value is not None for value in row.values())
                    problems.append(
                        Problem(
                            path,
                            "bad_row",
                            f"line {reader.line_num}: {cells} cell(s) where the header has "
                            f"{len(header)}; left out",
                        )
                    )
                    continue
                rows.append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{display_path(path)}: cannot read CSV ({exc})") from None
    return header, rows


def _require_columns(
    path: Path, header: list[str], rows: list[tuple[int, dict[str, str]]], columns: tuple[str, ...]
) -> None:
    if not rows:
        return  # nothing to read (an empty CSV counts as no rows, whatever its header)
    absent = [c for c in columns if c not in header]
    if absent:
        raise DataError(f"{path}: missing column(s) {', '.join(absent)}; found {header}")


def _extra_fields(row: dict[str, str], known: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in row.items() if k not in known and k is not None}


def _split_labels(cell: str | None) -> tuple[str, ...]:
    if cell is None:
        return ()
    return tuple(part.strip() for part in cell.split(",") if part.strip())


def _parse_bool(value: str | None, path: Path, line: int) -> bool | None:
    if value is None or value.strip() == "":
        return None
    text = value.strip().lower()
    if text in {"1", "true", "yes", "y", "t"}:
        return True
    if text in {"0", "false", "no", "n", "f"}:
        return False
    raise DataError(f"{path}, line {line}: manually_verified {value!r} is not 0/1")


def _compile_pattern(pattern: str) -> tuple[re.Pattern[str], list[str]]:
    """``"{label}_{speaker}.wav"`` -> a regex with one named group per field."""
    parts = re.split(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", pattern)
    names = parts[1::2]
    if "label" not in names:
        raise DataError(f"label pattern {pattern!r} has no {{label}} field")
    if len(set(names)) != len(names):
        raise DataError(f"label pattern {pattern!r} repeats a field")
    regex = ""
    for i, part in enumerate(parts):
        # Fields are non-greedy and never cross a folder boundary; literals are taken verbatim.
        regex += f"(?P<{part}>[^/]+?)" if i % 2 else re.escape(part)
    return re.compile(regex), names


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_audio(folder: Path, *, recursive: bool = True) -> bool:
    items = iter_audio_files(folder, recursive=recursive)
    return any(not isinstance(item, Problem) for item in items)
