"""Timelines: what a tagger hears window by window, and the labelled segments above a threshold.

:func:`timeline` scores every window of a clip (:meth:`wavemel.infer.Tagger.window_probabilities`)
and merges, for each label, runs of consecutive windows whose probability reaches ``threshold``
into :class:`Segment` s, as sound-event detection tools report them. A segment starts where its
first window starts and ends where its last window ends; its score is the mean probability of its
windows.

:class:`TimelineCsv` writes timelines of any number of files into one CSV while they are computed
(rows are streamed to a hidden temporary file that is renamed into place when it is complete), so
memory holds one file's ``(W, C)`` window probabilities at a time, never the decoded audio.

It sits below :mod:`wavemel.infer` and needs nothing from it (a tagger is anything with
``labels`` and ``window_probabilities``), so ``infer`` imports it for ``Tagger.timeline`` and
for :class:`WindowSeries`, the per-window outputs both modules share.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from wavemel._io import os_error_reason, temp_name
from wavemel.errors import WavemelError


class WindowScorer(Protocol):
    """What :func:`timeline` needs of a tagger (:class:`wavemel.infer.Tagger` is one)."""

    labels: list[str]

    def window_probabilities(
        self, path_or_waveform: str | os.PathLike | np.ndarray, hop_seconds: float | None = None
    ) -> WindowSeries: ...


@dataclass(frozen=True)
class WindowSeries:
    """Per-window outputs of one clip.

    Attributes:
        starts: ``(W,)`` window start times in seconds.
        ends: ``(W,)`` window end times in seconds (a short clip's filled window ends with the
            clip).
        values: ``(W, D)`` what each window gave (probabilities or embeddings).
        duration: Clip length in seconds.
    """

    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray
    duration: float


__all__ = [
    "DEFAULT_THRESHOLD",
    "CSV_HEADER",
    "Segment",
    "Timeline",
    "TimelineCsv",
    "merge_segments",
    "timeline",
]

#: Window probability a label must reach to be part of a segment. Window scores are a softmax over
#: the classes, so 0.5 means "more likely than all other labels together": at most one label per
#: window, which is what a reader of a timeline expects without tuning.
DEFAULT_THRESHOLD = 0.5

#: Columns of a timeline CSV: ``kind`` is ``window`` (one row per window and shown label) or
#: ``segment`` (``start`` / ``end`` are the onset / offset, ``score`` the mean probability).
CSV_HEADER = ("file", "kind", "start", "end", "label", "score")


@dataclass(frozen=True)
class Segment:
    """A stretch of consecutive windows where one label reaches the threshold.

    Attributes:
        onset: Start of the first window, in seconds.
        offset: End of the last window, in seconds.
        label: The class name.
        score: Mean probability of the label over the segment's windows.
    """

    onset: float
    offset: float
    label: str
    score: float


def merge_segments(
    series: WindowSeries, labels: Sequence[str], threshold: float = DEFAULT_THRESHOLD
) -> list[Segment]:
    """Merge each label's runs of consecutive windows at or above ``threshold``.

    Consecutive means adjacent in the window order (windows overlap when the hop is shorter than
    the window, and the end-aligned last window may overlap its neighbour; both still merge).

    Args:
        series: Window starts and ends ``(W,)`` in seconds and probabilities ``(W, C)``.
        labels: ``C`` class names.
        threshold: Probability a window needs to count for a label.

    Returns:
        Segments ordered by onset, then by class index.

    Raises:
        WavemelError: ``threshold`` is not in ``(0, 1]``.
    """
    if not 0 < threshold <= 1:
        raise WavemelError(f"threshold {threshold!r} must be in (0, 1]")
    values = np.asarray(series.values, dtype=np.float64)
    segments: list[tuple[float, int, Segment]] = []
    for column, label in enumerate(labels):
        active = values[:, column] >= threshold
        # Run boundaries: +1 where a run begins, -1 just after it ends.
        edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
        for first, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            onset, offset = float(series.starts[first]), float(series.ends[stop - 1])
            score = float(values[first:stop, column].mean())
            segments.append((onset, column, Segment(onset, offset, label, score)))
    segments.sort(key=lambda item: item[:2])
    return [segment for _, _, segment in segments]


@dataclass(frozen=True)
class Timeline:
    """Window probabilities and merged segments of one clip.

    Attributes:
        labels: ``C`` class names (column ``i`` of ``series.values`` is ``labels[i]``).
        series: Window starts / ends ``(W,)`` in seconds and probabilities ``(W, C)``.
        segments: Labels above ``threshold`` merged over consecutive windows.
        threshold: The probability used for ``segments``.
    """

    labels: list[str]
    series: WindowSeries
    segments: list[Segment]
    threshold: float

    @property
    def duration(self) -> float:
        """Clip length in seconds."""
        return self.series.duration

    def top_labels(self, top_k: int) -> list[int]:
        """Class indices of the ``top_k`` labels with the highest peak window probability.

        The peak, not the mean: a short event that dominates a few windows of a long clip is
        what a timeline is for, though it hardly moves the clip's average.
        """
        if self.series.values.shape[0] == 0:
            return []
        peak = self.series.values.max(axis=0)
        return [int(i) for i in np.argsort(-peak, kind="stable")[:top_k]]

    def window_rows(self, top_k: int | None = 3) -> Iterator[tuple[float, float, str, float]]:
        """``(start, end, label, score)`` per window and label, best label first.

        Args:
            top_k: Labels per window (each window's own best); ``None`` for every class in
                label order.
        """
        values = self.series.values
        for index in range(values.shape[0]):
            row = values[index]
            if top_k is None:
                columns = range(row.shape[0])
            else:
                columns = np.argsort(-row, kind="stable")[:top_k]
            start, end = float(self.series.starts[index]), float(self.series.ends[index])
            for column in columns:
                yield start, end, self.labels[column], float(row[column])

    def to_json(self, top_k: int = 3) -> dict:
        """A JSON-able summary: the window tracks of the :meth:`top_labels` and all segments."""
        tracks = [
            {"label": self.labels[i], "scores": self.series.values[:, i].round(5).tolist()}
            for i in self.top_labels(top_k)
        ]
        return {
            "duration": self.duration,
            "starts": self.series.starts.round(5).tolist(),
            "ends": self.series.ends.round(5).tolist(),
            "tracks": tracks,
            "threshold": self.threshold,
            "segments": [
                {"onset": s.onset, "offset": s.offset, "label": s.label, "score": s.score}
                for s in self.segments
            ],
        }


def timeline(
    tagger: WindowScorer,
    path_or_waveform: str | os.PathLike | np.ndarray,
    *,
    hop_seconds: float | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> Timeline:
    """Window probabilities and labelled segments of a clip (``Tagger.timeline`` delegates here).

    Args:
        tagger: The model and its windowing.
        path_or_waveform: An audio file (streamed block by block) or a ``(T,)`` waveform at
            ``tagger.sample_rate``.
        hop_seconds: Window hop; default the tagger's.
        threshold: Probability a window needs to be part of a segment.

    Returns:
        The clip's :class:`Timeline` (no windows and no segments for an empty clip).

    Raises:
        AudioError: The file is missing or cannot be decoded.
        WavemelError: ``hop_seconds`` or ``threshold`` is out of range.
    """
    if not 0 < threshold <= 1:
        raise WavemelError(f"threshold {threshold!r} must be in (0, 1]")
    series = tagger.window_probabilities(path_or_waveform, hop_seconds=hop_seconds)
    segments = merge_segments(series, tagger.labels, threshold)
    return Timeline(list(tagger.labels), series, segments, threshold)


class TimelineCsv:
    """Timelines of several files in one CSV, written as they come and renamed in when complete.

    Use as a context manager: on a clean exit the file is synced and renamed to ``path``; on an
    exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: The CSV to write (columns :data:`CSV_HEADER`).
        top_k: Window rows per window (its best labels), or ``None`` for every class.
    """

    def __init__(self, path: str | os.PathLike, top_k: int | None = 3) -> None:
        self.path = Path(path)
        self.top_k = top_k
        self._tmp = temp_name(self.path)
        self._handle = None
        self._writer = None

    def __enter__(self) -> TimelineCsv:
        try:
            self._handle = open(self._tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise WavemelError(f"{self.path}: cannot write ({os_error_reason(exc)})") from None
        self._writer = csv.writer(self._handle, lineterminator="\n")
        self._guarded(self._writer.writerow, CSV_HEADER)
        return self

    def add(self, name: str, clip: Timeline) -> None:
        """Append one file's window rows, then its segments."""
        rows = [
            (name, "window", f"{start:.3f}", f"{end:.3f}", label, f"{score:.5f}")
            for start, end, label, score in clip.window_rows(self.top_k)
        ]
        rows += [
            (name, "segment", f"{s.onset:.3f}", f"{s.offset:.3f}", s.label, f"{s.score:.5f}")
            for s in clip.segments
        ]
        self._guarded(self._writer.writerows, rows)

    def _guarded(self, write, rows) -> None:
        try:
            write(rows)
        except OSError as exc:
            raise WavemelError(f"{self.path}: cannot write ({os_error_reason(exc)})") from None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if kind is None:
                self._handle.flush()
                os.fsync(self._handle.fileno())
                self._handle.close()
                os.replace(self._tmp, self.path)
        except OSError as error:
            raise WavemelError(f"{self.path}: cannot write ({os_error_reason(error)})") from None
        finally:
            self._handle.close()
            if self._tmp.exists():
                self._tmp.unlink()
