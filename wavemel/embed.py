"""Embeddings of audio files written to a folder: what ``wavemel embed`` does.

For each file, :class:`~wavemel.infer.Tagger` streams the windows of the training input length
through the model's ``features(x)``; the clip-level embedding is their mean
(:meth:`~wavemel.infer.Tagger.embed`) and, on request, the per-window embeddings are kept with
their start and end times. Files are embedded one after the other and each is written before
the next is read, so memory holds one file's windows at most (a 1-hour file at the default hop
is 3600 rows).

An output folder holds, per input file with output name ``NAME``:

- ``npy`` format: ``NAME.npy`` (``(D,)`` float32), and with timestamps ``NAME.windows.npy``
  (``(W, D)`` float32) and ``NAME.times.npy`` (``(W, 2)`` float64: start and end in seconds);
- ``safetensors`` format: ``NAME.safetensors`` with the tensors ``embedding`` and, with
  timestamps, ``window_embeddings``, ``window_starts`` and ``window_ends`` (the source file's
  name in the header's metadata);

plus ``index.csv`` (``file,output,dim,windows,error``: one row per file, failed ones with their
one-line reason and no output) and ``.wavemel-embed``, the marker that says wavemel made the
folder. Output names are the files' stems reduced to letters, digits, ``_`` and ``-``, made
unique (``dog``, ``dog-2``, ...; case-insensitively, for file systems that ignore case).

A folder is written into when it is new or empty (wavemel makes and marks it) or marked; a
non-empty folder wavemel did not make only with ``force``. Nothing is ever deleted; a file of the
same name as an output is replaced (in a marked folder it is an earlier output).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from wavemel._io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    make_folder,
    os_error_reason,
)
from wavemel._paths import display_path
from wavemel.errors import AudioError, WavemelError
from wavemel.infer import Tagger, WindowSeries

__all__ = [
    "FORMATS",
    "INDEX",
    "MARKER",
    "EmbeddingFolder",
    "EmbeddingRecord",
    "embed_files",
    "output_names",
    "write_index",
]

FORMATS = ("npy", "safetensors")
MARKER = ".wavemel-embed"
INDEX = "index.csv"
_INDEX_FIELDS = ("file", "output", "dim", "windows", "error")
# Anything but letters, digits, "_" and "-" (a "." too: NAME.windows.npy must not be another
# file's NAME.npy). Unicode letters stay; undecodable bytes (surrogates) do not.
_UNSAFE = re.compile(r"[^\w-]+")
# Output names stay well under the 255-byte limit of a file name, suffixes included.
_MAX_NAME_BYTES = 120


@dataclasses.dataclass(frozen=True)
class EmbeddingRecord:
    """One row of ``index.csv``.

    Attributes:
        file: The input file, as shown (:func:`~wavemel._paths.display_path`).
        output: The clip embedding's file name in the folder (empty when it failed).
        dim: Embedding width ``D`` (0 when it failed).
        windows: Windows the clip was cut into (0 when it failed).
        error: The one-line reason it failed (empty when it did not).
    """

    file: str
    output: str = ""
    dim: int = 0
    windows: int = 0
    error: str = ""


class EmbeddingFolder:
    """The output folder of ``wavemel embed``: checked first, created only when work starts.

    Use it in two steps, so that a bad run or option leaves nothing behind::

        folder = EmbeddingFolder.check(out, force=...)   # reads only
        ...                                              # load the model, find the files
        folder.create()                                  # make and mark a new folder
    """

    def __init__(self, path: Path, new: bool) -> None:
        self.path = path
        self.new = new

    @classmethod
    def check(
        cls, out: str | os.PathLike, *, force: bool, run: str | os.PathLike | None = None
    ) -> EmbeddingFolder:
        """Check that embeddings may be written into ``out``, writing nothing.

        Args:
            out: The output folder.
            force: Write into a non-empty folder wavemel did not make.
            run: The run folder or checkpoint the embeddings come from: ``out`` may not be it
                or lie inside it (an input named ``best.wav`` would replace its weights, and
                a run folder holding other files is no longer one wavemel may clear).

        Raises:
            WavemelError: ``out`` is not a folder, cannot be listed, is or lies in ``run``, or
                is a non-empty folder wavemel did not make and ``force`` is off.
        """
        path = Path(out)
        if run is not None:
            _check_outside(path, Path(run))
        if not os.path.lexists(path):
            return cls(path, new=True)
        if not path.is_dir():
            raise WavemelError(
                f"{display_path(path)}: exists and is not a folder; choose another -o"
            )
        try:
            entries = sorted(os.listdir(path))
        except OSError as exc:
            raise WavemelError(
                f"{display_path(path)}: cannot list the folder ({os_error_reason(exc)})"
            ) from None
        if entries and MARKER not in entries and not force:
            shown = ", ".join(repr(display_path(e)) for e in entries[:3])
            more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
            raise WavemelError(
                f"{display_path(path)}: folder is not empty and was not made by wavemel embed "
                f"(it holds {shown}{more}); pass --force to write into it anyway"
            )
        return cls(path, new=not entries)

    def create(self) -> None:
        """Make the folder if needed; mark it when wavemel made it (or found it empty)."""
        make_folder(self.path)
        if self.new:
            atomic_write_json(self.path / MARKER, {"kind": "embeddings"})


def _check_outside(out: Path, run: Path) -> None:
    target = out.expanduser().resolve()
    run = run.expanduser().resolve()
    folder = run if run.is_dir() or not run.suffix else run.parent
    if target == folder or folder in target.parents:
        raise WavemelError(
            f"{display_path(out)}: -o is inside the run {display_path(run)}; choose a folder "
            "outside it"
        )


def output_names(files: Sequence[str | os.PathLike]) -> list[str]:
    """A distinct output name per file, from its stem (see the module docstring).

    Returns:
        One name per file, in order; unique even on file systems that ignore case.
    """
    taken: set[str] = set()
    names = []
    for file in files:
        stem = _UNSAFE.sub("_", os.fsdecode(Path(file).stem)).strip("_") or "clip"
        stem = stem.encode("utf-8")[:_MAX_NAME_BYTES].decode("utf-8", "ignore")
        name, number = stem, 1
        while name.casefold() in taken:
            number += 1
            name = f"{stem}-{number}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_outputs(
    folder: Path,
    name: str,
    file: str,
    embedding: np.ndarray,
    series: WindowSeries | None,
    format: str,
) -> str:
    """Write one file's embedding (and windows) atomically; returns the clip output's name."""
    if format == "safetensors":
        tensors = {"embedding": embedding}
        if series is not None:
            tensors["window_embeddings"] = series.values.astype(np.float32)
            tensors["window_starts"] = series.starts.astype(np.float64)
            tensors["window_ends"] = series.ends.astype(np.float64)
        output = f"{name}.safetensors"
        atomic_write_bytes(folder / output, save(tensors, metadata={"file": file}))
        return output
    output = f"{name}.npy"
    if series is not None:
        times = np.stack([series.starts, series.ends], axis=1).astype(np.float64)
        windows = series.values.astype(np.float32)
        atomic_write_bytes(folder / f"{name}.windows.npy", _npy_bytes(windows))
        atomic_write_bytes(folder / f"{name}.times.npy", _npy_bytes(times))
    atomic_write_bytes(folder / output, _npy_bytes(embedding))
    return output


def embed_files(
    tagger: Tagger,
    files: Sequence[str | os.PathLike],
    folder: str | os.PathLike,
    *,
    timestamps: bool = False,
    format: str = "npy",
) -> Iterator[EmbeddingRecord]:
    """Embed each file and write it into ``folder`` before reading the next one.

    Args:
        tagger: The model, its window length and hop (``Tagger.hop_samples``).
        files: Audio files; a file that cannot be decoded, or is empty, is reported in its
            record and the others continue.
        folder: Where to write (see :class:`EmbeddingFolder`).
        timestamps: Also write the per-window embeddings and their times.
        format: ``"npy"`` or ``"safetensors"``.

    Yields:
        One :class:`EmbeddingRecord` per file, in order, after its outputs are written.

    Raises:
        WavemelError: An output could not be written (disk full, permissions): the message
            names the file; the files done so far stay written.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    folder = Path(folder)
    for file, name in zip(files, output_names(files)):
        shown = display_path(file)
        try:
            series = tagger.window_embeddings(file)
        except AudioError as exc:
            yield EmbeddingRecord(shown, error=str(exc))
            continue
        if series.values.shape[0] == 0:
            yield EmbeddingRecord(shown, error=f"{shown}: empty clip (0 samples), nothing to embed")
            continue
        # Tagger.embed is this mean; computing it here decodes the file once for both outputs.
        embedding = series.values.mean(axis=0).astype(np.float32)
        output = _write_outputs(
            folder, name, shown, embedding, series if timestamps else None, format
        )
        yield EmbeddingRecord(shown, output, int(embedding.shape[0]), int(series.values.shape[0]))


def write_index(folder: str | os.PathLike, records: Sequence[EmbeddingRecord]) -> Path:
    """Write ``index.csv`` atomically (the csv module quotes commas and newlines in names)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(_INDEX_FIELDS)
    for record in records:
        writer.writerow(
            [
                record.file,
                record.output,
                record.dim or "",
                record.windows or "",
                record.error,
            ]
        )
    path = Path(folder) / INDEX
    atomic_write_text(path, text.getvalue())
    return path
