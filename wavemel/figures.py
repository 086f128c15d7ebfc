"""Every figure wavemel draws: confusion matrices, per-class MAP@3 bars, the augmentation panels.

* :func:`plot_confusion`: a confusion matrix coloured by row-normalised recall (``evaluate``).
* :func:`plot_per_class_map3`: grouped bars of per-class MAP@3 per model (the poster's Figure 4).
* :func:`plot_timeline`: a clip's log-mel over time with its top labels' window probabilities
  beneath (``wavemel predict --timeline --plot``); the log-mel is computed block by block and
  averaged down to at most ``max_columns`` columns, so an hour-long file costs no more memory.
* :func:`render_augmentation_figure`: the waveform augmentations of one clip seen as log-mel
  spectrograms (the poster's Figure 3, ``wavemel augment-preview``). Each panel runs the same pure
  functions the trainer's modules use (:mod:`wavemel.augment`) and shows the log-mel
  (:class:`wavemel.frontend.LogMel`) of the result:

  1. the original clip;
  2. a time shift: the content moves later in the window and the vacated start is silence,
     as training moves a short clip among zeros or a long clip's window start; nothing wraps
     round (training never splices a clip's end before its start);
  3. a random crop (to the input length for a clip longer than the input; otherwise, so that
     there is something to crop, to half the clip);
  4. random padding and 5. replication of a short clip to the input length (a clip that is not
     shorter than the input is represented by its loudest excerpt of 40 % of the input);
  6. mixup of the crop (long clip) or replication (short clip) above with a second clip
     (``mix_with``) or, without one, with the clip played backwards.

  The random parameters come from a ``torch.Generator`` seeded with ``seed``, drawn in ranges that
  make each effect visible (a shift of 25-75 % of the clip, a padding offset of 25-75 % of the
  room and a mixup weight of 0.5-0.75, where training draws from the full ranges), and each
  panel's title states them.

Figures are written atomically (:func:`wavemel._io.atomic_write_bytes`), so a full disk is a
one-line error naming the file and never leaves half a PNG. matplotlib is imported on first use.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch

from wavemel import augment
from wavemel._io import atomic_write_bytes, make_folder
from wavemel.audio import audio_info, load_audio, stream_audio
from wavemel.errors import AudioError, WavemelError
from wavemel.frontend import PREVIEW_LOG_MEL

__all__ = [
    "FIGURE_SUFFIXES",
    "PANEL_NAMES",
    "check_figure_path",
    "plot_confusion",
    "plot_per_class_map3",
    "plot_timeline",
    "render_augmentation_figure",
]

#: File suffixes a figure can be written as (the format follows the suffix).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")

#: The start of every augmentation panel title, in drawing order.
PANEL_NAMES = (
    "Original",
    "Time shift",
    "Random crop",
    "Random padding",
    "Replication",
    "Mixup",
)

# Augmentation display settings (the spectrogram's own: frontend.PREVIEW_LOG_MEL).
_DB_RANGE = 80.0
_EXCERPT_FRACTION = 0.4  # of the input length, for the padding/replication panels


# ---------------------------------------------------------------------------------------------
# Writing figures


def check_figure_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Checks, before any work is done, that a figure can be written to ``path``.

    Args:
        path: The figure file; its suffix chooses the format.
        overwrite: Whether an existing file may be replaced (``--force`` on the command line).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        WavemelError: The suffix is not one of :data:`FIGURE_SUFFIXES`, ``path`` is a folder, or
            it exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise WavemelError(
            f"{path}: unsupported figure format {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(FIGURE_SUFFIXES)}"
        )
    if path.is_dir():
        raise WavemelError(f"{path}: is a folder, expected a figure file name")
    if path.exists() and not overwrite:
        raise WavemelError(f"{path}: exists; pass --force to overwrite it")
    return path


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed, none opened)."""
    # lazy: the backend must be chosen before pyplot is first imported, and only a figure
    # writer needs matplotlib at all
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, dpi: int) -> None:
    """Renders ``fig`` in the format of ``out``'s suffix, writes it atomically and closes it."""
    plt = _pyplot()
    out = check_figure_path(out, overwrite=True)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=out.suffix.lower()[1:], dpi=dpi)
    finally:
        plt.close(fig)
    make_folder(out.parent)
    atomic_write_bytes(out, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Scores


def plot_confusion(matrix: np.ndarray, labels: list[str], title: str, out_png: Path) -> None:
    """Draws a confusion matrix, coloured by the fraction of each true class.

    Args:
        matrix: ``(C, C)`` counts; rows are true labels, columns predicted ones.
        labels: The ``C`` class names, in matrix order.
        title: Figure title.
        out_png: Where to write the figure (parent folders are created; replaced if present).
    """
    plt = _pyplot()
    n = len(labels)
    size = max(5.0, 0.32 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    # Colour by row-normalised recall so rare classes are as visible as common ones.
    totals = matrix.sum(axis=1, keepdims=True)
    shown = np.divide(matrix, np.maximum(totals, 1), dtype=np.float64)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    font = 8 if n <= 25 else 6
    ax.set_xticklabels(labels, rotation=90, fontsize=font)
    ax.set_yticklabels(labels, fontsize=font)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title, fontsize=10)
    # Counts in the cells stay readable up to about 30 classes.
    if n <= 30:
        for i, j in zip(*np.nonzero(matrix)):
            colour = "white" if shown[i, j] > 0.5 else "black"
            ax.text(
                j, i, str(matrix[i, j]), ha="center", va="center", fontsize=font - 1, color=colour
            )
    fig.tight_layout()
    _save(fig, Path(out_png), dpi=110)


def plot_per_class_map3(
    per_class: dict[str, dict[str, float]], series: Sequence[str], title: str, out_png: Path
) -> None:
    """Grouped bars of per-class MAP@3, one bar per series (model variant) in each class.

    Args:
        per_class: ``{class: {series name: MAP@3}}``; every class row holds every series.
        series: The series to draw, in legend order.
        title: Figure title.
        out_png: Where to write the figure (parent folders are created; replaced if present).
    """
    plt = _pyplot()
    classes = list(per_class)
    width = 0.8 / len(series)
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(classes) + 2), 4.5))
    for i, name in enumerate(series):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            [per_class[c][name] for c in classes],
            width,
            label=name,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("Category")
    ax.set_ylabel("MAP@3 (mean over runs)")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.yaxis.grid(True, linewidth=0.5, alpha=0.5)
    ax.set_axisbelow(True)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=len(series), loc="lower center", bbox_to_anchor=(0.5, 1.08))
    fig.tight_layout()
    _save(fig, Path(out_png), dpi=120)


