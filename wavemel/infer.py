"""Whole-clip inference: windows of the training input length, aggregated into clip tags.

A clip of any length is cut into windows of ``input_samples`` samples starting every
``hop_samples`` (default: the window length, i.e. no overlap). When the last regular window stops
short of the clip's end, one more window aligned to the end is added so that every sample is
scored. A clip shorter than one window gives a single window filled the way training evaluates
short clips: ``"replicate"`` (the clip repeated from its start) or ``"pad"`` (zeros after it).
Window probabilities (``softmax`` of the logits) are averaged (``"mean"``) or combined as a
renormalised geometric mean (``"geometric"``: mean of log-probabilities, then ``softmax``).
A multi-label model (``activation="sigmoid"``: the checkpoint says ``multi_label`` or its model's
``output_activation`` is ``"sigmoid"``) scores each label on its own: window sigmoids are averaged
(or their geometric mean taken) and never renormalised, and a clip's tags are every label at or
above its decision threshold (the checkpoint's ``thresholds``, chosen on validation clips).

:class:`Tagger` scores files read in blocks (``soundfile`` + streaming soxr resampling), so memory
stays bounded however long the file is; the result equals scoring the whole decoded clip. With
``decode_workers`` > 0 the next files are decoded ahead in worker threads (libsndfile and soxr
release the GIL) while the model scores the current one; results are those of reading in order.

:class:`Ensemble` averages several taggers (fold or seed runs): each file is decoded once and its
blocks fed to every member, which cuts them into its own windows (its input length, hop and fill)
and aggregates them into its own clip probabilities; the ensemble's are their arithmetic mean.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wavemel import timeline as _timeline
from wavemel._device import autocast, model_device, resolve_device
from wavemel._paths import display_path
from wavemel._threads import _usable_cpus, busy_cpus, retune_threads
from wavemel.audio import stream_audio
from wavemel.augment import FILLS, fill_short
from wavemel.checkpoint import CheckpointInfo, load_model
from wavemel.errors import AudioError, CheckpointError, EmptyClipWarning, WavemelError
from wavemel.onnx_backend import load_onnx
from wavemel.timeline import WindowSeries

__all__ = [
    "Ensemble",
    "Tagger",
    "WindowSeries",
    "default_decode_workers",
    "fill_window",
    "predict_waveforms",
    "window_starts",
]

_AGGREGATES = ("mean", "geometric")
#: How logits become probabilities: one label per clip (softmax) or each label alone (sigmoid).
ACTIVATIONS = ("softmax", "sigmoid")
# Decision threshold of a sigmoid output whose checkpoint chose none (e.g. imported weights).
_DEFAULT_THRESHOLD = 0.5
# Frames read per block from a file: ~4 s at 44.1 kHz, small next to any model's activations.
_BLOCK_FRAMES = 1 << 17
# Decoding ahead holds at most this much audio per file in memory (FSDKaggle2018's longest clip);
# the rest of a longer file is read by the main thread while it is scored, as without workers.
_PREFETCH_SECONDS = 30.0
# Files decoded ahead per worker: enough to cover a slow file without holding many in memory.
_PREFETCH_PER_WORKER = 2


def default_decode_workers(device: str | torch.device = "cpu") -> int:
    """Decoding threads used unless told otherwise: up to 4, on cores the model leaves free.

    With an accelerator the CPU mostly waits while the device computes, so up to 4 threads (no
    more than the usable cores) decode ahead. On the CPU, torch's own threads already use the
    cores (one per free core, see :mod:`wavemel._threads`); decoding threads on top of them
    would make every parallel operator wait for the thread that lost its core, so only cores
    that neither torch's threads nor other processes use are taken (often none: measured in
    BENCHMARKS.md, "tag-folder").
    """
    cores = _usable_cpus()
    if torch.device(device).type == "cpu":
        cores -= torch.get_num_threads()
        if cores > 0:  # only then is the run queue worth sampling (~20 ms)
            cores -= math.ceil(busy_cpus())
    return max(0, min(4, cores))


def window_starts(length: int, input_samples: int, hop_samples: int | None = None) -> list[int]:
    """Start offsets of the windows a clip of ``length`` samples is scored with.

    Args:
        length: Clip length in samples.
        input_samples: Window length.
        hop_samples: Distance between window starts (default ``input_samples``).

    Returns:
        ``[]`` for an empty clip; ``[0]`` for a clip no longer than one window (filled to the
        window length); otherwise ``0, hop, 2*hop, ...`` while the window fits, plus
        ``length - input_samples`` when the last regular window ends before the clip does.
    """
    hop = input_samples if hop_samples is None else hop_samples
    _check_window(input_samples, hop)
    if length <= 0:
        return []
    if length <= input_samples:
        return [0]
    starts = list(range(0, length - input_samples + 1, hop))
    if starts[-1] + input_samples < length:
        starts.append(length - input_samples)
    return starts


def fill_window(clip: np.ndarray, input_samples: int, fill: str = "replicate") -> np.ndarray:
    """Bring a clip shorter than a window to the window length.

    Args:
        clip: ``(T,)`` samples with ``0 < T <= input_samples``.
        input_samples: Window length.
        fill: ``"replicate"`` repeats the clip from its start until the window is full;
            ``"pad"`` appends zeros.

    Returns:
        ``(input_samples,)`` float32.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    clip = np.asarray(clip, dtype=np.float32)
    if not 0 < clip.shape[0] <= input_samples:
        raise ValueError(f"clip length {clip.shape[0]} not in (0, {input_samples}]")
    # The one short-clip fill (training's evaluation mode uses the same function).
    filled = fill_short(torch.from_numpy(clip)[None], None, input_samples, fill)
    return filled[0].numpy()


