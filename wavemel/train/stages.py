"""A run in stages: parts of one run folder trained one after another, each with its own optimizer.

``wavemel train`` is one stage. ``wavemel combine --finetune-epochs N`` is two: cnn-comb's head
on the frozen branches ("head"), then everything end to end at a low learning rate
("finetune"). The epochs count on across the stages (one ``metrics.jsonl``, one ``best``
checkpoint chosen over all of them), while each stage starts a fresh AdamW and its own warm-up +
cosine schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from wavemel.train.state import Progress

__all__ = ["Stage"]


@dataclass(frozen=True)
class Stage:
    """One stage of a run, as :func:`wavemel.train.loop.fit` trains it.

    Attributes:
        name: Recorded as ``"stage"`` in every epoch's metrics line (and so in its checkpoints).
        start: Where the stage begins unless it resumes: ``epoch`` epochs of earlier stages are
            done (the stage's own ``config.epochs`` follow them) and ``best_map3`` /
            ``best_epoch`` are theirs, so ``best`` changes only when this stage beats them.
            Its ``step`` is the stage's own optimizer step (0: the schedule starts over).
        before_save: Called with the plain model after each epoch's validation, on rank 0,
            before the epoch's checkpoints are written (e.g. to record cnn-comb's feature
            means for the branch weights of that epoch).
    """

    name: str
    start: Progress = dataclasses.field(default_factory=Progress)
    before_save: Callable[[nn.Module], None] | None = None

    def first_progress(self) -> Progress:
        """A fresh copy of :attr:`start` (the loop advances its progress in place)."""
        return dataclasses.replace(self.start)