# ---------------------------------------------------------------------------------------------
# Timelines


def _streamed_log_mel(
    path: str | os.PathLike, sample_rate: int, max_columns: int
) -> tuple[np.ndarray, float]:
    """``(n_mels, columns)`` display log-mel of a file read in blocks, and seconds per column.

    Frames (10 ms hop) are averaged in groups so that at most about ``max_columns`` remain:
    memory is one block plus the columns, whatever the file's length.
    """
    duration = audio_info(path).duration
    hop_length = PREVIEW_LOG_MEL.hop_length(sample_rate)
    n_fft = PREVIEW_LOG_MEL.n_fft(sample_rate)
    group = max(1, math.ceil(duration * sample_rate / hop_length / max_columns))
    frontend = PREVIEW_LOG_MEL.log_mel(sample_rate)
    columns, pending = [], np.zeros((PREVIEW_LOG_MEL.n_mels, 0), dtype=np.float32)
    carry = np.zeros(0, dtype=np.float32)  # samples short of a whole hop, for the next block
    with torch.no_grad():
        for block in itertools.chain(stream_audio(path, sample_rate), [None]):
            samples = np.concatenate([carry, block]) if block is not None else carry
            usable = samples.size if block is None else samples.size // hop_length * hop_length
            carry = samples[usable:]
            if usable == 0:
                continue
            signal = torch.from_numpy(np.ascontiguousarray(samples[:usable])).unsqueeze(0)
            if signal.shape[1] < n_fft:
                signal = torch.nn.functional.pad(signal, (0, n_fft - signal.shape[1]))
            # One frame per hop of samples, so columns stay on time over an hour; block edges
            # get centred frames of their own, which is invisible at display resolution.
            frames = frontend(signal)[0, 0, :, : max(1, usable // hop_length)].numpy()
            pending = np.concatenate([pending, frames], axis=1)
            whole = pending.shape[1] // group * group
            if whole:
                columns.append(
                    pending[:, :whole].reshape(PREVIEW_LOG_MEL.n_mels, -1, group).mean(axis=2)
                )
                pending = pending[:, whole:]
    if pending.shape[1]:
        columns.append(pending.mean(axis=1, keepdims=True))
    if not columns:
        raise AudioError(f"{path}: has no samples; nothing to draw")
    return np.concatenate(columns, axis=1), group * hop_length / sample_rate


def plot_timeline(
    audio_path: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    sample_rate: int,
    starts: np.ndarray,
    ends: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    threshold: float | None = None,
    max_columns: int = 1500,
) -> None:
    """Draws a clip's log-mel over time and, beneath it, its labels' window probabilities.

    Args:
        audio_path: The clip (read in blocks, resampled to ``sample_rate``).
        out_png: A :data:`FIGURE_SUFFIXES` file (replaced if present; callers check first).
        sample_rate: Rate of the log-mel (the model's).
        starts: ``(W,)`` window starts in seconds.
        ends: ``(W,)`` window ends in seconds.
        scores: ``(W, K)`` probabilities of the ``K`` labels drawn.
        labels: The ``K`` label names, in legend order.
        threshold: Drawn as a dashed line when given (the segment threshold).
        max_columns: Most log-mel columns drawn (longer files are averaged down).

    Raises:
        AudioError: The clip cannot be decoded or is empty.
        WavemelError: ``out_png`` has an unsupported suffix or cannot be written.
    """
    out_png = check_figure_path(out_png, overwrite=True)
    spectrogram, column_seconds = _streamed_log_mel(audio_path, sample_rate, max_columns)
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 6), sharex=True, height_ratios=(3, 2), constrained_layout=True
    )
    vmax = float(spectrogram.max())
    span = spectrogram.shape[1] * column_seconds
    top.imshow(
        spectrogram,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=vmax - _DB_RANGE,
        vmax=vmax,
        extent=(0.0, span, 0.0, float(PREVIEW_LOG_MEL.n_mels)),
        interpolation="nearest",
    )
    positions, names = _hz_ticks(PREVIEW_LOG_MEL.fmin, sample_rate / 2, PREVIEW_LOG_MEL.n_mels)
    top.set_yticks(positions, names)
    top.set_ylabel("Frequency (Hz, mel scale)")
    top.set_title(f"{Path(audio_path).name}: log-mel and window probabilities", fontsize=11)
    # Each window's score is drawn at its centre: overlapping windows stay a single line.
    centres = (np.asarray(starts) + np.asarray(ends)) / 2
    for column, label in enumerate(labels):
        bottom.plot(centres, scores[:, column], marker=".", linewidth=1.5, label=label)
    if threshold is not None:
        bottom.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    bottom.set_ylim(0.0, 1.02)
    bottom.set_xlim(0.0, span)
    bottom.set_xlabel("Time (s)")
    bottom.set_ylabel("Probability")
    bottom.legend(loc="upper right", fontsize=8, ncol=min(len(labels) + 1, 4))
    bottom.grid(alpha=0.3)
    _save(fig, out_png, dpi=100)


