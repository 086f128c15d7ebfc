"""An exponential moving average (EMA) of a model's weights, updated after every optimizer step.

The EMA is a second copy of the plain model (never the DDP or ``torch.compile`` wrapper, so it
shares neither hooks nor compiled graphs with the trained module): training keeps updating the
raw weights, while validation, the best-epoch choice and the ``best``/``last`` checkpoints use the
averaged copy.

After optimizer step ``n`` (1 for the first), every trainable parameter ``p`` moves its average
``e`` as ``e <- d_n * e + (1 - d_n) * p`` with the warmed-up decay
``d_n = min(decay, (1 + n) / (10 + n))``. Without the ramp, a 0.999 average would still hold
``0.999 ** n`` of the random initial weights after ``n`` steps (37 % after 1000), which is most
of a short run; with it the first steps forget the start quickly (``d_1 = 0.18``) and the full
decay applies from step ``(10 * decay - 1) / (1 - decay)`` (8990 for 0.999) on.

BatchNorm running statistics (and every other floating-point buffer) are averaged with the same
decay rather than copied: the raw model's statistics describe the raw weights of the last few
batches, whereas the averaged weights see activations closer to the averaged statistics. Constant
buffers (filterbanks, cnn-comb's feature means) stay exact, because ``lerp`` towards an equal
value returns it unchanged; integer buffers (``num_batches_tracked``) are copied. Frozen
parameters never change, so they are not touched.

Under DDP every rank keeps its own EMA: the parameters are identical on every rank by
construction (the same initial weights, the same averaged gradients); the buffers drift apart
like the raw model's and are synchronised from rank 0 before each validation, with the raw
model's (see ``loop.fit``), so every rank scores and rank 0 saves the same weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from wavemel.errors import WavemelError
from wavemel.train.distributed import unwrap_model

__all__ = ["ModelEma", "ema_decay_at", "check_ema_decay"]

#: The ramp's constants: ``(1 + n) / (10 + n)`` as TensorFlow's ExponentialMovingAverage uses.
_RAMP_OFFSET = 10.0


def check_ema_decay(decay: float) -> None:
    """Raise a one-line error unless ``decay`` is in [0, 1) (0 switches the EMA off)."""
    if not 0.0 <= decay < 1.0:
        raise WavemelError(f"--ema-decay must be in [0, 1) (0 = off, typical 0.999), got {decay}")


def ema_decay_at(decay: float, step: int) -> float:
    """The decay applied after optimizer step ``step`` (1-based): ``min(decay, (1+n)/(10+n))``."""
    return min(decay, (1.0 + step) / (_RAMP_OFFSET + step))


class ModelEma:
    """The averaged copy of a model, its update after each optimizer step, and its resume state.

    Args:
        model: The model being trained, already on its device and in its memory format (the copy
            keeps both, so ``channels_last`` training validates in ``channels_last`` too). A DDP
            or ``torch.compile`` wrapper is unwrapped: the average is of the plain module.
        decay: Target decay in (0, 1); see the module docstring for the ramp.

    Attributes:
        module: The averaged model, always in eval mode (it is scored, never trained).
        decay: The target decay.
    """

    def __init__(self, model: nn.Module, decay: float):
        check_ema_decay(decay)
        if decay == 0.0:
            raise ValueError("ModelEma needs a decay in (0, 1); use ModelEma.create for 'off'")
        model = unwrap_model(model)
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self._pairs = self._tensor_pairs(model)

    @classmethod
    def create(cls, model: nn.Module, decay: float) -> ModelEma | None:
        """An EMA of ``model``, or ``None`` when ``decay`` is 0 (the EMA is off)."""
        check_ema_decay(decay)
        return cls(model, decay) if decay > 0.0 else None

    def _tensor_pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(averaged, raw) tensor lists: trainable parameters and floating buffers to average,
        integer buffers to copy."""
        mine = dict(self.module.named_parameters())
        averaged, raw = [], []
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                averaged.append(mine[name])
                raw.append(parameter)
        copied, sources = [], []
        my_buffers = dict(self.module.named_buffers())
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point():
                averaged.append(my_buffers[name])
                raw.append(buffer)
            else:
                copied.append(my_buffers[name])
                sources.append(buffer)
        return averaged, raw, copied, sources

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the model's current weights, after optimizer step ``step``.

        Args:
            step: Optimizer steps taken so far, this one included (``Progress.step``): it drives
                the decay's warm-up, so a resumed run continues the same ramp.
        """
        averaged, raw, copied, sources = self._pairs
        weight = 1.0 - ema_decay_at(self.decay, step)
        if averaged:
            # lerp(e, p, 1 - d) = e + (1 - d)(p - e): exact for constant buffers.
            torch._foreach_lerp_(averaged, [t.detach() for t in raw], weight)
        for target, source in zip(copied, sources, strict=True):
            target.copy_(source)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights and buffers (what the checkpoints and the resume state hold)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` exactly (in place, so the update's tensor lists stay)."""
        self.module.load_state_dict(state, strict=True)
