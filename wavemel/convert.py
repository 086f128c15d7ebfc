"""Weights trained elsewhere, imported into wavemel run folders (``wavemel import-weights``).

``panns-cnn14``: a PANNs CNN14 checkpoint (the ``.pth`` of the PANNs release, a dict whose
``"model"`` entry is the state dict, or that state dict itself) becomes ``RUN/best.safetensors``
+ ``RUN/best.json`` of wavemel's :class:`~wavemel.models.cnn14.Cnn14`, which then tags, combines
and fine-tunes like any wavemel run. The ``.pth`` is read here only, with
``torch.load(weights_only=True)`` (no arbitrary unpickling); nothing at tagging time reads it.

The state dict does not record the sample rate, hop, ``fmin`` or ``fmax``: they come from the
options (PANNs' AudioSet release by default: 32 kHz, hop 320, 50-14000 Hz). The channels, dense
width, mel bands, FFT size and class count are read from the tensor shapes, and the stored front
end (DFT kernels and mel filterbank) is compared with the one wavemel computes from those
settings, so an import with the wrong rate or band edges fails instead of tagging wrongly.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import pickle
import re
from pathlib import Path

import torch

from wavemel._io import require_regular_file
from wavemel.checkpoint import save_checkpoint
from wavemel.errors import CheckpointError, DataError
from wavemel.models.cnn14 import Cnn14, Cnn14Config, cnn14_fmax, cnn14_hop_length
from wavemel.train.run_folder import RunFolder

__all__ = ["FORMATS", "import_panns_cnn14", "panns_cnn14_key_map", "read_class_labels"]

#: Formats ``wavemel import-weights`` understands.
FORMATS = ("panns-cnn14",)

#: PANNs trained on AudioSet's 10 s clips; the imported run tags in windows of this length.
PANNS_INPUT_SECONDS = 10.0

# Front-end tensors of a PANNs state dict: derived from the settings, checked, never copied.
_STFT_REAL = "spectrogram_extractor.stft.conv_real.weight"
_STFT_IMAG = "spectrogram_extractor.stft.conv_imag.weight"
_MEL = "logmel_extractor.melW"
# The layers of one ConvBlock and their index in wavemel's block (see cnn14._block).
_BLOCK_LAYERS = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4}
_CONV_BLOCK = re.compile(r"conv_block(\d+)\.conv1\.weight")


def panns_cnn14_key_map(num_blocks: int) -> dict[str, str]:
    """PANNs CNN14 parameter/buffer names -> wavemel :class:`Cnn14` names.

    Args:
        num_blocks: conv blocks of the model (6 in CNN14).

    Returns:
        Every non-front-end entry of a PANNs state dict mapped to its ``Cnn14.state_dict()`` name.
    """
    norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    table = {f"bn0.{p}": f"input_norm.{p}" for p in norm}
    for block in range(num_blocks):
        for layer, index in _BLOCK_LAYERS.items():
            params = ("weight",) if layer.startswith("conv") else norm
            for p in params:
                table[f"conv_block{block + 1}.{layer}.{p}"] = f"blocks.{block}.{index}.{p}"
    for p in ("weight", "bias"):
        table[f"fc1.{p}"] = f"embedding.0.{p}"
        table[f"fc_audioset.{p}"] = f"classifier.{p}"
    return table


def read_class_labels(path: str | os.PathLike) -> list[str]:
    """The ``display_name`` column of an AudioSet ``class_labels_indices.csv``, in index order.

    Raises:
        DataError: The file is missing, lacks the ``index``/``display_name`` columns, or its
            indices are not 0, 1, 2, ... (the message names the file and row).
    """
    path = Path(path)
    require_regular_file(path, error=DataError, what="class-labels CSV")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
            columns = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable class-labels CSV ({exc})") from None
    if not {"index", "display_name"} <= set(columns):
        raise DataError(f"{path}: needs the columns index,mid,display_name (AudioSet's layout)")
    labels = []
    for row_number, row in enumerate(rows, start=2):
        if (row["index"] or "").strip() != str(len(labels)) or not row["display_name"]:
            raise DataError(
                f"{path}: row {row_number} should be index {len(labels)} with a display_name"
            )
        labels.append(row["display_name"])
    return labels


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a PANNs ``.pth`` (``{"model": state_dict, ...}`` or the bare dict)."""
    require_regular_file(path, error=CheckpointError, what="PANNs checkpoint")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable PyTorch weights file ({reason})") from None
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{path}: expected a state dict of tensors (or a dict with one under 'model')"
        )
    return state