# ---------------------------------------------------------------------------------------------
# Augmentations (Figure 3)


def _loudest_window(signal: np.ndarray, length: int) -> int:
    """Start of the ``length``-sample window with the most energy (a moving sum via cumsum)."""
    if length >= signal.size:
        return 0
    energy = np.concatenate([[0.0], np.cumsum(signal.astype(np.float64) ** 2)])
    window_energy = energy[length:] - energy[:-length]
    return int(np.argmax(window_energy))


def _hz_ticks(fmin: float, fmax: float, n_mels: int) -> tuple[list[float], list[str]]:
    """Positions (in mel-bin units) and labels of round frequencies for the y axis."""
    low, high = librosa.hz_to_mel(fmin), librosa.hz_to_mel(fmax)
    positions, labels = [], []
    for hz in (100, 250, 500, 1000, 2000, 4000, 8000, 16000):
        position = float((librosa.hz_to_mel(hz) - low) / (high - low) * n_mels)
        # Below 1 kHz the mel scale is linear and the low ticks crowd: keep them apart.
        if fmin <= hz <= fmax and (not positions or position - positions[-1] >= 0.06 * n_mels):
            positions.append(position)
            labels.append(f"{hz // 1000}k" if hz >= 1000 else str(hz))
    return positions, labels


