"""Batched train-time augmentations for waveform batches, mixup and log-mel masking.

The trainer hands the device a zero-padded batch ``x: (B, T)`` together with each clip's true
length ``lengths: (B,)`` (long). Every module here draws its per-example random parameters on
the device of ``x`` (or from an optional ``torch.Generator`` for reproducibility) and applies
them with one ``gather`` over index arithmetic, so there is no Python loop over the batch.

The math lives in pure functions that take the offsets explicitly (:func:`shift`,
:func:`crop`, :func:`pad`, :func:`replicate`, their composition :func:`fit`, and
:func:`mixup`), so it can be tested on tiny hand-built inputs; the modules only draw parameters
(their ``draw*`` methods) and call them.

Individual modules (:class:`TimeShift`, :class:`RandomCrop`, :class:`RandomPad`,
:class:`Replicate`) take ``(x, lengths)`` and return ``(x_out, lengths_out)`` so that they can be
chained. :class:`WaveformAugment`, the composition the trainer uses, returns just the
``(B, input_samples)`` batch. All of them also accept ``(B, C, T)`` input (every channel of an
example gets the same parameters).

:class:`SpecMask` masks bands of mel bins and frames of a log-mel batch ``(B, C, F, T)`` (the
trainer applies it to the network's input, after mixup); :func:`mask_spectrogram` is its math.

In ``eval()`` mode the random draws are replaced by a fixed, documented choice: TimeShift,
SpecMask and Mixup are the identity; crops start at the clip's start (or centre,
``eval_crop="center"``); short clips are left-aligned (padding) or replicated from their first
sample.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Beta

__all__ = [
    "FitParameters",
    "MaskBands",
    "Mixup",
    "RandomCrop",
    "RandomPad",
    "Replicate",
    "SpecMask",
    "TimeShift",
    "WaveformAugment",
    "crop",
    "eval_fill_for",
    "fill_short",
    "fit",
    "mask_spectrogram",
    "mixup",
    "pad",
    "replicate",
    "sample_beta",
    "shift",
]

_EVAL_CROPS = ("start", "center")
#: How a clip shorter than the input is filled (the one list: training, inference, checkpoints).
FILLS = ("replicate", "pad")
_NO_WRAP = 1 << 48  # a modulus larger than any index: "do not wrap"


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def _check_max_shift(value: object) -> int | float:
    """An int is a number of samples (>= 0); a float is a fraction of the clip in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"max_shift must be a number of samples (int >= 0) or a fraction of the clip "
            f"(float in [0, 1]), got {value!r}"
        )
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError(f"max_shift must be >= 0 samples, got {value}")
        return int(value)
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"max_shift as a fraction of the clip must be in [0, 1], got {value}")
    return value


def _prepare(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Checks shapes and returns ``lengths`` as a long tensor on ``x.device`` clamped to [0, T]."""
    if x.dim() not in (2, 3):
        raise ValueError(
            f"expected a waveform batch (B, T) or (B, C, T), got shape {tuple(x.shape)}"
        )
    batch, time = x.shape[0], x.shape[-1]
    if lengths is None:
        return torch.full((batch,), time, dtype=torch.long, device=x.device)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    # Clamping instead of checking avoids a device synchronisation on every batch.
    return lengths.to(device=x.device, dtype=torch.long).clamp(0, time)


# --------------------------------------------------------------------------------------------
# Random draws
# --------------------------------------------------------------------------------------------


def _rand(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``n`` uniform floats in [0, 1) on ``device``.

    Without a generator they are drawn directly on ``device``. With one, they are drawn on the
    generator's device and moved, so a CPU generator gives the same parameters on every device.
    """
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, device=generator.device, generator=generator).to(device)


def _uniform_int(low: Tensor, high: Tensor, generator: torch.Generator | None) -> Tensor:
    """One integer per example, uniform on ``[low, high]`` (inclusive; needs high >= low)."""
    span = (high - low + 1).to(torch.float32)
    draw = (_rand(low.shape[0], low.device, generator) * span).floor().long()
    # Float rounding can land exactly on ``span``; clamp back into the range.
    return torch.minimum(low + draw, high)


def sample_beta(
    alpha: float,
    n: int,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draws ``n`` samples of Beta(alpha, alpha) as float32, reproducibly with ``generator``.

    ``torch.distributions`` only draws from the global generator, so with ``generator`` one seed
    is taken from it and the Beta draw runs on a forked CPU generator seeded with it: the result
    depends on ``generator`` alone and the global random stream is left as it was.

    Args:
        alpha: Concentration (> 0) of both Beta parameters.
        n: Number of samples.
        device: Where the result lives.
        generator: Optional generator (any device); the draws then happen on the CPU.

    Returns:
        Samples in [0, 1], shape ``(n,)``.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    device = torch.device(device)
    if generator is None:
        concentration = torch.full((n,), float(alpha), device=device)
        return Beta(concentration, concentration).sample()
    seed = torch.randint(0, 2**62, (1,), device=generator.device, generator=generator)
    concentration = torch.full((n,), float(alpha))
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed.item()))
        draws = Beta(concentration, concentration).sample()
    return draws.to(device)


# --------------------------------------------------------------------------------------------
# Pure functions: exact index arithmetic with explicit offsets
# --------------------------------------------------------------------------------------------


