"""The HEAR 2021 API: a wavemel run as an embedding model for HEAR's evaluation harness.

HEAR (Holistic Evaluation of Audio Representations) imports a module and calls three functions
on it; this module is that module (``hear-validator wavemel.hear -m RUN``):

- :func:`load_model` turns a run folder or checkpoint into a :class:`HearModel`, a
  ``torch.nn.Module`` whose ``sample_rate``, ``scene_embedding_size`` and
  ``timestamp_embedding_size`` are ints;
- :func:`get_scene_embeddings` gives one ``(D,)`` embedding per clip;
- :func:`get_timestamp_embeddings` gives ``(T, D)`` embeddings per clip with their times in ms.

An embedding is the network's ``features(x)`` (the dense layer before the classifier) of a
window of the training input length, computed in batches of windows from all clips on the
model's device.

A **scene embedding** is the clip-level embedding of :meth:`wavemel.infer.Tagger.embed`, so HEAR
and ``wavemel embed`` agree: the mean over windows that do not overlap, plus one window aligned
to the clip's end, with a clip shorter than a window filled as the model's training fills it.

A **timestamp embedding** follows HEAR's convention that a timestamp is the centre of its
window. Windows are centred every :attr:`HearModel.hop_samples` samples (the largest whole
number of samples within 50 ms) from the clip's first sample to its last; the clip is extended
by half a window of silence at each end so that its edges are covered too. The hop is a whole
number of samples and timestamp ``k`` is computed as ``k * hop / rate`` (never accumulated), so
the timestamps are evenly spaced however long the clip is, the last one lies within one hop of
the clip's end, and no drift builds up.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from wavemel._device import autocast, model_device
from wavemel.checkpoint import load_model as load_checkpoint_model
from wavemel.errors import AudioError, CheckpointError
from wavemel.infer import fill_window, window_starts

__all__ = [
    "HEAR_SAMPLE_RATES",
    "HearModel",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
]

#: The rates HEAR provides its tasks' audio at; a model must take one of them.
HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)
#: HEAR asks for timestamps at most 50 ms apart (the tolerance of its onset-based tasks).
TIMESTAMP_HOP_MS = 50


class HearModel(torch.nn.Module):
    """A wavemel network with the attributes HEAR's harness reads.

    ``model.to(device)`` moves the network (HEAR's harness does that); embeddings are computed
    on the device the network is on. The network always stays in eval mode: an embedding must
    not depend on dropout or on batch statistics.

    Attributes:
        network: The wavemel model (``features(x)``: ``(B, input_samples) -> (B, D)``).
        sample_rate: Rate the audio must be given at (Hz).
        scene_embedding_size: ``D`` of :func:`get_scene_embeddings`.
        timestamp_embedding_size: ``D`` of :func:`get_timestamp_embeddings`.
        input_samples: Window length (the training input length).
        hop_samples: Distance between timestamps, in samples (at most 50 ms).
        fill: How a clip shorter than a window is filled for its scene embedding.
        batch_size: Windows per forward pass.
        amp: Mixed precision on CUDA, as :class:`wavemel.infer.Tagger` uses it.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        sample_rate: int,
        input_samples: int,
        fill: str = "replicate",
        batch_size: int = 64,
        amp: bool = True,
    ) -> None:
        super().__init__()
        if input_samples < 1 or batch_size < 1:
            raise ValueError("input_samples and batch_size must be positive")
        self.network = network.eval()
        self.sample_rate = int(sample_rate)
        self.scene_embedding_size = int(network.embedding_dim)
        self.timestamp_embedding_size = int(network.embedding_dim)
        self.input_samples = int(input_samples)
        # Integer arithmetic: a hop rounded up would exceed 50 ms (22050 Hz gives 1102 samples).
        self.hop_samples = self.sample_rate * TIMESTAMP_HOP_MS // 1000
        self.fill = fill
        self.batch_size = int(batch_size)
        self.amp = amp

    def train(self, mode: bool = True) -> HearModel:
        """Keep the network in eval mode whatever the caller asks (see the class docstring)."""
        super().train(mode)
        self.network.eval()
        return self


def load_model(
    model_file_path: str | os.PathLike = "", device: str = "auto", batch_size: int = 64
) -> HearModel:
    """Load a wavemel run as a HEAR model.

    Args:
        model_file_path: A run folder (its ``best`` checkpoint), ``STEM.json``,
            ``STEM.safetensors`` or ``STEM``. wavemel has no built-in weights, so it is required.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"``, ...
        batch_size: Windows per forward pass.

    Raises:
        CheckpointError: No path given; the checkpoint is missing or corrupt, lacks its sample
            rate or input length, or its rate is not one HEAR provides audio at.
    """
    if not os.fspath(model_file_path):
        raise CheckpointError(
            "load_model: no model file given; pass a wavemel run folder or checkpoint"
        )
    network, info = load_checkpoint_model(model_file_path, device=device)
    info.require("sample_rate", "input_seconds")
    if info.sample_rate not in HEAR_SAMPLE_RATES:
        rates = ", ".join(str(rate) for rate in HEAR_SAMPLE_RATES)
        raise CheckpointError(
            f"{info.json_path}: sample_rate {info.sample_rate} Hz is not a HEAR rate ({rates}); "
            "train a model at one of them"
        )
    return HearModel(
        network,
        sample_rate=info.sample_rate,
        input_samples=info.input_samples,
        fill=info.eval_fill or "replicate",
        batch_size=batch_size,
    )