def _load_clip(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """``(1, T)`` float32 tensor of a clip, resampled; an empty clip is an error."""
    signal = load_audio(path, sample_rate)
    if signal.size == 0:
        raise AudioError(f"{path}: has no samples; nothing to draw")
    return torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32)).unsqueeze(0)


class _Draws:
    """The figure's seeded random parameters, in ranges that make each effect visible."""

    def __init__(self, seed: int) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand(1, generator=self._generator).item()

    def randint(self, low: int, high: int) -> int:  # inclusive
        return int(torch.randint(low, high + 1, (1,), generator=self._generator).item())


def _augmentation_panels(
    clip: torch.Tensor,
    partner: torch.Tensor,
    partner_name: str,
    input_samples: int,
    sample_rate: int,
    seed: int,
) -> list[tuple[str, torch.Tensor]]:
    """``[(title, (1, N) signal)]`` of the six panels; ``partner`` is the mixup's second clip.

    The draws happen in a fixed order (shift, crop, padding, replication, mixup), so a seed
    always gives the same figure.
    """
    draws = _Draws(seed)

    def seconds(samples: int) -> str:
        return f"{samples / sample_rate:.2f} s"

    length = clip.shape[1]
    one = torch.tensor([length])
    panels: list[tuple[str, torch.Tensor]] = [(f"Original ({seconds(length)})", clip)]

    # Time shift by 25-75 % of the clip, zero-filled: no seam, as in training.
    offset = round(draws.uniform(0.25, 0.75) * length)
    shifted = augment.shift(clip, one, torch.tensor([offset]), mode="zero")
    panels.append((f"Time shift (+{seconds(offset)}, no wrap-around)", shifted))

    # Random crop: to the input for a long clip, else to half of the clip.
    crop_length = input_samples if length > input_samples else max(1, length // 2)
    start = draws.randint(0, length - crop_length)
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
    pad_offset = round(draws.uniform(0.25, 0.75) * (input_samples - short.shape[1]))
    padded = augment.pad(short, short_length, torch.tensor([pad_offset]), input_samples)
    panels.append((f"Random padding ({what} at {seconds(pad_offset)})", padded))
    phase = draws.randint(0, short.shape[1] - 1)
    replicated = augment.replicate(short, short_length, torch.tensor([phase]), input_samples)
    panels.append((f"Replication ({what} tiled from {seconds(phase)})", replicated))

    # Mixup on input-length waveforms, as in training: the clip as one of the panels above
    # made it (the crop of a long clip, the replication of a short one) with the partner
    # fitted like an evaluation window (cropped from its start or replicated).
    if length > input_samples:
        base, base_name = cropped, "random crop"
    else:
        base, base_name = replicated, "replication"
    fit = augment.WaveformAugment(input_samples, eval_fill="replicate").eval()
    other = fit(partner, torch.tensor([partner.shape[1]]))
    lam = draws.uniform(0.5, 0.75)
    mixed, _ = augment.mixup(
        torch.cat([base, other]), torch.eye(2), torch.tensor([lam, lam]), torch.tensor([1, 0])
    )
    panels.append((f"Mixup (λ={lam:.2f}: {base_name} + {partner_name})", mixed[:1]))
    return panels


def _display_log_mels(
    signals: list[torch.Tensor], sample_rate: int
) -> tuple[list[np.ndarray], int]:
    """``(n_mels, frames)`` log-mel of each ``(1, N)`` signal, and the hop length in samples."""
    frontend = PREVIEW_LOG_MEL.log_mel(sample_rate)
    n_fft = frontend.n_fft
    spectrograms = []
    with torch.no_grad():
        for signal in signals:
            # Short signals are zero-padded to one FFT frame.
            if signal.shape[1] < n_fft:
                signal = torch.nn.functional.pad(signal, (0, n_fft - signal.shape[1]))
            spectrograms.append(frontend(signal)[0, 0].numpy())
    return spectrograms, frontend.hop_length


def _draw_spectrogram_grid(
    titles: list[str],
    spectrograms: list[np.ndarray],
    hop_length: int,
    sample_rate: int,
    suptitle: str,
    out_png: Path,
) -> None:
    """Six log-mel panels (3 x 2) on the original's dB scale, with one colour bar."""
    plt = _pyplot()
    # One colour scale for all panels (the original's peak down 80 dB) so levels compare.
    vmax = float(spectrograms[0].max())
    vmin = vmax - _DB_RANGE
    settings = PREVIEW_LOG_MEL
    tick_positions, tick_labels = _hz_ticks(
        settings.fmin, settings.fmax_at(sample_rate), settings.n_mels
    )
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), constrained_layout=True)
    for ax, title, spec in zip(axes.flat, titles, spectrograms):
        duration = spec.shape[1] * hop_length / sample_rate
        image = ax.imshow(
            spec,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=vmin,
            vmax=vmax,
            extent=(0.0, duration, 0.0, float(settings.n_mels)),
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("Time (s)")
        ax.set_ylabel("Frequency (Hz, mel scale)")
        ax.set_yticks(tick_positions, tick_labels)
    # One colour bar: every panel shares the original's dB scale.
    colorbar = fig.colorbar(image, ax=axes, format="%.0f", pad=0.01, fraction=0.03, aspect=40)
    colorbar.set_label("Log-mel power (dB)")
    fig.suptitle(suptitle, fontsize=13)
    _save(fig, out_png, dpi=100)


def render_augmentation_figure(
    audio_path: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    sample_rate: int = 22050,
    input_seconds: float = 2.0,
    seed: int = 0,
    mix_with: str | os.PathLike | None = None,
) -> list[str]:
    """Draws the original log-mel of a clip and one panel per augmentation into a figure.

    Args:
        audio_path: The clip to show (any format :func:`wavemel.audio.load_audio` reads).
        out_png: Where to write the figure, a :data:`FIGURE_SUFFIXES` file (parent folders are
            created; replaced if present: callers that must not replace one check first with
            :func:`check_figure_path`).
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
        WavemelError: ``out_png`` has an unsupported suffix or cannot be written.
        ValueError: ``sample_rate`` or ``input_seconds`` is not positive.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not input_seconds > 0:
        raise ValueError(f"input_seconds must be positive, got {input_seconds}")
    out_png = check_figure_path(out_png, overwrite=True)
    input_samples = max(1, round(input_seconds * sample_rate))

    clip = _load_clip(audio_path, sample_rate)
    if mix_with is not None:
        partner, partner_name = _load_clip(mix_with, sample_rate), Path(mix_with).name
    else:
        partner, partner_name = clip.flip(-1), "time-reversed copy"
    panels = _augmentation_panels(clip, partner, partner_name, input_samples, sample_rate, seed)
    titles = [title for title, _ in panels]
    spectrograms, hop_length = _display_log_mels([s for _, s in panels], sample_rate)
    suptitle = (
        f"Augmentations of {Path(audio_path).name} ({sample_rate} Hz, input "
        f"{input_seconds:g} s, seed {seed})"
    )
    _draw_spectrogram_grid(titles, spectrograms, hop_length, sample_rate, suptitle, out_png)
    return titles