def _check_frontend(path: Path, state: dict[str, torch.Tensor], model: Cnn14) -> None:
    """Refuse a checkpoint whose stored STFT kernels or mel filterbank differ from ours."""
    n_fft = model.config.n_fft
    frequencies = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    phase = 2 * math.pi * frequencies * torch.arange(n_fft, dtype=torch.float64) / n_fft
    window = model.frontend.window.double()
    # PANNs' STFT is a conv1d with kernels window * exp(-i phase).
    expected = {
        _STFT_REAL: (torch.cos(phase) * window)[:, None, :],
        _STFT_IMAG: (-torch.sin(phase) * window)[:, None, :],
    }
    for key, kernel in expected.items():
        if not torch.allclose(state[key].double(), kernel, atol=1e-5):
            raise CheckpointError(
                f"{path}: {key} is not a {n_fft}-point Hann-window STFT; not a PANNs CNN14"
            )
    mel = state[_MEL].double().T  # PANNs stores it (freq, mel)
    ours = model.frontend.mel_basis.double()
    if mel.shape != ours.shape or not torch.allclose(mel, ours, rtol=1e-4, atol=1e-7):
        cfg = model.config
        raise CheckpointError(
            f"{path}: its mel filterbank is not the one of sample_rate {cfg.sample_rate}, "
            f"n_fft {n_fft}, fmin {cfg.fmin:g}, fmax {cfg.fmax:g}; pass the model's own "
            "--sample-rate, --fmin and --fmax"
        )


