"""A figure of the waveform augmentations seen as log-mel spectrograms (the poster's Figure 3).

Each panel runs the same pure functions the trainer's modules use (:mod:`wavemel.augment`) on one
clip and shows the log-mel (:class:`wavemel.frontend.LogMel`) of the result:

1. the original clip;
2. a circular time shift within the clip;
3. a random crop (to the input length for a clip longer than the input; otherwise, so that there
   is something to crop, to half the clip);
4. random padding and 5. replication of a short clip to the input length (a clip that is not
   shorter than the input is represented by its loudest excerpt of 40 % of the input);
6. mixup of the crop (long clip) or replication (short clip) above with a second clip
   (``mix_with``) or, without one, with the clip played backwards.

The random parameters come from a ``torch.Generator`` seeded with ``seed``, drawn in ranges that
make each effect visible (a shift of 25-75 % of the clip, a padding offset of 25-75 % of the room
and a mixup weight of 0.5-0.75, where training draws from the full ranges), and each panel's
title states them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = ["PANEL_NAMES", "render_augmentation_figure"]

#: The start of every panel title, in drawing order.
PANEL_NAMES = (
    "Original",
    "Time shift",
    "Random crop",
    "Random padding",
    "Replication",
    "Mixup",
)

# Display settings: a finer hop than training's (10 ms) makes short panels readable.
_N_MELS = 80
_FMIN = 20.0
_DB_RANGE = 80.0
_EXCERPT_FRACTION = 0.4  # of the input length, for the padding/replication panels


def _loudest_window(signal: np.ndarray, length: int) -> int:
    """Start of the ``length``-sample window with the most energy (a moving sum via cumsum)."""
    if length >= signal.size:
        return 0
    energy = np.concatenate([[0.0], np.cumsum(signal.astype(np.float64) ** 2)])
    window_energy = energy[length:] - energy[:-length]
    return int(np.argmax(window_energy))


def _hz_ticks(fmin: float, fmax: float, n_mels: int) -> tuple[list[float], list[str]]:
    """Positions (in mel-bin units) and labels of round frequencies for the y axis."""
    import librosa

    low, high = librosa.hz_to_mel(fmin), librosa.hz_to_mel(fmax)
    positions, labels = [], []
    for hz in (100, 250, 500, 1000, 2000, 4000, 8000, 16000):
        position = float((librosa.hz_to_mel(hz) - low) / (high - low) * n_mels)
        # Below 1 kHz the mel scale is linear and the low ticks crowd: keep them apart.
        if fmin <= hz <= fmax and (not positions or position - positions[-1] >= 0.06 * n_mels):
            positions.append(position)
            labels.append(f"{hz // 1000}k" if hz >= 1000 else str(hz))
    return positions, labels


def render_augmentation_figure(
    audio_path: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    sample_rate: int = 22050,
    input_seconds: float = 2.0,
    seed: int = 0,
    mix_with: str | os.PathLike | None = None,
) -> list[str]:
    """Draws the original log-mel of a clip and one panel per augmentation into a PNG.

    Args:
        audio_path: The clip to show (any format :func:`wavemel.audio.load_audio` reads).
        out_png: Where to write the figure (parent folders are created; overwritten if present).
        sample_rate: Rate the clip is resampled to, in Hz.
        input_seconds: The network input length that crop, padding and replication target.
        seed: Seed of the random parameters.
        mix_with: Optional second clip for the mixup panel; without it the clip is mixed with
            its own time-reversed copy (the panel title says which).

    Returns:
        The six panel titles, in drawing order; each starts with the matching
        :data:`PANEL_NAMES` entry and then gives the drawn parameters.

    Raises:
        AudioError: A clip cannot be decoded or is empty.
        ValueError: ``sample_rate`` or ``input_seconds`` is not positive.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from wavemel import augment
    from wavemel.audio import load_audio
    from wavemel.errors import AudioError
    from wavemel.frontend import LogMel

    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not input_seconds > 0:
        raise ValueError(f"input_seconds must be positive, got {input_seconds}")
    input_samples = max(1, round(input_seconds * sample_rate))

    def load(path: str | os.PathLike) -> torch.Tensor:
        signal = load_audio(path, sample_rate)
        if signal.size == 0:
            raise AudioError(f"{path}: has no samples; nothing to draw")
        return torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32)).unsqueeze(0)

    clip = load(audio_path)
    length = clip.shape[1]
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand(1, generator=generator).item()

    def randint(low: int, high: int) -> int:  # inclusive
        return int(torch.randint(low, high + 1, (1,), generator=generator).item())

    def seconds(samples: int) -> str:
        return f"{samples / sample_rate:.2f} s"

    one = torch.tensor([length])
    panels: list[tuple[str, torch.Tensor]] = [(f"Original ({seconds(length)})", clip)]

    # Time shift: circular within the clip, by 25-75 % of it (either way round looks alike).
    offset = round(uniform(0.25, 0.75) * length)
    shifted = augment.shift(clip, one, torch.tensor([offset]), mode="roll")
    panels.append((f"Time shift (+{seconds(offset)}, circular)", shifted))

    # Random crop: to the input for a long clip, else to half of the clip.
    crop_length = input_samples if length > input_samples else max(1, length // 2)
    start = randint(0, length - crop_length)
    cropped = augment.crop(clip, one, torch.tensor([start]), crop_length)
    note = "" if length > input_samples else ", half of a short clip"
    panels.append((f"Random crop ({seconds(crop_length)} from {seconds(start)}{note})", cropped))

    # Padding and replication act on clips shorter than the input.
    if length < input_samples:
        short, what = clip, "clip"
    else:
        excerpt = max(1, round(_EXCERPT_FRACTION * input_samples))
        first = _loudest_window(clip[0].numpy(), excerpt)
        short = clip[:, first : first + excerpt]
        what = f"{seconds(excerpt)} excerpt"
    short_length = torch.tensor([short.shape[1]])
    pad_offset = round(uniform(0.25, 0.75) * (input_samples - short.shape[1]))
    padded = augment.pad(short, short_length, torch.tensor([pad_offset]), input_samples)
    panels.append((f"Random padding ({what} at {seconds(pad_offset)})", padded))
    phase = randint(0, short.shape[1] - 1)
    replicated = augment.replicate(short, short_length, torch.tensor([phase]), input_samples)
    panels.append((f"Replication ({what} tiled from {seconds(phase)})", replicated))

    # Mixup on input-length waveforms, as in training: the clip as one of the panels above
    # made it (the crop of a long clip, the replication of a short one) with the partner
    # fitted like an evaluation window (cropped from its start or replicated).
    if length > input_samples:
        base, base_name = cropped, "random crop"
    else:
        base, base_name = replicated, "replication"
    if mix_with is not None:
        partner = load(mix_with)
        partner_name = Path(mix_with).name
    else:
        partner = clip.flip(-1)
        partner_name = "time-reversed copy"
    fit = augment.WaveformAugment(input_samples, eval_fill="replicate").eval()
    other = fit(partner, torch.tensor([partner.shape[1]]))
    lam = uniform(0.5, 0.75)
    mixed, _ = augment.mixup(
        torch.cat([base, other]), torch.eye(2), torch.tensor([lam, lam]), torch.tensor([1, 0])
    )
    panels.append((f"Mixup (λ={lam:.2f}: {base_name} + {partner_name})", mixed[:1]))

    # Log-mel of every panel; short signals are zero-padded to one FFT frame.
    hop_length = max(1, round(sample_rate * 0.01))
    n_fft = 2 ** math.ceil(math.log2(sample_rate * 0.04))
    fmax = sample_rate / 2
    frontend = LogMel(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=_N_MELS,
        fmin=_FMIN,
        fmax=fmax,
    )
    spectrograms = []
    with torch.no_grad():
        for _, signal in panels:
            if signal.shape[1] < n_fft:
                signal = torch.nn.functional.pad(signal, (0, n_fft - signal.shape[1]))
            spectrograms.append(frontend(signal)[0, 0].numpy())
    # One colour scale for all panels (the original's peak down 80 dB) so levels compare.
    vmax = float(spectrograms[0].max())
    vmin = vmax - _DB_RANGE

    tick_positions, tick_labels = _hz_ticks(_FMIN, fmax, _N_MELS)
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), constrained_layout=True)
    for ax, (title, _), spec in zip(axes.flat, panels, spectrograms):
        duration = spec.shape[1] * hop_length / sample_rate
        image = ax.imshow(
            spec,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=vmin,
            vmax=vmax,
            extent=(0.0, duration, 0.0, float(_N_MELS)),
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("Time (s)")
        ax.set_ylabel("Frequency (Hz, mel scale)")
        ax.set_yticks(tick_positions, tick_labels)
    # One colour bar: every panel shares the original's dB scale.
    colorbar = fig.colorbar(image, ax=axes, format="%.0f", pad=0.01, fraction=0.03, aspect=40)
    colorbar.set_label("Log-mel power (dB)")
    fig.suptitle(
        f"Augmentations of {Path(audio_path).name} ({sample_rate} Hz, input "
        f"{input_seconds:g} s, seed {seed})",
        fontsize=13,
    )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return [title for title, _ in panels]
