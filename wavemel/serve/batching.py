"""One worker thread scores the clips of all requests; clips that wait together share batches.

The model is used by this thread only. Each request hands its decoded waveform to
:meth:`ClipBatcher.score` and awaits the answer; the worker takes every clip that is queued when
it becomes free (up to ``max_clips``) and scores them with one
:meth:`~wavemel.infer.Tagger.predict_many` call, whose window batches mix clips. Under load,
requests therefore share forward passes instead of queueing one model call each.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from wavemel.infer import Tagger
from wavemel.timeline import DEFAULT_THRESHOLD, Timeline, timeline

__all__ = ["ClipBatcher", "Scored"]


@dataclass(frozen=True)
class Scored:
    """What the worker answers for one clip.

    Attributes:
        probabilities: ``(C,)`` clip probabilities.
        timeline: The clip's window probabilities and segments, when asked for.
    """

    probabilities: np.ndarray
    timeline: Timeline | None


@dataclass(frozen=True)
class _Job:
    waveform: np.ndarray
    with_timeline: bool
    future: Future


class ClipBatcher:
    """Queue of clips in front of one scoring thread.

    Args:
        tagger: The loaded model (used by the worker thread only).
        max_clips: Most clips scored in one group.
        threshold: Segment threshold of timelines.

    Attributes:
        group_sizes: How many clips each group held, in order (for tests and benchmarks).
    """

    def __init__(
        self, tagger: Tagger, *, max_clips: int = 16, threshold: float = DEFAULT_THRESHOLD
    ) -> None:
        if max_clips < 1:
            raise ValueError(f"max_clips must be positive, got {max_clips}")
        self.tagger = tagger
        self.max_clips = max_clips
        self.threshold = threshold
        self.group_sizes: list[int] = []
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker (clips submitted before are scored as the first groups)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="wavemel-scorer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Let the worker finish the queued clips, then stop it."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, waveform: np.ndarray, with_timeline: bool = False) -> Future:
        """Queue a ``(T,)`` waveform at the tagger's rate; the future gives a :class:`Scored`."""
        future: Future = Future()
        self._queue.put(_Job(np.asarray(waveform, dtype=np.float32), with_timeline, future))
        return future

    async def score(self, waveform: np.ndarray, with_timeline: bool = False) -> Scored:
        """:meth:`submit` for a coroutine: awaits the worker without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(waveform, with_timeline))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            group = [job]
            stop = False
            # Everything that queued while the previous group ran joins this one.
            while len(group) < self.max_clips:
                try:
                    extra = self._queue.get_nowait()
                except queue.Empty:
                    break
                if extra is None:
                    stop = True
                    break
                group.append(extra)
            self._score(group)
            if stop:
                return

    def _score(self, group: list[_Job]) -> None:
        self.group_sizes.append(len(group))
        try:
            waveforms = [job.waveform for job in group]
            scored = self.tagger.predict_many(waveforms, group_size=len(group))
            results = [probabilities for _, probabilities, _ in scored]
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for job in group:
                job.future.set_exception(exc)
            return
        for job, probabilities in zip(group, results):
            try:
                clip = None
                if job.with_timeline:
                    clip = timeline(self.tagger, job.waveform, threshold=self.threshold)
                job.future.set_result(Scored(probabilities, clip))
            except Exception as exc:  # noqa: BLE001 - the request answers it
                job.future.set_exception(exc)