def hop_to_samples(hop_seconds: float | None, sample_rate: int) -> int | None:
    """A window hop in seconds as samples at ``sample_rate`` (``None`` stays ``None``).

    Raises:
        WavemelError: The hop rounds to less than one sample.
    """
    if hop_seconds is None:
        return None
    hop_samples = int(round(hop_seconds * sample_rate))
    if hop_samples < 1:
        raise WavemelError(f"hop {hop_seconds:g} s is under one sample at {sample_rate} Hz")
    return hop_samples


def _check_window(input_samples: int, hop: int) -> None:
    if input_samples < 1:
        raise ValueError(f"input_samples must be positive, got {input_samples}")
    if hop < 1:
        raise ValueError(f"hop_samples must be positive, got {hop}")


class _WindowStream:
    """Cuts a clip that arrives in chunks into the windows :func:`window_starts` describes.

    Each window comes with its start sample. Only the samples that a future window may still need
    are kept (at most about one window plus one hop plus one chunk), which is what bounds memory
    for arbitrarily long files.
    """

    def __init__(self, input_samples: int, hop_samples: int, fill: str) -> None:
        self.input_samples = input_samples
        self.hop = hop_samples
        self.fill = fill
        self.total = 0  # samples received
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute index of _buffer[0]
        self._next_start = 0  # start of the next regular window
        self._last_end = 0  # end of the last window emitted

    def push(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add samples; return the regular ``(start, window)`` pairs that became complete."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.size:
            self._buffer = np.concatenate([self._buffer, chunk])
            self.total += chunk.shape[0]
        width = self.input_samples
        windows = []
        while self._next_start + width <= self.total:
            offset = self._next_start - self._buffer_start
            windows.append((self._next_start, self._buffer[offset : offset + width].copy()))
            self._last_end = self._next_start + width
            self._next_start += self.hop
        # Keep what the next regular window needs and the last full window (for the tail).
        keep_from = max(self._buffer_start, min(self._next_start, self.total - width))
        self._buffer = self._buffer[keep_from - self._buffer_start :]
        self._buffer_start = keep_from
        return windows

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The tail window (aligned to the clip's end) or the filled short-clip window."""
        width = self.input_samples
        if self.total == 0:
            return []
        if self.total < width:
            return [(0, fill_window(self._buffer, width, self.fill))]
        if self._last_end < self.total:
            offset = self.total - width - self._buffer_start
            return [(self.total - width, self._buffer[offset : offset + width].copy())]
        return []


class _Aggregator:
    """Running per-clip sums of window probabilities (or log-probabilities): a window sink."""

    def __init__(
        self, num_clips: int, num_classes: int, aggregate: str, normalise: bool = True
    ) -> None:
        if aggregate not in _AGGREGATES:
            raise ValueError(f"aggregate must be one of {_AGGREGATES}, got {aggregate!r}")
        self.aggregate = aggregate
        # Softmax rows are a distribution; sigmoid rows score each label alone and stay as they are.
        self.normalise = normalise
        self.sums = np.zeros((num_clips, num_classes), dtype=np.float64)
        self.counts = np.zeros(num_clips, dtype=np.int64)

    def __call__(self, owners: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> None:
        np.add.at(self.sums, owners, rows)
        np.add.at(self.counts, owners, 1)

    def result(self, empty_distribution: np.ndarray) -> np.ndarray:
        out = np.empty_like(self.sums)
        scored = self.counts > 0
        mean = self.sums[scored] / self.counts[scored, None]
        if self.aggregate == "geometric":
            mean = np.exp(mean - mean.max(axis=1, keepdims=True) if self.normalise else mean)
        out[scored] = mean / mean.sum(axis=1, keepdims=True) if self.normalise else mean
        out[~scored] = empty_distribution
        return out


class _WindowCollector:
    """A window sink that keeps every window's start and output row (timelines, embeddings)."""

    def __init__(self) -> None:
        self.owners: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []

    def __call__(self, owners: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> None:
        self.owners.append(owners)
        self.starts.append(starts)
        self.rows.append(rows)

    def of(self, clip_index: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(starts (W,), rows (W, D))`` of one clip, in time order."""
        if not self.rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, width))
        owners = np.concatenate(self.owners)
        keep = owners == clip_index
        starts = np.concatenate(self.starts)[keep]
        rows = np.concatenate(self.rows)[keep]
        order = np.argsort(starts, kind="stable")
        return starts[order], rows[order]


def _resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    return model_device(model) if device is None else resolve_device(device)


#: What a window batch is turned into: logits -> probabilities / log-probabilities, or features.
WindowOutput = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def softmax_output(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(batch).float(), dim=1)


def log_softmax_output(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(batch).float(), dim=1)


def sigmoid_output(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(model(batch).float())


def log_sigmoid_output(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.logsigmoid(model(batch).float())


def probability_output(activation: str, aggregate: str = "mean") -> WindowOutput:
    """The window output that ``aggregate`` needs for ``activation`` probabilities."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if activation == "sigmoid":
        return log_sigmoid_output if aggregate == "geometric" else sigmoid_output
    return log_softmax_output if aggregate == "geometric" else softmax_output


def checkpoint_activation(info: CheckpointInfo) -> str:
    """``"sigmoid"`` for a multi-label checkpoint (or a model trained for sigmoid outputs)."""
    multi_label = info.meta.get("multi_label") is True
    return (
        "sigmoid"
        if multi_label or info.model_config.get("output_activation") == "sigmoid"
        else "softmax"
    )


def _checkpoint_thresholds(info: CheckpointInfo) -> np.ndarray | None:
    thresholds = info.meta.get("thresholds")
    if thresholds is None:
        return None
    valid = isinstance(thresholds, list) and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
        for t in thresholds
    )
    if not valid or len(thresholds) != info.num_classes:
        raise CheckpointError(
            f"{info.json_path}: field 'thresholds' must be {info.num_classes} finite numbers "
            "(one per class)"
        )
    return np.asarray(thresholds, dtype=np.float64)


def feature_output(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model.features(batch).float()


class _WindowRunner:
    """Batches windows (from any number of clips) through the model into a window sink.

    A sink is called as ``sink(owners (B,), starts (B,), rows (B, D))`` with the clip index and
    start sample of every window of a batch and what ``output`` made of it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sink: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
        *,
        batch_size: int,
        device: torch.device,
        output: WindowOutput = softmax_output,
        amp: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.sink = sink
        self.batch_size = batch_size
        self.device = device
        self.output = output
        self.amp = amp
        self._windows: list[np.ndarray] = []
        self._owners: list[int] = []
        self._starts: list[int] = []

    def add(self, clip_index: int, windows: Iterable[tuple[int, np.ndarray]]) -> None:
        for start, window in windows:
            self._windows.append(window)
            self._owners.append(clip_index)
            self._starts.append(start)
            if len(self._windows) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        if not self._windows:
            return
        batch = torch.from_numpy(np.stack(self._windows)).to(self.device)
        owners, starts = np.asarray(self._owners), np.asarray(self._starts)
        self._windows, self._owners, self._starts = [], [], []
        retune_threads()  # between batches: outside any parallel region
        with torch.inference_mode(), autocast(self.device, self.amp):
            rows = self.output(self.model, batch)
        self.sink(owners, starts, rows.double().cpu().numpy())


def _uniform(num_classes: int) -> np.ndarray:
    return np.full(num_classes, 1.0 / num_classes)


def predict_waveforms(
    model: torch.nn.Module,
    waveforms: Sequence[np.ndarray],
    *,
    input_samples: int,
    hop_samples: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    aggregate: str = "mean",
    fill: str = "replicate",
    empty_distribution: np.ndarray | None = None,
    amp: bool = True,
    activation: str = "softmax",
) -> np.ndarray:
    """Class probabilities of whole clips from window predictions.

    Windows from different clips share batches. The model is put in eval mode for the call and
    restored to its previous mode afterwards (the trainer calls this between epochs).

    Args:
        model: Maps ``(B, input_samples)`` waveforms to ``(B, C)`` logits; needs ``num_classes``.
        waveforms: ``N`` clips, each ``(T_i,)`` float samples at the model's sample rate.
        input_samples: Window length (the training input length).
        hop_samples: Distance between windows (default ``input_samples``).
        batch_size: Windows per forward pass.
        device: Where to run; ``None`` uses the model's device, ``"auto"`` CUDA when available.
        aggregate: ``"mean"`` of window probabilities or ``"geometric"`` (renormalised).
        fill: How a clip shorter than a window is filled: ``"replicate"`` or ``"pad"``.
        empty_distribution: ``(C,)`` answer for empty clips (default uniform; the caller warns).
        amp: Mixed precision on CUDA (bfloat16 where supported, else float16); ignored on CPU.
        activation: ``"softmax"`` (one label per clip) or ``"sigmoid"`` (multi-label).

    Returns:
        ``(N, C)`` float64 probabilities; with softmax each row sums to 1.
    """
    hop = input_samples if hop_samples is None else hop_samples
    _check_window(input_samples, hop)
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    num_classes = int(model.num_classes)
    output = probability_output(activation, aggregate)
    aggregator = _Aggregator(len(waveforms), num_classes, aggregate, activation == "softmax")
    target = _resolve_device(device, model)
    scorer = _WindowRunner(
        model, aggregator, batch_size=batch_size, device=target, output=output, amp=amp
    )
    # Long clips are pushed in pieces so that at most about one batch of windows is held at once.
    piece = max(input_samples, hop) * batch_size
    was_training = model.training
    model.eval()
    try:
        for index, waveform in enumerate(waveforms):
            waveform = np.asarray(waveform, dtype=np.float32)
            if waveform.ndim != 1:
                raise ValueError(f"waveform {index} must be 1-D, got shape {waveform.shape}")
            stream = _WindowStream(input_samples, hop, fill)
            for begin in range(0, waveform.shape[0], piece):
                scorer.add(index, stream.push(waveform[begin : begin + piece]))
            scorer.add(index, stream.finish())
        scorer.flush()
    finally:
        model.train(was_training)
    if empty_distribution is None:
        empty_distribution = _uniform(num_classes)
    return aggregator.result(np.asarray(empty_distribution, dtype=np.float64))


@dataclass
class _Decoded:
    """What a decoding worker read of one file, handed to the main thread in input order.

    Attributes:
        blocks: The file's first blocks (all of it when it is short), as ``stream_audio`` gave.
        rest: The same stream, positioned after ``blocks`` (``None`` when the file ended); the
            main thread reads on from it, so a long file is never held whole.
        error: Why decoding stopped early (``blocks`` are the samples before it), else ``None``.
    """

    blocks: list[np.ndarray]
    rest: Iterator[np.ndarray] | None = None
    error: Exception | None = None

    def chunks(self) -> Iterator[np.ndarray]:
        """Every block in order: the ones read ahead, then the rest; the error where it was."""
        yield from self.blocks
        if self.rest is not None:
            yield from self.rest
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()


def _read_ahead(blocks: Iterable[np.ndarray], max_samples: int) -> _Decoded:
    """Read blocks of one stream until it ends, fails or holds more than ``max_samples``."""
    stream = iter(blocks)
    read: list[np.ndarray] = []
    total = 0
    try:
        for block in stream:
            read.append(block)
            total += block.shape[0]
            if total > max_samples:
                return _Decoded(read, rest=stream)
    except Exception as exc:  # noqa: BLE001 - raised again by the main thread at this file's turn
        return _Decoded(read, error=exc)
    return _Decoded(read)


class _Prefetcher:
    """Decodes the next files of a list in a thread pool and hands their blocks out in order.

    At most ``2 * workers`` files are queued or decoded at once and each holds at most
    ``max_samples`` samples (plus a block), so memory does not grow with the list or the files.
    Streams that are not files (in-memory waveforms) are handed out untouched.
    """

    def __init__(
        self,
        streams: Sequence[Iterable[np.ndarray]],
        is_file: Sequence[bool],
        *,
        workers: int,
        max_samples: int,
    ) -> None:
        self._streams = streams
        self._is_file = is_file
        self._max_samples = max_samples
        self._ahead = workers * _PREFETCH_PER_WORKER
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="wavemel-decode")
        self._queue: deque[tuple[int, Future]] = deque()
        self._next = 0  # the next stream to queue

    def _fill(self) -> None:
        while self._next < len(self._streams) and len(self._queue) < self._ahead:
            if self._is_file[self._next]:
                job = self._pool.submit(_read_ahead, self._streams[self._next], self._max_samples)
                self._queue.append((self._next, job))
            self._next += 1

    def blocks(self, index: int) -> Iterable[np.ndarray]:
        """The blocks of stream ``index``; streams must be taken in order, each once."""
        if not self._is_file[index]:
            return self._streams[index]
        self._fill()
        queued, job = self._queue.popleft()
        if queued != index:
            raise RuntimeError(f"stream {index} taken out of order (expected {queued})")
        decoded = job.result()
        self._fill()
        return decoded.chunks()

    def close(self) -> None:
        """Stop queued work and close the streams of files read ahead but never taken."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for _, job in self._queue:
            if not job.cancelled():
                job.result().close()
        self._queue.clear()


@dataclass
class _Feed:
    """One model's windowing of a clip stream: its window length, hop and fill, and its runner."""

    input_samples: int
    hop_samples: int
    fill: str
    runner: _WindowRunner

    def stream(self) -> _WindowStream:
        return _WindowStream(self.input_samples, self.hop_samples, self.fill)


#: What :meth:`Tagger._reader` gives: item names, item ``i``'s blocks, and a closer.
_Reader = tuple[list[str], Callable[[int], Iterable[np.ndarray]], Callable[[], None]]


def _feed_windows(
    reader: _Reader, feeds: Sequence[_Feed]
) -> tuple[dict[int, AudioError], list[str], list[int]]:
    """Decode each item once and feed every block to every feed's windows, clip by clip.

    Several feeds are an ensemble's members: each cuts the same samples into its own windows, so
    a file is read (and a bad one fails) once however many models score it.

    Returns:
        ``(failures, empty, lengths)``: the clips that could not be decoded (index -> error),
        the names of empty clips, and each clip's length in samples.
    """
    failures: dict[int, AudioError] = {}
    empty: list[str] = []
    lengths: list[int] = []
    names, blocks_of, close = reader
    try:
        for index, name in enumerate(names):
            streams = [feed.stream() for feed in feeds]
            try:
                for block in blocks_of(index):
                    for feed, stream in zip(feeds, streams):
                        feed.runner.add(index, stream.push(block))
            except AudioError as exc:
                # Windows of this file already queued are scored into a row nobody reads.
                failures[index] = exc
                lengths.append(streams[0].total)
                continue
            for feed, stream in zip(feeds, streams):
                feed.runner.add(index, stream.finish())
            lengths.append(streams[0].total)
            if streams[0].total == 0:
                empty.append(name)
    finally:
        close()
    for feed in feeds:
        feed.runner.flush()
    return failures, empty, lengths


def _answers(
    probabilities: np.ndarray, failures: dict[int, AudioError]
) -> list[tuple[np.ndarray | None, AudioError | None]]:
    """``(N, C)`` rows as ``_predict_group``'s answers, the failed clips as their errors."""
    return [
        (None, failures[i]) if i in failures else (probabilities[i], None)
        for i in range(probabilities.shape[0])
    ]


class _ClipAnswers:
    """What a tagger answers, given its ``_predict_group``: probabilities, top-k, tags.

    A subclass sets ``labels``, ``activation``, ``prior`` and ``thresholds`` and implements
    ``_predict_group(items) -> [(probabilities (C,) | None, AudioError | None), ...]``.
    """

    labels: list[str]
    activation: str
    prior: np.ndarray | None
    thresholds: np.ndarray | None

    def _predict_group(
        self, items: Sequence[str | os.PathLike | np.ndarray]
    ) -> list[tuple[np.ndarray | None, AudioError | None]]:
        raise NotImplementedError

    @property
    def multi_label(self) -> bool:
        """Whether each label is scored alone (sigmoid) and tags are the labels above threshold."""
        return self.activation == "sigmoid"

    @property
    def empty_distribution(self) -> np.ndarray:
        """``(C,)`` answer for an empty clip: the training prior if known, else uniform."""
        return self.prior if self.prior is not None else _uniform(len(self.labels))

    def _warn_empty(self, name: str) -> None:
        kind = "training label prior" if self.prior is not None else "uniform distribution"
        message = f"{name}: empty clip (0 samples); answering with the {kind}"
        warnings.warn(EmptyClipWarning(message, name), stacklevel=2)

    def predict_proba(self, path_or_waveform: str | os.PathLike | np.ndarray) -> np.ndarray:
        """Class probabilities of one whole clip.

        Args:
            path_or_waveform: An audio file (read in blocks, resampled to :attr:`sample_rate`)
                or a ``(T,)`` waveform already at :attr:`sample_rate`.

        Returns:
            ``(C,)`` float64 probabilities summing to 1. An empty clip gives
            :attr:`empty_distribution` and a warning.

        Raises:
            AudioError: The file is missing or cannot be decoded.
        """
        [(probabilities, error)] = self._predict_group([path_or_waveform])
        if error is not None:
            raise error
        return probabilities

    def predict_many(
        self, items: Iterable[str | os.PathLike | np.ndarray], group_size: int = 64
    ) -> Iterator[tuple[str | os.PathLike | np.ndarray, np.ndarray | None, str | None]]:
        """Class probabilities of many clips, with windows of several clips sharing batches.

        Clips are taken ``group_size`` at a time; every file is still read block by block, so
        memory is bounded by the group's ``(group_size, C)`` sums plus one batch of windows.

        Args:
            items: Audio files and/or ``(T,)`` waveforms at :attr:`sample_rate`.
            group_size: Clips scored together.

        Yields:
            ``(item, probabilities, error)`` in input order: ``probabilities`` is ``(C,)`` and
            ``error`` ``None``, or ``probabilities`` is ``None`` and ``error`` the one-line
            reason the file could not be decoded.
        """
        if group_size < 1:
            raise ValueError(f"group_size must be positive, got {group_size}")
        iterator = iter(items)
        while group := list(itertools.islice(iterator, group_size)):
            for item, (probabilities, error) in zip(group, self._predict_group(group)):
                yield item, probabilities, None if error is None else str(error)

    def top_k(self, probabilities: np.ndarray, top_k: int = 3) -> list[tuple[str, float]]:
        """The ``top_k`` best ``(label, probability)`` pairs; ties go to the lower class index."""
        order = np.argsort(-np.asarray(probabilities), kind="stable")[:top_k]
        return [(self.labels[i], float(probabilities[i])) for i in order]

    def above_threshold(self, probabilities: np.ndarray) -> list[tuple[str, float]]:
        """Every ``(label, probability)`` at or above its decision threshold, best first.

        Raises:
            ValueError: A single-label (softmax) tagger without thresholds: its tag is the top-1.
        """
        if self.thresholds is None:
            raise ValueError("no decision thresholds: a single-label model's tag is its top-1")
        probabilities = np.asarray(probabilities, dtype=np.float64)
        order = np.argsort(-probabilities, kind="stable")
        return [
            (self.labels[i], float(probabilities[i]))
            for i in order
            if probabilities[i] >= self.thresholds[i]
        ]

    def tag(
        self, path_or_waveform: str | os.PathLike | np.ndarray, top_k: int = 3
    ) -> list[tuple[str, float]]:
        """The ``top_k`` most probable labels of a clip, best first, as ``(label, probability)``."""
        return self.top_k(self.predict_proba(path_or_waveform), top_k)

    def tag_many(
        self, paths: Iterable[str | os.PathLike], top_k: int = 3
    ) -> tuple[dict[str, list[tuple[str, float]]], dict[str, str]]:
        """Tag many files, continuing past files that cannot be decoded.

        Returns:
            ``(results, errors)``: ``results`` maps each readable file (as given, ``str``) to its
            top-k list; ``errors`` maps each unreadable file to a one-line reason.
        """
        results: dict[str, list[tuple[str, float]]] = {}
        errors: dict[str, str] = {}
        for path, probabilities, error in self.predict_many(paths):
            if error is None:
                results[str(path)] = self.top_k(probabilities, top_k)
            else:
                errors[str(path)] = error
        return results, errors


class Tagger(_ClipAnswers):
    """Tags audio files or waveforms with a trained model (the Python API).

    Example:
        >>> tagger = Tagger.from_checkpoint("runs/spec")  # doctest: +SKIP
        >>> tagger.tag("dog.wav")  # doctest: +SKIP
        [('Bark', 0.91), ('Meow', 0.03), ('Cough', 0.01)]

    Attributes:
        model: The network, in eval mode.
        labels: Class names; index ``i`` of a probability vector is ``labels[i]``.
        sample_rate: Rate the model expects; files are resampled to it while reading.
        input_samples: Window length in samples.
        hop_samples: Distance between windows in samples.
        activation: ``"softmax"`` or ``"sigmoid"`` (multi-label: each label scored alone).
        thresholds: ``(C,)`` decision thresholds of a sigmoid model (0.5 where the checkpoint
            chose none), ``None`` for softmax.
        decode_workers: Threads decoding the next files while the model scores (``0``: read
            each file when its turn comes); default :func:`default_decode_workers` of the device.
        meta: The checkpoint's metadata (empty when built directly).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        labels: Sequence[str],
        *,
        sample_rate: int,
        input_samples: int,
        hop_samples: int | None = None,
        aggregate: str = "mean",
        fill: str = "replicate",
        batch_size: int = 64,
        device: str | torch.device | None = None,
        prior: Sequence[float] | None = None,
        block_frames: int = _BLOCK_FRAMES,
        meta: dict | None = None,
        activation: str = "softmax",
        thresholds: Sequence[float] | None = None,
        decode_workers: int | None = None,
    ) -> None:
        if len(labels) != int(model.num_classes):
            raise ValueError(f"{len(labels)} labels for a model with {model.num_classes} classes")
        if aggregate not in _AGGREGATES:
            raise ValueError(f"aggregate must be one of {_AGGREGATES}, got {aggregate!r}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        self.hop_samples = input_samples if hop_samples is None else int(hop_samples)
        _check_window(input_samples, self.hop_samples)
        self.device = _resolve_device(device, model)
        self.model = model.to(self.device).eval()
        self.labels = list(labels)
        self.sample_rate = int(sample_rate)
        self.input_samples = int(input_samples)
        self.aggregate = aggregate
        self.fill = fill
        self.batch_size = int(batch_size)
        self.block_frames = int(block_frames)
        if decode_workers is None:
            decode_workers = default_decode_workers(self.device)
        if decode_workers < 0:
            raise ValueError(f"decode_workers must be 0 or more, got {decode_workers}")
        self.decode_workers = int(decode_workers)
        self.meta = dict(meta or {})
        if prior is not None:
            prior = np.asarray(prior, dtype=np.float64)
            if prior.shape != (len(self.labels),) or prior.sum() <= 0:
                raise ValueError("prior must hold one non-negative weight per label")
            prior = prior / prior.sum()
        self.prior = prior
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        if thresholds is None and activation == "sigmoid":
            thresholds = np.full(len(self.labels), _DEFAULT_THRESHOLD)
        if thresholds is not None:
            thresholds = np.asarray(thresholds, dtype=np.float64)
            if thresholds.shape != (len(self.labels),):
                raise ValueError("thresholds must hold one value per label")
        self.thresholds = thresholds

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        hop_seconds: float | None = None,
        aggregate: str = "mean",
        batch_size: int = 64,
        fill: str | None = None,
        decode_workers: int | None = None,
    ) -> Tagger:
        """Load a checkpoint (run folder, ``.json``, ``.safetensors`` or stem) into a tagger.

        Args:
            path: What :func:`wavemel.checkpoint.load_checkpoint` accepts.
            device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"``, ...
            hop_seconds: Window hop; default the training input length (no overlap).
            aggregate: ``"mean"`` or ``"geometric"``.
            batch_size: Windows per forward pass.
            fill: Short-clip filling; default the checkpoint's ``eval_fill`` or ``"replicate"``.
            decode_workers: Threads decoding files ahead (``0``: none); default
                :func:`default_decode_workers`.

        Raises:
            CheckpointError: The checkpoint is missing, corrupt or lacks labels / rates.
        """
        model, info = load_model(path, device=device)
        info.require("labels", "sample_rate", "input_seconds")
        sample_rate = info.sample_rate
        hop_samples = hop_to_samples(hop_seconds, sample_rate)
        return cls(
            model,
            info.labels,
            sample_rate=sample_rate,
            input_samples=info.input_samples,
            hop_samples=hop_samples,
            aggregate=aggregate,
            fill=fill or info.eval_fill or "replicate",
            batch_size=batch_size,
            device=device,
            prior=info.label_prior,
            meta=info.meta,
            activation=checkpoint_activation(info),
            thresholds=_checkpoint_thresholds(info),
            decode_workers=decode_workers,
        )

    def _blocks(self, item: str | os.PathLike | np.ndarray) -> tuple[Iterable[np.ndarray], str]:
        """Sample blocks of a file (decoded lazily) or of an in-memory waveform, and its name."""
        if isinstance(item, (np.ndarray, torch.Tensor)):
            waveform = np.asarray(item, dtype=np.float32)
            if waveform.ndim != 1:
                raise ValueError(f"waveform must be 1-D (T,), got shape {waveform.shape}")
            blocks = (
                waveform[i : i + self.block_frames]
                for i in range(0, waveform.shape[0], self.block_frames)
            )
            return blocks, "waveform"
        path = Path(item)
        return stream_audio(path, self.sample_rate, self.block_frames), display_path(path)

    def _reader(self, items: Sequence[str | os.PathLike | np.ndarray]) -> _Reader:
        """Each item's name, a function giving item ``i``'s blocks (in order) and a closer.

        With :attr:`decode_workers` and more than one file, files are decoded ahead by a
        :class:`_Prefetcher`; the blocks, and the errors where they stop, are the same.
        """
        streams, names = zip(*map(self._blocks, items)) if items else ((), ())
        is_file = [not isinstance(item, (np.ndarray, torch.Tensor)) for item in items]
        if self.decode_workers == 0 or sum(is_file) < 2:
            return list(names), lambda index: streams[index], lambda: None
        prefetcher = _Prefetcher(
            streams,
            is_file,
            workers=self.decode_workers,
            max_samples=int(_PREFETCH_SECONDS * self.sample_rate),
        )
        return list(names), prefetcher.blocks, prefetcher.close

    def _feed(self, runner: _WindowRunner, hop_samples: int | None = None) -> _Feed:
        """This tagger's windowing (its input length, hop and fill) into ``runner``."""
        hop = self.hop_samples if hop_samples is None else hop_samples
        return _Feed(self.input_samples, hop, self.fill, runner)

    def _stream_windows(
        self,
        items: Sequence[str | os.PathLike | np.ndarray],
        runner: _WindowRunner,
        hop_samples: int | None = None,
    ) -> tuple[dict[int, AudioError], list[str], list[int]]:
        """Feed every window of ``items`` to ``runner``; see :func:`_feed_windows`."""
        return _feed_windows(self._reader(items), [self._feed(runner, hop_samples)])

    def _runner(self, sink, output: WindowOutput) -> _WindowRunner:
        return _WindowRunner(
            self.model, sink, batch_size=self.batch_size, device=self.device, output=output
        )

    def _probability_feed(self, num_clips: int) -> tuple[_Aggregator, _Feed]:
        """A feed whose windows' probabilities sum up per clip in the returned aggregator."""
        aggregator = _Aggregator(
            num_clips, len(self.labels), self.aggregate, normalise=not self.multi_label
        )
        output = probability_output(self.activation, self.aggregate)
        return aggregator, self._feed(self._runner(aggregator, output))

    def _predict_group(
        self, items: Sequence[str | os.PathLike | np.ndarray]
    ) -> list[tuple[np.ndarray | None, AudioError | None]]:
        """Score several clips with shared batches; each is streamed block by block."""
        aggregator, feed = self._probability_feed(len(items))
        failures, empty, _ = _feed_windows(self._reader(items), [feed])
        for name in empty:
            self._warn_empty(name)
        return _answers(aggregator.result(self.empty_distribution), failures)

    def _window_series(
        self,
        item: str | os.PathLike | np.ndarray,
        output: WindowOutput,
        hop_seconds: float | None,
    ) -> WindowSeries:
        hop = None
        if hop_seconds is not None:
            if not math.isfinite(hop_seconds) or hop_seconds <= 0:
                raise WavemelError(f"hop {hop_seconds!r} s must be a positive number of seconds")
            hop = max(1, int(round(hop_seconds * self.sample_rate)))
        collector = _WindowCollector()
        failures, empty, lengths = self._stream_windows(
            [item], self._runner(collector, output), hop
        )
        if failures:
            raise failures[0]
        starts, rows = collector.of(0, 0)
        rate, length = float(self.sample_rate), lengths[0]
        begin = starts / rate
        end = np.minimum(starts + self.input_samples, length) / rate
        return WindowSeries(begin, end, rows, length / rate)

    def window_probabilities(
        self, path_or_waveform: str | os.PathLike | np.ndarray, hop_seconds: float | None = None
    ) -> WindowSeries:
        """Class probabilities of every window of a clip (what a timeline shows).

        Args:
            path_or_waveform: An audio file or a ``(T,)`` waveform at :attr:`sample_rate`.
            hop_seconds: Window hop; default this tagger's hop.

        Returns:
            A :class:`WindowSeries` with ``values`` of shape ``(W, C)`` (softmax, or sigmoid for a
            multi-label model, per window); an empty clip has no windows.

        Raises:
            AudioError: The file is missing or cannot be decoded.
        """
        return self._window_series(
            path_or_waveform, probability_output(self.activation), hop_seconds
        )

    def window_embeddings(
        self, path_or_waveform: str | os.PathLike | np.ndarray, hop_seconds: float | None = None
    ) -> WindowSeries:
        """The model's embedding (``model.features``) of every window of a clip.

        Returns:
            A :class:`WindowSeries` with ``values`` of shape ``(W, D)``.
        """
        return self._window_series(path_or_waveform, feature_output, hop_seconds)

    def timeline(
        self,
        path_or_waveform: str | os.PathLike | np.ndarray,
        hop_seconds: float | None = None,
        threshold: float = _timeline.DEFAULT_THRESHOLD,
    ) -> _timeline.Timeline:
        """Window probabilities and merged segments above ``threshold`` of a clip.

        See :func:`wavemel.timeline.timeline`.
        """
        return _timeline.timeline(
            self, path_or_waveform, hop_seconds=hop_seconds, threshold=threshold
        )

    def embed(self, path_or_waveform: str | os.PathLike | np.ndarray) -> np.ndarray:
        """Clip-level embedding: the mean of the window embeddings, ``(D,)`` float32.

        Raises:
            AudioError: The file cannot be decoded, or the clip is empty (nothing to embed).
        """
        series = self.window_embeddings(path_or_waveform)
        if series.values.shape[0] == 0:
            name = "waveform" if isinstance(path_or_waveform, np.ndarray) else path_or_waveform
            raise AudioError(f"{display_path(name)}: empty clip (0 samples), nothing to embed")
        return series.values.mean(axis=0).astype(np.float32)

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        hop_seconds: float | None = None,
        aggregate: str = "mean",
        batch_size: int = 64,
        fill: str | None = None,
        threads: int | None = None,
        decode_workers: int | None = None,
    ) -> Tagger:
        """Load a model written by ``wavemel export`` and run it with onnxruntime on the CPU.

        Windowing, aggregation and the empty-clip answer are those of the checkpoint it was
        exported from (its metadata carries the labels, rate, input length, fill and prior), so
        the tags equal :meth:`from_checkpoint`'s up to float32 rounding.

        Args:
            path: The ``.onnx`` file.
            device: ``"auto"`` or ``"cpu"``: onnxruntime runs here on the CPU.
            hop_seconds: Window hop; default the training input length (no overlap).
            aggregate: ``"mean"`` or ``"geometric"``.
            batch_size: Windows per session run.
            fill: Short-clip filling; default the exported checkpoint's.
            threads: onnxruntime intra-op threads (default ``torch.get_num_threads()``).
            decode_workers: Threads decoding files ahead (see :meth:`from_checkpoint`).

        Raises:
            WavemelError: onnxruntime is missing, or ``device`` is not the CPU.
            CheckpointError: The file is missing, corrupt or lacks wavemel's metadata.
        """
        if str(device) not in ("auto", "cpu"):
            raise WavemelError(f"--device {device}: .onnx models run on the CPU (use auto or cpu)")
        model, meta = load_onnx(path, threads=threads)
        sample_rate = int(meta["sample_rate"])
        hop_samples = hop_to_samples(hop_seconds, sample_rate)
        return cls(
            model,
            meta["labels"],
            sample_rate=sample_rate,
            input_samples=int(meta["input_samples"]),
            hop_samples=hop_samples,
            aggregate=aggregate,
            fill=fill or meta["fill"],
            batch_size=batch_size,
            device="cpu",
            prior=meta["prior"],
            meta=meta,
            decode_workers=decode_workers,
        )


class Ensemble(_ClipAnswers):
    """Several taggers as one: the arithmetic mean of their whole-clip probabilities.

    Each file is decoded once, at the members' common sample rate, and every block goes to every
    member, so a member keeps its own input length, hop, fill and aggregation (a geometric
    member aggregates its own windows, then the members are averaged arithmetically), and a file
    that cannot be decoded fails once. It answers as a :class:`Tagger` does (``predict_many``,
    ``predict_proba``, ``top_k``, ``above_threshold``, ``tag``, ``tag_many``); window series
    (timelines, embeddings) belong to one model and are not offered.

    Rules the members must follow (else :class:`~wavemel.errors.WavemelError`, one line naming
    the two runs and the difference):

    - the same label set; a member with the labels in another order is reordered to the first
      member's order, which is the ensemble's;
    - the same sample rate (decoding happens once, so no member resamples on its own);
    - the same activation (softmax or sigmoid): a mean of a distribution and independent
      per-label scores is neither.

    A multi-label ensemble tags a label when the mean probability reaches the mean of the
    members' thresholds for it; an empty clip is answered with the mean of the members' empty
    answers (their training priors, or uniform).

    Attributes:
        members: The taggers, in the order given.
        names: How errors name each member (its run folder or file).
        labels: The first member's labels; column ``i`` of every answer is ``labels[i]``.
        sample_rate: The members' common rate.
        activation: ``"softmax"`` or ``"sigmoid"``.
        thresholds: ``(C,)`` mean of the members' thresholds (sigmoid), else ``None``.
        prior: ``(C,)`` mean of the members' empty answers when any member knows its prior.
    """

    def __init__(self, members: Sequence[Tagger], names: Sequence[str] | None = None) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        names = [f"member {i}" for i in range(len(members))] if names is None else list(names)
        if len(names) != len(members):
            raise ValueError(f"{len(names)} names for {len(members)} members")
        first = members[0]
        for member, name in zip(members[1:], names[1:]):
            _check_compatible(first, names[0], member, name)
        self.members = list(members)
        self.names = names
        self.labels = list(first.labels)
        self.sample_rate = first.sample_rate
        self.activation = first.activation
        # Column order of each member's answers in the ensemble's label order.
        self._orders = [
            np.array([member.labels.index(label) for label in self.labels]) for member in members
        ]
        empty = self._mean([m.empty_distribution for m in members])
        self.prior = empty if any(m.prior is not None for m in members) else None
        self.thresholds = (
            None if first.thresholds is None else self._mean([m.thresholds for m in members])
        )

    def _mean(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """Mean of one ``(..., C)`` array per member, each first put in the ensemble's order."""
        return np.mean([row[..., order] for row, order in zip(rows, self._orders)], axis=0)

    def _predict_group(
        self, items: Sequence[str | os.PathLike | np.ndarray]
    ) -> list[tuple[np.ndarray | None, AudioError | None]]:
        """Decode each clip once, score it with every member, average their probabilities."""
        pairs = [member._probability_feed(len(items)) for member in self.members]
        # Every member reads at the same rate, so the first member's reader serves them all.
        reader = self.members[0]._reader(items)
        failures, empty, _ = _feed_windows(reader, [feed for _, feed in pairs])
        for name in empty:
            self._warn_empty(name)
        results = [
            aggregator.result(member.empty_distribution)
            for member, (aggregator, _) in zip(self.members, pairs)
        ]
        return _answers(self._mean(results), failures)


def _check_compatible(first: Tagger, first_name: str, other: Tagger, other_name: str) -> None:
    """One-line error when ``other`` cannot be averaged with ``first`` (see :class:`Ensemble`).

    Raises:
        WavemelError: Their label sets, sample rates or activations differ.
    """
    runs = f"ensemble of {first_name} and {other_name}"
    if set(first.labels) != set(other.labels) or len(first.labels) != len(other.labels):
        only_first = sorted(set(first.labels) - set(other.labels))
        only_other = sorted(set(other.labels) - set(first.labels))
        shown = [f"only {first_name} has {', '.join(only_first)}"] if only_first else []
        shown += [f"only {other_name} has {', '.join(only_other)}"] if only_other else []
        if not shown:  # the same names, one of them repeated
            shown = [f"{len(first.labels)} vs {len(other.labels)} labels"]
        raise WavemelError(f"{runs}: the labels differ ({'; '.join(shown)})")
    if first.sample_rate != other.sample_rate:
        raise WavemelError(
            f"{runs}: the sample rates differ ({first.sample_rate} vs {other.sample_rate} Hz)"
        )
    if first.activation != other.activation:
        kinds = {"softmax": "single-label (softmax)", "sigmoid": "multi-label (sigmoid)"}
        raise WavemelError(
            f"{runs}: {first_name} is {kinds[first.activation]}, "
            f"{other_name} {kinds[other.activation]}"
        )