def _model_for(
    path: Path,
    state: dict[str, torch.Tensor],
    sample_rate: int,
    hop_length: int | None,
    fmin: float,
    fmax: float | None,
) -> Cnn14:
    """An empty :class:`Cnn14` with the sizes the state dict's tensor shapes imply."""
    needed = (_STFT_REAL, _STFT_IMAG, _MEL, "bn0.weight", "fc1.weight", "fc_audioset.weight")
    missing = [key for key in needed if key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a PANNs CNN14 state dict (no {missing[0]!r})")
    blocks = sorted(int(m.group(1)) for k in state if (m := _CONV_BLOCK.fullmatch(k)))
    if not blocks or blocks != list(range(1, len(blocks) + 1)):
        raise CheckpointError(f"{path}: conv_block1..N weights missing or out of order")
    try:
        config = Cnn14Config(
            sample_rate=sample_rate,
            n_fft=int(state[_STFT_REAL].shape[-1]),
            hop_length=hop_length or cnn14_hop_length(sample_rate),
            n_mels=int(state["bn0.weight"].shape[0]),
            fmin=fmin,
            fmax=cnn14_fmax(sample_rate) if fmax is None else fmax,
            channels=tuple(int(state[f"conv_block{b}.conv1.weight"].shape[0]) for b in blocks),
            dense=int(state["fc1.weight"].shape[0]),
            output_activation="sigmoid",
        )
        return Cnn14(int(state["fc_audioset.weight"].shape[0]), config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build cnn14 from it ({exc})") from None


def _wavemel_state(
    path: Path, state: dict[str, torch.Tensor], model: Cnn14
) -> dict[str, torch.Tensor]:
    """Rename (and, for kernels, transpose) the PANNs tensors; refuse any mismatch."""
    table = panns_cnn14_key_map(len(model.blocks))
    unexpected = sorted(set(state) - set(table) - {_STFT_REAL, _STFT_IMAG, _MEL})
    # Checkpoints saved before PyTorch 0.4.1 have no BatchNorm step counters (unused in eval).
    absent = sorted(k for k in set(table) - set(state) if not k.endswith("num_batches_tracked"))
    if unexpected or absent:
        first = f"unexpected {unexpected[0]!r}" if unexpected else f"missing {absent[0]!r}"
        raise CheckpointError(f"{path}: not a CNN14 state dict ({first})")
    expected = model.state_dict()
    converted = {}
    for source, target in table.items():
        tensor = state.get(source, expected[target])
        if tensor.dim() == 4:
            # PANNs convolves (time, mel) images, wavemel (mel, time) ones.
            tensor = tensor.transpose(2, 3)
        if tensor.shape != expected[target].shape:
            raise CheckpointError(
                f"{path}: {source} has shape {tuple(state[source].shape)}, expected "
                f"{tuple(expected[target].shape)} for a CNN14 of these sizes"
            )
        converted[target] = tensor.to(expected[target].dtype).contiguous()
    return converted


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def import_panns_cnn14(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels_csv: str | os.PathLike | None = None,
    sample_rate: int = 32000,
    hop_length: int | None = None,
    fmin: float = 50.0,
    fmax: float | None = None,
    input_seconds: float = PANNS_INPUT_SECONDS,
    force: bool = False,
) -> Path:
    """Convert a PANNs CNN14 ``.pth`` into the wavemel run folder ``out``.

    Args:
        weights: The PANNs checkpoint.
        out: Run folder to create (``best.safetensors`` + ``best.json``).
        labels_csv: AudioSet's ``class_labels_indices.csv`` (index,mid,display_name); without
            it the classes are named ``"0"``, ``"1"``, ...
        sample_rate: The rate the model was trained at (the AudioSet release: 32000).
        hop_length: Its frame hop (default 10 ms of ``sample_rate``: 320 at 32 kHz).
        fmin: Its lowest mel frequency.
        fmax: Its highest mel frequency (default 14 kHz, or Nyquist below 28 kHz).
        input_seconds: Window length the run tags with.
        force: Replace an existing run folder.

    Returns:
        The run folder.

    Raises:
        CheckpointError: The file is not a CNN14 checkpoint or its front end does not match the
            settings.
        DataError: The labels CSV is unreadable or does not fit the model's class count.
        WavemelError: ``out`` is taken (see :class:`~wavemel.train.run_folder.RunFolder`).
    """
    weights, out = Path(weights), Path(out)
    if input_seconds <= 0:
        raise CheckpointError(f"--input-seconds must be positive, got {input_seconds:g}")
    if hop_length is not None and hop_length < 1:
        raise CheckpointError(
            f"--hop-length must be a positive number of samples, got {hop_length}"
        )
    with RunFolder.claim(out, force=force, resume=False) as run:
        model, meta = _convert(weights, labels_csv, sample_rate, hop_length, fmin, fmax)
        if input_seconds * sample_rate < model.min_samples:
            raise CheckpointError(
                f"--input-seconds {input_seconds:g} is shorter than cnn14's minimum "
                f"({model.min_samples} samples at {sample_rate} Hz)"
            )
        settings = {
            "format": "panns-cnn14",
            "weights": str(weights.resolve()),
            "labels": None if labels_csv is None else str(Path(labels_csv).resolve()),
            "sample_rate": sample_rate,
            "hop_length": model.config.hop_length,
            "fmin": fmin,
            "fmax": model.config.fmax,
            "input_seconds": input_seconds,
            "out": str(out),
        }
        # Everything is checked: only now may --force clear the folder's wavemel files.
        run.start(settings)
        save_checkpoint(out / "best", model, {**meta, "input_seconds": input_seconds})
        run.finish({"imported": "panns-cnn14"})
    return out


def _convert(
    weights: Path,
    labels_csv: str | os.PathLike | None,
    sample_rate: int,
    hop_length: int | None,
    fmin: float,
    fmax: float | None,
) -> tuple[Cnn14, dict]:
    """The converted model (eval mode) and its checkpoint metadata, less ``input_seconds``."""
    state = _load_pth(weights)
    model = _model_for(weights, state, sample_rate, hop_length, fmin, fmax)
    _check_frontend(weights, state, model)
    model.load_state_dict(_wavemel_state(weights, state, model), strict=True)
    if labels_csv is not None:
        labels = read_class_labels(labels_csv)
        if len(labels) != model.num_classes:
            raise DataError(
                f"{labels_csv}: {len(labels)} labels for a model with {model.num_classes} classes"
            )
    else:
        labels = [str(i) for i in range(model.num_classes)]
    meta = {
        "labels": labels,
        "sample_rate": sample_rate,
        "frontend": model.frontend.config(),
        "source": {
            "format": "panns-cnn14",
            "file": str(weights.resolve()),
            "sha256": _sha256(weights),
            "labels_csv": None if labels_csv is None else str(Path(labels_csv).resolve()),
        },
    }
    return model.eval(), meta
