"""Run an exported ONNX model with onnxruntime behind the model contract the tagger uses.

``wavemel export`` (:mod:`wavemel.export`) writes the whole model, log-mel front end included, as
one ONNX graph ``waveform (B, T) float32 -> logits (B, C)`` with a dynamic batch and number of
samples, and stores what inference needs in the file's ``metadata_props`` (every value a JSON
string, keys in :data:`METADATA_KEYS`). This module is the reading side: :func:`load_onnx` opens
such a file with onnxruntime and returns an :class:`OnnxModel`, a parameter-free ``nn.Module``
whose ``forward`` runs the session on CPU numpy arrays, so :class:`wavemel.infer.Tagger` windows,
batches and aggregates exactly as it does for a PyTorch checkpoint.

onnxruntime is an optional dependency (``pip install 'wavemel[onnx]'``); without it the loaders
raise one :class:`~wavemel.errors.WavemelError` line saying how to install it.
"""

from __future__ import annotations

import importlib
import json
import os
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from wavemel._io import require_regular_file
from wavemel.augment import FILLS
from wavemel.errors import CheckpointError, WavemelError

__all__ = [
    "METADATA_FORMAT",
    "METADATA_KEYS",
    "OnnxModel",
    "load_onnx",
    "make_session",
    "read_metadata",
    "require_onnx_module",
]

#: Version of the metadata layout; readers refuse newer ones.
METADATA_FORMAT = 1

#: Metadata every wavemel ONNX file carries (JSON strings); ``prior`` may be ``null``.
METADATA_KEYS = (
    "wavemel_format",
    "model",
    "num_classes",
    "labels",
    "sample_rate",
    "input_seconds",
    "input_samples",
    "min_samples",
    "fill",
    "prior",
    "frontend",
)

_INSTALL_HINT = "install the ONNX extra: pip install 'wavemel[onnx]'"


def require_onnx_module(name: str, purpose: str) -> ModuleType:
    """Import an optional ONNX package or raise a one-line error saying how to get it.

    Args:
        name: Module to import (``"onnxruntime"``, ``"onnx"``, ``"onnxscript"``).
        purpose: What it is needed for, e.g. ``"running .onnx models"``.

    Raises:
        WavemelError: The module cannot be imported.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise WavemelError(
            f"{name} is needed for {purpose} but is not installed; {_INSTALL_HINT}"
        ) from None


class OnnxModel(nn.Module):
    """An onnxruntime session with the attributes wavemel's inference reads from a model.

    The session always runs on the CPU; inputs on another device are copied to it and the
    logits come back as a CPU float32 tensor.

    Attributes:
        session: The ``onnxruntime.InferenceSession``.
        name: Registry name of the exported model (``"cnn-spec"``, ...).
        num_classes: Number of logits.
        sample_rate: Rate the model expects, in Hz.
        min_samples: Fewest samples one input row may have.
    """

    def __init__(
        self, session: Any, name: str, num_classes: int, sample_rate: int, min_samples: int
    ) -> None:
        super().__init__()
        self.session = session
        self.name = name
        self.num_classes = int(num_classes)
        self.sample_rate = int(sample_rate)
        self.min_samples = int(min_samples)
        self._input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, T)`` waveform (``T >= min_samples``) -> ``(B, num_classes)`` float32."""
        if x.dim() != 2:
            raise ValueError(f"{self.name} expects a (batch, samples) waveform, got {x.shape}")
        if x.shape[-1] < self.min_samples:
            raise ValueError(
                f"{self.name} needs at least {self.min_samples} samples, got {x.shape[-1]}"
            )
        waveform = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(None, {self._input_name: waveform})
        return torch.from_numpy(logits)