def _checked_audio(audio: torch.Tensor | np.ndarray, model: HearModel) -> torch.Tensor:
    """``(n, samples)`` float32 on the model's device, refusing what has nothing to embed.

    Raises:
        ValueError: ``audio`` is not a 2-D array of floats.
        AudioError: The clips have no samples, or a clip holds NaN or infinite samples.
    """
    audio = torch.as_tensor(audio)
    if audio.ndim != 2 or not audio.is_floating_point():
        raise ValueError(
            f"audio must be a float tensor (n, samples), got {audio.dtype} {tuple(audio.shape)}"
        )
    if audio.shape[1] == 0:
        raise AudioError("audio: clips of 0 samples, nothing to embed")
    audio = audio.to(device=model_device(model.network), dtype=torch.float32)
    finite = torch.isfinite(audio).all(dim=1)
    if not finite.all():
        first = int(torch.nonzero(~finite)[0, 0])
        raise AudioError(f"audio[{first}]: holds NaN or infinite samples")
    return audio


def _window_features(model: HearModel, source: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """Embeddings of the windows ``source[i, s : s + input_samples]`` of every clip and start.

    Windows of all clips share batches; only one batch of windows exists at a time, so memory
    is the clips plus the ``(n, S, D)`` result however many windows overlap.

    Args:
        model: The HEAR model.
        source: ``(n, P)`` clips on the model's device.
        starts: ``S`` window starts, the same for every clip.

    Returns:
        ``(n, S, D)`` float32.
    """
    width, count = model.input_samples, len(starts)
    total = source.shape[0] * count
    rows = []
    with torch.inference_mode(), autocast(source.device, model.amp):
        for begin in range(0, total, model.batch_size):
            end = min(begin + model.batch_size, total)
            pairs = ((i // count, starts[i % count]) for i in range(begin, end))
            batch = torch.stack([source[clip, start : start + width] for clip, start in pairs])
            rows.append(model.network.features(batch).float())
    if not rows:
        return torch.zeros(0, count, model.timestamp_embedding_size, device=source.device)
    return torch.cat(rows).reshape(source.shape[0], count, -1)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """One embedding per clip: :meth:`wavemel.infer.Tagger.embed` of each, batched.

    Args:
        audio: ``(n, samples)`` clips at ``model.sample_rate``, any device.
        model: What :func:`load_model` returned.

    Returns:
        ``(n, model.scene_embedding_size)`` float32 on the model's device.

    Raises:
        AudioError: The clips are empty or hold NaN / infinite samples.
    """
    audio = _checked_audio(audio, model)
    width = model.input_samples
    if audio.shape[1] < width:
        # One window per clip, filled as training fills short clips (the Tagger's own filling).
        filled = [fill_window(clip, width, model.fill) for clip in audio.cpu().numpy()]
        source = torch.from_numpy(np.stack(filled) if filled else np.zeros((0, width), "f4"))
        source = source.to(audio.device)
        starts = [0]
    else:
        source, starts = audio, window_starts(audio.shape[1], width)
    return _window_features(model, source, starts).mean(dim=1)


def get_timestamp_embeddings(
    audio: torch.Tensor, model: HearModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of windows centred every ``model.hop_samples`` samples, with their times.

    Args:
        audio: ``(n, samples)`` clips at ``model.sample_rate``, any device.
        model: What :func:`load_model` returned.

    Returns:
        ``(embeddings, timestamps)``: ``(n, T, model.timestamp_embedding_size)`` float32 and
        ``(n, T)`` float32 window centres in milliseconds, ``0, hop, 2 hop, ...`` up to the
        clip's end (``T = samples // hop_samples + 1``), both on the model's device.

    Raises:
        AudioError: The clips are empty or hold NaN / infinite samples.
    """
    audio = _checked_audio(audio, model)
    width, hop = model.input_samples, model.hop_samples
    count = audio.shape[1] // hop + 1
    # Window k spans [k hop - width // 2, k hop - width // 2 + width) of the clip: centred on
    # k hop (to half a sample for an odd width), silence where it reaches past the clip.
    padded = F.pad(audio, (width // 2, width - width // 2))
    embeddings = _window_features(model, padded, [k * hop for k in range(count)])
    times = torch.arange(count, dtype=torch.float64) * (hop * 1000.0 / model.sample_rate)
    timestamps = times.to(torch.float32).repeat(audio.shape[0], 1).to(audio.device)
    return embeddings, timestamps