def _gather(x: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """``out[b, ..., i] = x[b, ..., index[b, i]]`` where ``valid[b, i]``, else zero.

    Args:
        x: ``(B, T)`` or ``(B, C, T)``.
        index: ``(B, N)`` long source positions (any values where not valid).
        valid: ``(B, N)`` bool.

    Returns:
        ``(B, N)`` or ``(B, C, N)``, same dtype and device as ``x``.
    """
    batch, n_out = index.shape
    if x.shape[-1] == 0:  # nothing to read: every output sample is fill
        return x.new_zeros((*x.shape[:-1], n_out))
    index = index.clamp(0, x.shape[-1] - 1)
    if x.dim() == 3:
        index = index.unsqueeze(1).expand(batch, x.shape[1], n_out)
        valid = valid.unsqueeze(1)
    picked = x.gather(-1, index)
    return torch.where(valid, picked, torch.zeros((), dtype=x.dtype, device=x.device))


def _positions(batch: int, n_out: int, device: torch.device) -> Tensor:
    return torch.arange(n_out, device=device).unsqueeze(0).expand(batch, n_out)


def shift(x: Tensor, lengths: Tensor | None, offsets: Tensor, mode: str = "roll") -> Tensor:
    """Shifts each clip by ``offsets[b]`` samples inside its valid region.

    ``roll``: ``out[b, t] = x[b, (t - offsets[b]) mod lengths[b]]`` for ``t < lengths[b]``
    (content leaving one end re-enters at the other). ``zero``: ``out[b, t] = x[b, t -
    offsets[b]]`` when that source lies inside ``[0, lengths[b])``, else zero. In both modes the
    padding after ``lengths[b]`` stays zero and the lengths do not change. Positive offsets move
    content later in time.

    Args:
        x: Waveform batch ``(B, T)`` or ``(B, C, T)``, zero-padded after each clip's length.
        lengths: True lengths ``(B,)`` (long), or None when every clip fills ``T``.
        offsets: Shift per example ``(B,)`` in samples, may be negative.
        mode: ``"roll"`` or ``"zero"``.

    Returns:
        Shifted batch, same shape and dtype as ``x``.
    """
    _check_choice("mode", mode, ("roll", "zero"))
    lengths = _prepare(x, lengths)
    offsets = offsets.to(device=x.device, dtype=torch.long)
    batch, time = x.shape[0], x.shape[-1]
    t = _positions(batch, time, x.device)
    source = t - offsets.unsqueeze(1)
    inside = t < lengths.unsqueeze(1)
    if mode == "roll":
        source = torch.remainder(source, lengths.clamp_min(1).unsqueeze(1))
        valid = inside
    else:
        valid = inside & (source >= 0) & (source < lengths.unsqueeze(1))
    return _gather(x, source, valid)


def crop(x: Tensor, lengths: Tensor | None, starts: Tensor, input_samples: int) -> Tensor:
    """Cuts ``input_samples`` samples from each clip, starting at ``starts[b]``.

    ``out[b, i] = x[b, starts[b] + i]`` while ``starts[b] + i < lengths[b]``, zero after (so a
    clip shorter than the input comes out left-aligned and zero-padded when its start is 0).

    Args:
        x: Waveform batch ``(B, T)`` or ``(B, C, T)``.
        lengths: True lengths ``(B,)`` or None.
        starts: First sample per example ``(B,)`` (long, >= 0).
        input_samples: Output length N.

    Returns:
        ``(B, N)`` or ``(B, C, N)``.
    """
    input_samples = _check_positive_int("input_samples", input_samples)
    lengths = _prepare(x, lengths)
    starts = starts.to(device=x.device, dtype=torch.long)
    source = _positions(x.shape[0], input_samples, x.device) + starts.unsqueeze(1)
    valid = (source >= 0) & (source < lengths.unsqueeze(1))
    return _gather(x, source, valid)


def pad(x: Tensor, lengths: Tensor | None, offsets: Tensor, input_samples: int) -> Tensor:
    """Places each clip at ``offsets[b]`` inside ``input_samples`` zeros.

    ``out[b, i] = x[b, i - offsets[b]]`` for ``0 <= i - offsets[b] < lengths[b]``, zero
    elsewhere. A clip longer than the room left after its offset is truncated at the end.

    Args:
        x: Waveform batch ``(B, T)`` or ``(B, C, T)``.
        lengths: True lengths ``(B,)`` or None.
        offsets: Leading zeros per example ``(B,)`` (long, >= 0).
        input_samples: Output length N.

    Returns:
        ``(B, N)`` or ``(B, C, N)``.
    """
    # Padding by an offset is a crop that starts that many samples before the clip.
    return crop(x, lengths, -offsets.to(dtype=torch.long), input_samples)


def replicate(x: Tensor, lengths: Tensor | None, phases: Tensor, input_samples: int) -> Tensor:
    """Tiles each clip's valid part until it fills ``input_samples``, starting at ``phases[b]``.

    ``out[b, i] = x[b, (i + phases[b]) mod lengths[b]]``; an empty clip gives zeros.

    Args:
        x: Waveform batch ``(B, T)`` or ``(B, C, T)``.
        lengths: True lengths ``(B,)`` or None.
        phases: Position in the clip of the first output sample ``(B,)`` (long).
        input_samples: Output length N.

    Returns:
        ``(B, N)`` or ``(B, C, N)``.
    """
    input_samples = _check_positive_int("input_samples", input_samples)
    lengths = _prepare(x, lengths)
    phases = phases.to(device=x.device, dtype=torch.long)
    positions = _positions(x.shape[0], input_samples, x.device) + phases.unsqueeze(1)
    source = torch.remainder(positions, lengths.clamp_min(1).unsqueeze(1))
    valid = (lengths > 0).unsqueeze(1).expand_as(source)
    return _gather(x, source, valid)


class FitParameters(NamedTuple):
    """Per-example parameters of :func:`fit`, each ``(B,)``.

    Attributes:
        shift: Time shift in samples (see :func:`shift`), applied first.
        crop_start: Crop start, used for clips at least ``input_samples`` long.
        pad_offset: Leading zeros, used for shorter clips that are not replicated.
        phase: Replication phase, used for shorter clips that are replicated.
        replicate: Bool, whether a shorter clip is replicated (else padded).
    """

    shift: Tensor
    crop_start: Tensor
    pad_offset: Tensor
    phase: Tensor
    replicate: Tensor


def fit(
    x: Tensor,
    lengths: Tensor | None,
    params: FitParameters,
    input_samples: int,
    shift_mode: str = "roll",
) -> Tensor:
    """Shifts each clip, then crops it (long clips) or pads or replicates it (short ones).

    Equal to :func:`shift` followed, per example, by :func:`crop` when ``lengths[b] >=
    input_samples``, else by :func:`replicate` or :func:`pad` as ``params.replicate[b]`` says,
    but computed as one index map and one gather over ``(B, N)`` without materialising the
    shifted ``(B, T)`` batch.

    Args:
        x: Waveform batch ``(B, T)`` or ``(B, C, T)``.
        lengths: True lengths ``(B,)`` or None.
        params: The per-example parameters.
        input_samples: Output length N.
        shift_mode: ``"roll"`` or ``"zero"``, as in :func:`shift`.

    Returns:
        ``(B, N)`` or ``(B, C, N)``.
    """
    input_samples = _check_positive_int("input_samples", input_samples)
    _check_choice("shift_mode", shift_mode, ("roll", "zero"))
    lengths = _prepare(x, lengths)
    length_col = lengths.unsqueeze(1)
    positions = _positions(x.shape[0], input_samples, x.device)

    # Where each output sample sits in the shifted clip, as one affine map modulo a per-example
    # modulus (few passes over (B, N): this runs on every training batch). Crop and pad are
    # ``i + a`` with a modulus too large to wrap, so positions before the clip (negative) wrap
    # to huge values and are masked like those after it; replication is ``(i + phase) mod L``.
    replicated = params.replicate.to(device=x.device, dtype=torch.bool) & (lengths < input_samples)
    affine = torch.where(
        lengths >= input_samples,
        params.crop_start.to(device=x.device, dtype=torch.long),
        -params.pad_offset.to(device=x.device, dtype=torch.long),
    )
    affine = torch.where(replicated, params.phase.to(device=x.device, dtype=torch.long), affine)
    modulus = torch.where(replicated, lengths.clamp_min(1), _NO_WRAP)
    source = torch.remainder(positions + affine.unsqueeze(1), modulus.unsqueeze(1))
    valid = source < length_col
    # Where that sample comes from in the unshifted clip.
    offset = params.shift.to(device=x.device, dtype=torch.long)
    if shift_mode == "roll":
        source = torch.remainder(source - offset.unsqueeze(1), length_col.clamp_min(1))
    else:
        source = source - offset.unsqueeze(1)
        valid = valid & (source >= 0) & (source < length_col)
    return _gather(x, source, valid)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class TimeShift(nn.Module):
    """Random shift in time of each clip within its valid length (identity in eval mode).

    Args:
        max_shift: Largest shift magnitude. An ``int`` is a number of samples; a ``float`` is a
            fraction of each clip's own valid length (in [0, 1]). Each example is shifted by
            an integer drawn uniformly from ``[-max, max]``.
        mode: ``"roll"`` keeps the content circular within the valid region; ``"zero"`` shifts
            and fills the vacated part with zeros (content shifted past an end is lost).
        p: Probability that an example is shifted at all.
        generator: Optional generator for reproducible draws.

    Shapes:
        ``forward(x: (B, T) | (B, C, T), lengths: (B,) | None) -> (x_shifted, lengths)``.
    """

    def __init__(
        self,
        max_shift: int | float = 0.5,
        mode: str = "roll",
        *,
        p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.max_shift = _check_max_shift(max_shift)
        self.mode = _check_choice("mode", mode, ("roll", "zero"))
        self.p = _check_probability("p", p)
        self.generator = generator

    def draw_offsets(self, lengths: Tensor) -> Tensor:
        """Random shifts ``(B,)`` in samples for clips of the given lengths."""
        if isinstance(self.max_shift, float):
            limit = (lengths.to(torch.float32) * self.max_shift).floor().long()
        else:
            limit = torch.full_like(lengths, self.max_shift)
        if self.mode == "zero":
            limit = torch.minimum(limit, lengths)
        offsets = _uniform_int(-limit, limit, self.generator)
        if self.p < 1.0:
            keep = _rand(lengths.shape[0], lengths.device, self.generator) < self.p
            offsets = torch.where(keep, offsets, torch.zeros_like(offsets))
        return offsets

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lengths = _prepare(x, lengths)
        if not self.training or self.max_shift == 0 or self.p == 0.0:
            return x, lengths
        return shift(x, lengths, self.draw_offsets(lengths), self.mode), lengths

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, mode={self.mode!r}, p={self.p}"


class RandomCrop(nn.Module):
    """Crops clips longer than the input at a random start (deterministic start in eval mode).

    A clip of length L >= N starts uniformly in ``[0, L - N]`` during training; in eval mode at
    0 (``eval_crop="start"``) or ``(L - N) // 2`` (``"center"``). Clips shorter than the input
    are passed through left-aligned and zero-padded to N (filling them is :class:`RandomPad`'s
    or :class:`Replicate`'s job; see :class:`WaveformAugment`).

    Args:
        input_samples: Output length N.
        eval_crop: ``"start"`` or ``"center"``.
        generator: Optional generator for reproducible draws.

    Shapes:
        ``forward(x: (B, T) | (B, C, T), lengths) -> ((B, [C,] N), min(lengths, N))``.
    """

    def __init__(
        self,
        input_samples: int,
        *,
        eval_crop: str = "start",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.input_samples = _check_positive_int("input_samples", input_samples)
        self.eval_crop = _check_choice("eval_crop", eval_crop, _EVAL_CROPS)
        self.generator = generator

    def draw_starts(self, lengths: Tensor) -> Tensor:
        """Start per example ``(B,)``: random when training, fixed in eval mode."""
        room = (lengths - self.input_samples).clamp_min(0)
        if not self.training:
            return room // 2 if self.eval_crop == "center" else torch.zeros_like(room)
        return _uniform_int(torch.zeros_like(room), room, self.generator)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lengths = _prepare(x, lengths)
        out = crop(x, lengths, self.draw_starts(lengths), self.input_samples)
        return out, lengths.clamp_max(self.input_samples)

    def extra_repr(self) -> str:
        return f"input_samples={self.input_samples}, eval_crop={self.eval_crop!r}"


class RandomPad(nn.Module):
    """Places clips shorter than the input at a random offset among zeros.

    A clip of length L <= N gets an offset uniform in ``[0, N - L]`` during training and 0
    (left-aligned) in eval mode. Longer clips keep their first N samples: crop them first.

    Args:
        input_samples: Output length N.
        generator: Optional generator for reproducible draws.

    Shapes:
        ``forward(x: (B, T) | (B, C, T), lengths) -> ((B, [C,] N), min(lengths, N))``; the
        returned lengths count the clip's samples, not the zeros around them.
    """

    def __init__(self, input_samples: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.input_samples = _check_positive_int("input_samples", input_samples)
        self.generator = generator

    def draw_offsets(self, lengths: Tensor) -> Tensor:
        """Leading zeros per example ``(B,)``: random when training, 0 in eval mode."""
        room = (self.input_samples - lengths).clamp_min(0)
        if not self.training:
            return torch.zeros_like(room)
        return _uniform_int(torch.zeros_like(room), room, self.generator)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lengths = _prepare(x, lengths)
        out = pad(x, lengths, self.draw_offsets(lengths), self.input_samples)
        return out, lengths.clamp_max(self.input_samples)

    def extra_repr(self) -> str:
        return f"input_samples={self.input_samples}"


class Replicate(nn.Module):
    """Tiles each clip's valid part to fill the input.

    During training with ``random_phase`` the tiling starts at a random sample of the clip
    (uniform in ``[0, L - 1]``); otherwise, and in eval mode, at its first sample. On a clip
    longer than the input this amounts to a (wrapping) crop; crop long clips first.

    Args:
        input_samples: Output length N.
        random_phase: Draw the starting phase at random during training.
        generator: Optional generator for reproducible draws.

    Shapes:
        ``forward(x: (B, T) | (B, C, T), lengths) -> ((B, [C,] N), lengths_out)`` where
        ``lengths_out`` is N (0 for empty clips, which stay zero).
    """

    def __init__(
        self,
        input_samples: int,
        *,
        random_phase: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.input_samples = _check_positive_int("input_samples", input_samples)
        self.random_phase = bool(random_phase)
        self.generator = generator

    def draw_phases(self, lengths: Tensor) -> Tensor:
        """Starting phase per example ``(B,)``."""
        if not (self.training and self.random_phase):
            return torch.zeros_like(lengths)
        top = (lengths - 1).clamp_min(0)
        return _uniform_int(torch.zeros_like(top), top, self.generator)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lengths = _prepare(x, lengths)
        out = replicate(x, lengths, self.draw_phases(lengths), self.input_samples)
        filled = torch.where(lengths > 0, self.input_samples, 0)
        return out, filled

    def extra_repr(self) -> str:
        return f"input_samples={self.input_samples}, random_phase={self.random_phase}"


def eval_fill_for(p_replicate: float) -> str:
    """How evaluation fills a short clip for a model trained with this replication probability.

    A model that never saw a replicated clip (``p_replicate == 0``) is scored on zero-padded
    windows; any other gets replicated ones, the fill that keeps a short clip's level over the
    whole window.
    """
    return "pad" if _check_probability("p_replicate", p_replicate) == 0.0 else "replicate"


def fill_short(x: Tensor, lengths: Tensor | None, input_samples: int, fill: str) -> Tensor:
    """Fills short clips to ``input_samples`` the one way evaluation does: from their start.

    ``"replicate"`` tiles each clip from its first sample, ``"pad"`` left-aligns it among
    zeros; clips of at least ``input_samples`` keep their first ``input_samples`` samples. This is
    eval-mode :class:`WaveformAugment` without the crop choice, and the short-clip window of
    whole-clip inference.

    Args:
        x: Waveform batch ``(B, T)`` or ``(B, C, T)``.
        lengths: True lengths ``(B,)`` or None.
        input_samples: Output length N.
        fill: ``"replicate"`` or ``"pad"``.

    Returns:
        ``(B, N)`` or ``(B, C, N)``.
    """
    fill = _check_choice("fill", fill, FILLS)
    lengths = _prepare(x, lengths)
    zeros = torch.zeros_like(lengths)
    if fill == "pad":
        return pad(x, lengths, zeros, input_samples)
    # A long clip tiled from phase 0 is its first window, so one call covers both cases.
    return replicate(
        x, torch.where(lengths >= input_samples, input_samples, lengths), zeros, input_samples
    )


class WaveformAugment(nn.Module):
    """The trainer's waveform pipeline: crop long clips, fill short ones, never splice content.

    Training mode, per example: a clip of length L >= N is cropped at a random start in
    ``[0, L - N]`` (:class:`RandomCrop`); that start, with the loader's random window start in
    the whole clip, *is* its time shift, so it is never rolled: a roll would put a seam with
    reordered content inside the window, which no inference window has. A shorter clip is
    replicated from a random phase (:class:`Replicate`) with probability ``p_replicate`` and
    otherwise placed at a random offset among zeros (:class:`RandomPad`). The time shift
    (:class:`TimeShift`) applies to short clips only where it cannot splice: in ``"zero"`` mode
    to every short clip (content may leave the window, nothing is reordered), in ``"roll"`` mode
    only to replicated ones (rolling a tiled clip changes its phase, nothing else).

    Each part draws its own parameters (``draw_starts``, ``draw_offsets``, ``draw_phases``), so
    the composition and the single modules cannot disagree; they follow this module's
    ``train()``/``eval()``.

    Eval mode is deterministic: no shift; long clips are cropped from their start
    (``eval_crop="start"``, the first inference window) or centre; short clips are replicated
    from their first sample or left-aligned and zero-padded, per ``eval_fill``.

    ``forward(x, lengths)`` is ``fit(x, lengths, self.draw(lengths), N, shift_mode)``: the
    whole pipeline is one gather over ``(B, N)``.

    Args:
        input_samples: Output length N.
        shift: ``True`` for the default maximum shift (half of each clip), ``False``/``0`` for
            none, or a ``max_shift`` as accepted by :class:`TimeShift`.
        shift_mode: ``"roll"`` or ``"zero"``, see :class:`TimeShift`.
        pad_or_replicate: How short clips are filled in training: ``"random"`` (replicate with
            probability ``p_replicate``), ``"pad"`` or ``"replicate"``.
        p_replicate: Probability of replication for ``"random"``.
        eval_crop: ``"start"`` or ``"center"``.
        eval_fill: ``"replicate"`` or ``"pad"``; by default :func:`eval_fill_for` of the
            training replication probability (``"pad"`` only for a model never shown a
            replicated clip, as whole-clip inference fills).
        generator: Optional generator for reproducible draws.

    Shapes:
        ``forward(x: (B, T) | (B, C, T), lengths: (B,) | None) -> (B, [C,] N)``.
    """

    def __init__(
        self,
        input_samples: int,
        *,
        shift: bool | int | float = True,
        shift_mode: str = "roll",
        pad_or_replicate: str = "random",
        p_replicate: float = 0.5,
        eval_crop: str = "start",
        eval_fill: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.input_samples = _check_positive_int("input_samples", input_samples)
        self.pad_or_replicate = _check_choice(
            "pad_or_replicate", pad_or_replicate, ("random", "pad", "replicate")
        )
        self.p_replicate = _check_probability("p_replicate", p_replicate)
        if eval_fill is None:
            eval_fill = eval_fill_for(self.replicate_probability)
        self.eval_fill = _check_choice("eval_fill", eval_fill, FILLS)
        if shift is True:
            max_shift: int | float = 0.5  # half the clip either way: any onset position
        elif shift is False:
            max_shift = 0
        else:
            max_shift = shift
        self.time_shift = TimeShift(max_shift, shift_mode, generator=generator)
        self.cropping = RandomCrop(input_samples, eval_crop=eval_crop, generator=generator)
        self.padding = RandomPad(input_samples, generator=generator)
        self.replication = Replicate(input_samples, random_phase=True, generator=generator)
        self.generator = generator

    @property
    def eval_crop(self) -> str:
        return self.cropping.eval_crop

    @property
    def replicate_probability(self) -> float:
        """Chance that a short clip is replicated rather than padded in training."""
        return {"random": self.p_replicate, "pad": 0.0, "replicate": 1.0}[self.pad_or_replicate]

    def draw_replicate(self, lengths: Tensor) -> Tensor:
        """Bool ``(B,)``: whether a short clip is replicated (else padded)."""
        if not self.training:
            return torch.full_like(lengths, self.eval_fill == "replicate", dtype=torch.bool)
        return _rand(lengths.shape[0], lengths.device, self.generator) < self.replicate_probability

    def draw_shifts(self, lengths: Tensor, replicated: Tensor) -> Tensor:
        """Shift per example ``(B,)``: zero wherever a shift would splice content (see above)."""
        shift = self.time_shift
        if not self.training or shift.max_shift == 0 or shift.p == 0.0:
            return torch.zeros_like(lengths)
        allowed = lengths < self.input_samples
        if shift.mode == "roll":
            allowed = allowed & replicated
        return torch.where(allowed, shift.draw_offsets(lengths), 0)

    def draw(self, lengths: Tensor) -> FitParameters:
        """Per-example parameters for clips of the given lengths ``(B,)`` (fixed in eval mode)."""
        replicated = self.draw_replicate(lengths)
        return FitParameters(
            shift=self.draw_shifts(lengths, replicated),
            crop_start=self.cropping.draw_starts(lengths),
            pad_offset=self.padding.draw_offsets(lengths),
            phase=self.replication.draw_phases(lengths),
            replicate=replicated,
        )

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        lengths = _prepare(x, lengths)
        return fit(x, lengths, self.draw(lengths), self.input_samples, self.time_shift.mode)

    def extra_repr(self) -> str:
        return (
            f"input_samples={self.input_samples}, pad_or_replicate={self.pad_or_replicate!r}, "
            f"p_replicate={self.p_replicate}, eval_fill={self.eval_fill!r}"
        )


# --------------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------------

_SILENT_RMS = 1e-6  # about -120 dBFS: a window below this has no level to speak of


def _blend(t: Tensor, lam: Tensor, partner: Tensor) -> Tensor:
    """``lam * t + (1 - lam) * t[partner]`` along the batch dimension."""
    lam_t = lam.to(device=t.device, dtype=t.dtype).view(-1, *([1] * (t.dim() - 1)))
    return lam_t * t + (1 - lam_t) * t[partner.to(t.device)]


def _blend_levels(x: Tensor, lam: Tensor, partner: Tensor) -> Tensor:
    """Mixes so that each clip's share of the mixture's energy is its weight, whatever its level.

    Both clips are brought to unit RMS and added with amplitudes ``sqrt(lam)`` and
    ``sqrt(1 - lam)`` (uncorrelated signals' energies add, so the shares are ``lam`` and
    ``1 - lam``); the mixture then gets the lam-weighted mean of the two levels in dB, so the
    level distribution the network sees stays that of the training clips. A silent clip adds
    nothing and the mixture keeps the other clip's level.
    """
    work = x.float()
    dims = tuple(range(1, x.dim()))
    rms = work.pow(2).mean(dim=dims, keepdim=True).sqrt()
    audible = rms > _SILENT_RMS
    unit = torch.where(audible, work / rms.clamp_min(_SILENT_RMS), 0.0)
    lam_x = lam.to(device=x.device, dtype=torch.float32).view(-1, *([1] * (x.dim() - 1)))
    mixed = lam_x.sqrt() * unit + (1 - lam_x).sqrt() * unit[partner]
    weight_self = lam_x * audible
    weight_other = (1 - lam_x) * audible[partner]
    log_rms = rms.clamp_min(_SILENT_RMS).log()
    total = (weight_self + weight_other).clamp_min(1e-12)
    level = torch.exp((weight_self * log_rms + weight_other * log_rms[partner]) / total)
    mixed_rms = mixed.pow(2).mean(dim=dims, keepdim=True).sqrt()
    out = torch.where(mixed_rms > 0, mixed * (level / mixed_rms.clamp_min(1e-12)), 0.0)
    # Unmixed rows (lam == 1) come back bit-exact rather than through a divide and multiply.
    return torch.where(lam_x == 1, work, out).to(x.dtype)


def mixup(
    x: Tensor, y: Tensor, lam: Tensor, partner: Tensor, *, level_aware: bool = False
) -> tuple[Tensor, Tensor]:
    """Blends each example with a partner: ``lam * a + (1 - lam) * a[partner]``.

    Args:
        x: Inputs ``(B, ...)`` (waveforms ``(B, T)``, spectrograms ``(B, 1, F, T)``, ...).
        y: Soft targets ``(B, C)``.
        lam: Weight of the example itself per example ``(B,)``.
        partner: Index of each example's partner ``(B,)`` (long).
        level_aware: Mix ``x`` so that each clip's share of the mixture's energy is its weight,
            at the lam-weighted mean level in dB (for waveforms; see :class:`Mixup`), instead
            of the plain linear blend.

    Returns:
        ``(x_mixed, y_mixed)`` with the shapes and dtypes of ``x`` and ``y``; each row of
        ``y_mixed`` sums to 1 when the rows of ``y`` do.
    """
    partner = partner.to(device=x.device, dtype=torch.long)
    x_mixed = _blend_levels(x, lam, partner) if level_aware else _blend(x, lam, partner)
    return x_mixed, _blend(y, lam, partner)


class Mixup(nn.Module):
    """Mixup on a batch with soft targets (a no-op in eval mode).

    Each example b is blended with a partner ``partner[b]`` as
    ``x'[b] = lam[b] * x[b] + (1 - lam[b]) * x[partner[b]]`` and the same for the targets, with
    ``lam[b] ~ Beta(alpha, alpha)`` replaced by ``max(lam, 1 - lam)``: the example keeps at
    least half the weight, so it stays the "main" clip of its row (and the two symmetric
    halves of the Beta distribution give the same mixtures anyway).

    Partners come from one random permutation of the batch ("blend clips of different
    classes", any class really). With ``same_class_prob=q``, each example instead takes, with
    probability q, a partner of its own class (the class with the largest target mass), chosen
    at random among the other examples of that class in the batch; an example alone in its
    class is then paired with itself (unchanged).

    Waveform batches ``(B, T)`` and ``(B, C, T)`` are mixed level-aware by default: training
    clips span about 30 dB of level, so a plain blend gives the louder clip most of the
    mixture's energy whatever ``lam`` says (and cnn-audio standardises the mixture, so it
    dominates the gradient too). Each clip is instead brought to the same level and weighted so
    that its share of the mixture's energy is its target weight; the mixture gets the
    lam-weighted mean level in dB. Spectrogram batches (4-D, log-mels already in dB) are blended
    linearly.

    Per-clip loss weights, when given, are mixed like the targets: the mixture of a verified
    and an unverified clip counts by how much of each it holds.

    Args:
        alpha: Beta concentration (> 0); small values keep most mixtures close to one clip.
        same_class_prob: Probability of a same-class partner, or None (never forced).
        p: Probability that an example is mixed at all (otherwise ``lam = 1``).
        level_aware: Mix waveforms by energy share (see above); ``False`` blends linearly.
        generator: Optional generator for reproducible draws.

    Shapes:
        ``forward(x: (B, ...), y: (B, C)) -> (x_mixed: (B, ...), y_mixed: (B, C))``;
        ``forward(x, y, weights: (B,)) -> (x_mixed, y_mixed, weights_mixed: (B,))``.
    """

    def __init__(
        self,
        alpha: float = 0.4,
        *,
        same_class_prob: float | None = None,
        p: float = 1.0,
        level_aware: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if math.isinf(alpha):
            raise ValueError(f"alpha must be finite, got {alpha!r}")
        self.alpha = float(alpha)
        self.same_class_prob = (
            None
            if same_class_prob is None
            else _check_probability("same_class_prob", same_class_prob)
        )
        self.p = _check_probability("p", p)
        self.level_aware = bool(level_aware)
        self.generator = generator

    def draw(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Draws ``(lam, partner)``, each ``(B,)``, for a batch with soft targets ``y: (B, C)``."""
        batch, device = y.shape[0], y.device
        lam = sample_beta(self.alpha, batch, device=device, generator=self.generator)
        lam = torch.maximum(lam, 1 - lam)
        if self.p < 1.0:
            mixed = _rand(batch, device, self.generator) < self.p
            lam = torch.where(mixed, lam, torch.ones_like(lam))
        partner = _rand(batch, device, self.generator).argsort()
        if self.same_class_prob is not None:
            same = _rand(batch, device, self.generator) < self.same_class_prob
            partner = torch.where(same, self._same_class_partner(y), partner)
        return lam, partner

    def _same_class_partner(self, y: Tensor) -> Tensor:
        """A random other example of the same (argmax) class, or the example itself."""
        batch, device = y.shape[0], y.device
        classes = y.argmax(dim=1)
        # Sort by class, randomly within a class; then each example's partner is the next one
        # of its class group in that order (cyclically), found without a per-class loop.
        shuffled = _rand(batch, device, self.generator).argsort()
        order = shuffled[classes[shuffled].sort(stable=True).indices]
        sorted_classes = classes[order].contiguous()
        group_start = torch.searchsorted(sorted_classes, sorted_classes, right=False)
        group_end = torch.searchsorted(sorted_classes, sorted_classes, right=True)
        rank = torch.arange(batch, device=device)
        next_rank = group_start + (rank - group_start + 1) % (group_end - group_start)
        partner = torch.empty_like(order)
        partner[order] = order[next_rank]
        return partner

    def forward(
        self, x: Tensor, y: Tensor, weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        if y.dim() != 2 or y.shape[0] != x.shape[0] or not y.is_floating_point():
            raise ValueError(
                f"Mixup needs soft targets of shape (B, C) as floats for a batch of {x.shape[0]},"
                f" got {tuple(y.shape)} {y.dtype}"
            )
        if weights is not None and weights.shape != (x.shape[0],):
            raise ValueError(
                f"Mixup needs one loss weight per example ({x.shape[0]},), "
                f"got {tuple(weights.shape)}"
            )
        if not self.training:
            return (x, y) if weights is None else (x, y, weights)
        lam, partner = self.draw(y)
        waveform = x.dim() in (2, 3)
        x_mixed, y_mixed = mixup(x, y, lam, partner, level_aware=self.level_aware and waveform)
        if weights is None:
            return x_mixed, y_mixed
        return x_mixed, y_mixed, _blend(weights, lam, partner)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, same_class_prob={self.same_class_prob}, p={self.p}, "
            f"level_aware={self.level_aware}"
        )


# --------------------------------------------------------------------------------------------
# Spectrogram masking
# --------------------------------------------------------------------------------------------


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return value


class MaskBands(NamedTuple):
    """Per-example bands of :func:`mask_spectrogram`, each ``(B, M)`` long (M masks of a kind).

    Band ``m`` of example ``b`` covers the mel bins ``freq_start[b, m] <= f < freq_start[b, m]
    + freq_width[b, m]`` (the frames likewise); a width of 0 masks nothing.
    """

    freq_start: Tensor
    freq_width: Tensor
    time_start: Tensor
    time_width: Tensor


def _band_mask(starts: Tensor, widths: Tensor, size: int) -> Tensor:
    """Bool ``(B, size)``: positions inside any of the ``(B, M)`` bands (False when M is 0)."""
    positions = torch.arange(size, device=starts.device).view(1, 1, size)
    starts = starts.to(dtype=torch.long).unsqueeze(-1)
    inside = (positions >= starts) & (positions < starts + widths.to(torch.long).unsqueeze(-1))
    return inside.any(dim=1)


def mask_spectrogram(spec: Tensor, bands: MaskBands, fill: Tensor) -> Tensor:
    """Sets the given bands of mel bins and of frames of each example to ``fill[b]``.

    ``out[b, c, f, t] = fill[b]`` where ``f`` lies in a frequency band or ``t`` in a time band
    of example b, else ``spec[b, c, f, t]``.

    Args:
        spec: Log-mel batch ``(B, C, F, T)``.
        bands: The bands, on ``spec``'s device.
        fill: Value per example ``(B,)``.

    Returns:
        The masked batch, same shape and dtype as ``spec``.
    """
    if spec.dim() != 4:
        raise ValueError(f"expected a spectrogram batch (B, C, F, T), got {tuple(spec.shape)}")
    n_freq, n_frames = spec.shape[2], spec.shape[3]
    freq = _band_mask(bands.freq_start, bands.freq_width, n_freq)  # (B, F)
    time = _band_mask(bands.time_start, bands.time_width, n_frames)  # (B, T)
    masked = (freq.unsqueeze(2) | time.unsqueeze(1)).unsqueeze(1)  # (B, 1, F, T)
    fill = fill.to(device=spec.device, dtype=spec.dtype).view(-1, 1, 1, 1)
    return torch.where(masked, fill, spec)


class SpecMask(nn.Module):
    """SpecAugment-style masking of mel bands and frames (identity in eval mode).

    Each example independently gets ``freq_masks`` bands of consecutive mel bins and
    ``time_masks`` bands of consecutive frames; each band's width is drawn uniformly from
    ``[0, max]`` and its start uniformly among the positions where it fits. Bands may overlap.

    The masked values are set to the example's own mean log-mel (over every bin and frame,
    before masking). The models normalise the dB values themselves after this step (cnn-spec's
    BatchNorm over the input, cnn14's per-band BatchNorm), so the fill must be a dB level: 0 dB
    or the ``amin`` floor (-100 dB) would be a flat level far from anything the clip holds (a
    hard edge the network would learn to detect, and a pull on the BatchNorm statistics that
    inference never sees), whereas the clip's mean is a level it already has and comes out of
    the normalisation near the middle of the batch's values.

    Args:
        freq_masks: Frequency bands per example (0: none).
        freq_width: Largest width of a frequency band in mel bins (capped at the bins there are).
        time_masks: Time bands per example (0: none).
        time_width: Largest width of a time band as a fraction of the input's frames, in
            [0, 1] (floored to whole frames): the same setting covers the same share of the
            input whatever the model's hop and the input length.
        generator: Optional generator for reproducible draws (else the global random stream,
            which the trainer seeds per epoch).

    Shapes:
        ``forward(spec: (B, C, F, T)) -> (B, C, F, T)``.
    """

    def __init__(
        self,
        freq_masks: int = 0,
        freq_width: int = 8,
        time_masks: int = 0,
        time_width: float = 0.1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.freq_masks = _check_count("freq_masks", freq_masks)
        self.freq_width = _check_count("freq_width", freq_width)
        self.time_masks = _check_count("time_masks", time_masks)
        self.time_width = _check_fraction("time_width", time_width)
        self.generator = generator

    def max_frames(self, n_frames: int) -> int:
        """Largest width of a time band, in frames, for an input of ``n_frames`` frames."""
        return min(n_frames, math.floor(self.time_width * n_frames))

    def _draw_bands(
        self, batch: int, count: int, max_width: int, size: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Starts and widths ``(batch, count)``: width on ``[0, max_width]``, then a start."""
        low = torch.zeros(batch * count, dtype=torch.long, device=device)
        widths = _uniform_int(low, torch.full_like(low, min(max_width, size)), self.generator)
        starts = _uniform_int(low, size - widths, self.generator)
        return starts.view(batch, count), widths.view(batch, count)

    def draw(
        self, batch: int, n_freq: int, n_frames: int, device: torch.device | str = "cpu"
    ) -> MaskBands:
        """Random bands for ``batch`` spectrograms of ``n_freq`` bins and ``n_frames`` frames."""
        device = torch.device(device)
        freq_start, freq_width = self._draw_bands(
            batch, self.freq_masks, self.freq_width, n_freq, device
        )
        time_start, time_width = self._draw_bands(
            batch, self.time_masks, self.max_frames(n_frames), n_frames, device
        )
        return MaskBands(freq_start, freq_width, time_start, time_width)

    def forward(self, spec: Tensor) -> Tensor:
        if spec.dim() != 4:
            raise ValueError(
                f"expected a spectrogram batch (B, C, F, T), got shape {tuple(spec.shape)}"
            )
        if not self.training or (self.freq_masks == 0 and self.time_masks == 0):
            return spec
        bands = self.draw(spec.shape[0], spec.shape[2], spec.shape[3], spec.device)
        fill = spec.float().mean(dim=(1, 2, 3))
        return mask_spectrogram(spec, bands, fill)

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
            f"time_masks={self.time_masks}, time_width={self.time_width}"
        )