def read_metadata(props: dict[str, str], path: str | os.PathLike) -> dict[str, Any]:
    """Decode a wavemel ONNX file's ``metadata_props`` (every value a JSON string).

    Args:
        props: The raw key -> string map (onnxruntime's ``custom_metadata_map``).
        path: The file, for messages.

    Returns:
        Every key decoded from JSON.

    Raises:
        CheckpointError: A wavemel key is missing or not JSON, or the format is newer.
    """
    missing = [key for key in METADATA_KEYS if key not in props]
    if missing:
        raise CheckpointError(
            f"{path}: ONNX file lacks wavemel metadata {missing[0]!r} "
            "(make .onnx files for wavemel with `wavemel export`)"
        )
    meta = {}
    for key, text in props.items():
        try:
            meta[key] = json.loads(text)
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: ONNX metadata {key!r} is not valid JSON") from None
    version = meta["wavemel_format"]
    if not isinstance(version, int) or version > METADATA_FORMAT:
        raise CheckpointError(
            f"{path}: ONNX metadata format {version!r} is newer than this wavemel supports "
            f"({METADATA_FORMAT}); upgrade wavemel"
        )
    problem = _metadata_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: ONNX metadata {problem}")
    return meta


def _metadata_problem(meta: dict[str, Any]) -> str | None:
    """What is inconsistent in decoded metadata (a hand-edited file), or ``None``."""
    sizes = ("num_classes", "sample_rate", "input_samples", "min_samples")
    for key in sizes:
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
            return f"{key!r} must be a positive integer, got {meta[key]!r}"
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        return "'labels' must be a list of strings"
    if len(labels) != meta["num_classes"]:
        return f"has {len(labels)} labels for {meta['num_classes']} classes"
    if meta["input_samples"] < meta["min_samples"]:
        return f"'input_samples' {meta['input_samples']} is under 'min_samples'"
    if meta["fill"] not in FILLS:
        return f"'fill' must be 'replicate' or 'pad', got {meta['fill']!r}"
    prior = meta["prior"]
    if prior is not None and (not isinstance(prior, list) or len(prior) != len(labels)):
        return "'prior' must be null or one number per label"
    return None


def make_session(model: str | bytes, threads: int | None = None, name: Any = "ONNX model") -> Any:
    """An onnxruntime CPU session for a model file path or serialized model bytes.

    Args:
        model: Path of an ``.onnx`` file, or its bytes.
        threads: Intra-op threads (default ``torch.get_num_threads()``, so both backends use the
            same number of cores).
        name: What to call the model in messages (usually its path).

    Raises:
        WavemelError: onnxruntime is not installed.
        CheckpointError: onnxruntime cannot load the model.
    """
    ort = require_onnx_module("onnxruntime", "running .onnx models")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    # Idle workers sleep instead of spinning, as torch's do under OMP_WAIT_POLICY=PASSIVE: on
    # shared cores a spinning pool starves every other process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own, unrelated exception types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{name}: not a loadable ONNX model ({reason})") from None


def load_onnx(
    path: str | os.PathLike, threads: int | None = None
) -> tuple[OnnxModel, dict[str, Any]]:
    """Open a file written by ``wavemel export`` with onnxruntime on the CPU.

    Args:
        path: The ``.onnx`` file.
        threads: onnxruntime intra-op threads (default ``torch.get_num_threads()``).

    Returns:
        ``(model, meta)``: the session wrapped as an :class:`OnnxModel`, and the decoded metadata.

    Raises:
        WavemelError: onnxruntime is not installed.
        CheckpointError: The file is missing, not a regular file, not an ONNX model, or lacks
            wavemel's metadata. The message names the file.
    """
    require_regular_file(path, error=CheckpointError, what="ONNX model file")
    session = make_session(os.fspath(path), threads=threads, name=path)
    meta = read_metadata(dict(session.get_modelmeta().custom_metadata_map), path)
    model = OnnxModel(
        session,
        name=str(meta["model"]),
        num_classes=int(meta["num_classes"]),
        sample_rate=int(meta["sample_rate"]),
        min_samples=int(meta["min_samples"]),
    )
    return model, meta
