"""Export a checkpoint as one ONNX graph, waveform in and logits out, log-mel front end inside.

The graph has one input ``waveform`` ``(batch, samples)`` float32 at the model's sample rate and
one output ``logits`` ``(batch, classes)``; both the batch and the number of samples are dynamic
(any ``samples >= min_samples``). cnn-spec's STFT becomes a strided ``Conv`` with a fixed
windowed-DFT basis (:func:`wavemel.frontend.dft_basis`) followed by the power, the mel matmul and
the log, so nothing outside the graph has to reproduce the front end. The file's
``metadata_props`` hold, as JSON strings, what inference needs
(:data:`wavemel.onnx_backend.METADATA_KEYS`: labels, sample rate, input length, short-clip fill,
empty-clip prior, front-end settings) plus the model config and the source checkpoint.

Before anything is written the graph is run with onnxruntime on a batch of a different size and
length than the one it was traced with (noise, a quiet row and a silent row) and its logits are
compared with PyTorch's; a difference above :data:`PARITY_RTOL` (relative to the largest logit)
is an :class:`ExportError`, never a silently wrong file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wavemel._io import atomic_write_bytes, json_default
from wavemel.errors import WavemelError
from wavemel.frontend import LogMel
from wavemel.infer import Tagger
from wavemel.onnx_backend import METADATA_FORMAT, make_session, require_onnx_module

__all__ = [
    "OPSET",
    "PARITY_RTOL",
    "ExportError",
    "ExportResult",
    "export_onnx",
    "onnx_metadata",
    "waveform_graph",
]

#: ONNX opset of exported graphs: the oldest torch's torch.export-based exporter writes, so the
#: one the most onnxruntime versions run (1.14 and later).
OPSET = 18
#: Largest accepted ``max |onnx - torch| / max |torch|`` over the check batch (float32 graphs
#: agree to about 1e-6; the margin covers other CPUs' kernels).
PARITY_RTOL = 1e-4


class ExportError(WavemelError):
    """A checkpoint cannot be exported, or the exported graph disagrees with PyTorch."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: The ``.onnx`` file.
        model: Registry name of the exported model.
        opset: ONNX opset of the graph.
        size_bytes: Size of the file.
        max_rel_diff: Parity check result, ``max |onnx - torch| / max |torch|``.
    """

    path: Path
    model: str
    opset: int
    size_bytes: int
    max_rel_diff: float


def export_onnx(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    force: bool = False,
    opset: int = OPSET,
) -> ExportResult:
    """Write a checkpoint's model as an ONNX file with wavemel's metadata.

    Args:
        checkpoint: A run folder (its best checkpoint), ``STEM.json``, ``STEM.safetensors``.
        output: Destination; must end in ``.onnx`` (``wavemel predict`` recognises the suffix).
        force: Replace an existing ``output``.
        opset: ONNX opset (18 or later: the oldest torch's exporter writes).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: ``output`` exists (without ``force``), is not a ``.onnx`` path in an
            existing folder, the model does not export, or onnxruntime disagrees with PyTorch.
        WavemelError: onnx, onnxscript or onnxruntime is not installed.
        CheckpointError: The checkpoint is missing or corrupt.
    """
    output = Path(output)
    _check_output(output, force)
    onnx = require_onnx_module("onnx", "wavemel export")
    require_onnx_module("onnxscript", "wavemel export")
    require_onnx_module("onnxruntime", "wavemel export (it checks the exported graph)")

    tagger = Tagger.from_checkpoint(checkpoint, device="cpu")
    model = tagger.model
    proto = waveform_graph(
        model, tagger.input_samples, model.min_samples, opset=opset, source=checkpoint
    )
    max_rel_diff = _check_parity(model, proto.SerializeToString(), tagger.input_samples)
    if not max_rel_diff <= PARITY_RTOL:
        raise ExportError(
            f"{checkpoint}: onnxruntime logits differ from PyTorch's by {max_rel_diff:.2e} "
            f"relative (limit {PARITY_RTOL:g}); nothing written"
        )
    props = onnx_metadata(tagger, source=checkpoint)
    props["parity_max_rel_diff"] = json.dumps(max_rel_diff)
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (
        f"wavemel {model.name}: waveform (batch, samples) float32 at {tagger.sample_rate} Hz "
        f"-> logits (batch, {model.num_classes}); labels and settings in metadata_props"
    )
    data = proto.SerializeToString()
    atomic_write_bytes(output, data, error=ExportError)
    return ExportResult(output, model.name, opset, len(data), max_rel_diff)


def _check_output(output: Path, force: bool) -> None:
    """Refuse destinations that would surprise the user, before the (slow) export starts."""
    if output.suffix != ".onnx":
        raise ExportError(f"{output}: the output name must end in .onnx")
    if output.is_dir():
        raise ExportError(f"{output}: is a folder, expected an .onnx file name")
    if output.exists() and not force:
        raise ExportError(f"{output}: already exists (use --force to overwrite it)")
    if not output.parent.is_dir():
        raise ExportError(f"{output.parent}: no such folder for the output")


def onnx_metadata(tagger: Tagger, source: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an exported tagger's model: every value a JSON string.

    Args:
        tagger: A tagger built from the checkpoint being exported (its settings are resolved
            exactly as for PyTorch inference: fill, prior, input length).
        source: The checkpoint, recorded for provenance.

    Returns:
        Key -> JSON text, covering :data:`wavemel.onnx_backend.METADATA_KEYS`.
    """
    model = tagger.model
    # The model's own front end is what the graph computes (a cnn-comb checkpoint stores none).
    frontend = next((m.config() for m in model.modules() if isinstance(m, LogMel)), None)
    values: dict[str, Any] = {
        "wavemel_format": METADATA_FORMAT,
        "model": model.name,
        "model_config": model.config_dict(),
        "num_classes": int(model.num_classes),
        "labels": tagger.labels,
        "sample_rate": tagger.sample_rate,
        "input_seconds": tagger.input_samples / tagger.sample_rate,
        "input_samples": tagger.input_samples,
        "min_samples": int(model.min_samples),
        "fill": tagger.fill,
        "prior": tagger.prior,
        "frontend": frontend,
        "source_checkpoint": str(source),
    }
    return {key: json.dumps(value, default=json_default) for key, value in values.items()}


class _MaxPool1dAs2d(nn.Module):
    """``nn.MaxPool1d`` computed as a 2-D pool over a unit axis (the same numbers).

    torch.export specialises the input length of ``max_pool1d`` to the traced example (torch
    2.13), which would freeze cnn-audio's number of samples; ``max_pool2d`` keeps it symbolic.
    """

    def __init__(self, pool: nn.MaxPool1d) -> None:
        super().__init__()
        self.kernel_size = _single(pool.kernel_size)
        self.stride = _single(pool.stride)
        self.padding = _single(pool.padding)
        self.dilation = _single(pool.dilation)
        self.ceil_mode = pool.ceil_mode
        if pool.return_indices:
            raise ValueError("cannot export a MaxPool1d that returns indices")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T) -> (B, C, T')`` exactly as the replaced ``MaxPool1d``."""
        pooled = F.max_pool2d(
            x.unsqueeze(2),
            kernel_size=(1, self.kernel_size),
            stride=(1, self.stride),
            padding=(0, self.padding),
            dilation=(1, self.dilation),
            ceil_mode=self.ceil_mode,
        )
        return pooled.squeeze(2)


def _single(value: int | tuple[int, ...]) -> int:
    return int(value[0] if isinstance(value, tuple) else value)


def _exportable_copy(model: nn.Module, dft: str = "conv") -> nn.Module:
    """A deep copy of ``model`` in eval mode, rewritten where the export needs it.

    Every ``MaxPool1d`` becomes a :class:`_MaxPool1dAs2d` (dynamic length), and every
    :class:`~wavemel.frontend.LogMel` computes its STFT with ``dft`` (:meth:`LogMel.set_dft`).
    ``"conv"`` exports as a plain ``Conv``, which any ONNX runtime implements (fewer implement
    ``STFT``); onnxruntime 1.32 ran it about as fast as its ``STFT`` operator (1.1-1.7x faster at
    batch 64, no consistent winner at batch 1; BENCHMARKS.md). The caller's model is left
    untouched; the outputs agree to float32 rounding.
    """
    clone = copy.deepcopy(model).eval()
    for parent in clone.modules():
        if isinstance(parent, LogMel):
            parent.set_dft(dft)
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool1d):
                setattr(parent, name, _MaxPool1dAs2d(child))
    return clone


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings and log lines (e.g. about torchvision being absent)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def waveform_graph(
    module: nn.Module,
    input_samples: int,
    min_samples: int,
    *,
    opset: int = OPSET,
    output_name: str = "logits",
    source: Any = None,
    dft: str = "conv",
) -> Any:
    """Trace a waveform module into ONNX with a dynamic batch and number of samples.

    Args:
        module: Maps ``(B, T)`` float32 waveforms to one tensor whose first axis is ``B`` (a
            wavemel model, or e.g. a bare :class:`~wavemel.frontend.LogMel`).
        input_samples: Length of the traced example (the training input length).
        min_samples: Fewest samples the graph must accept.
        opset: ONNX opset.
        output_name: Name of the graph's output.
        source: What to name in an error message (default the module's name).
        dft: How log-mel front ends compute the STFT in the graph: ``"conv"`` (a DFT
            convolution) or ``"fft"`` (ONNX's ``STFT`` operator, opset 17 and later).

    Returns:
        The ``onnx.ModelProto``, input ``waveform``, without wavemel's metadata.

    Raises:
        ExportError: torch.export or the ONNX translation fails (first line of the cause).
    """
    # A batch of 2: torch.export specialises an axis traced with size 1.
    example = torch.zeros(2, input_samples)
    dynamic = {
        0: torch.export.Dim("batch", min=1),
        1: torch.export.Dim("samples", min=int(min_samples)),
    }
    name = getattr(module, "name", type(module).__name__)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                _exportable_copy(module, dft),
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["waveform"],
                output_names=[output_name],
                dynamic_shapes=(dynamic,),
                verbose=False,
            )
    except Exception as exc:  # the exporter's failures come in many types
        raise ExportError(
            f"{source or name}: cannot export {name} to ONNX ({_root_reason(exc)})"
        ) from None
    return program.model_proto


def _root_reason(exc: BaseException) -> str:
    """First line of the innermost cause: the exporter wraps the real reason in advice text."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
    reason = next((line for line in lines if line), type(exc).__name__)
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _check_batch(input_samples: int, min_samples: int) -> list[np.ndarray]:
    """Check inputs unlike the traced example: other batch sizes and lengths, quiet and silent rows.

    A silent row exercises cnn-audio's standard-deviation floor and the log-mel's ``amin``.
    """
    rng = np.random.default_rng(0)
    length = input_samples + 333
    noisy = 0.1 * rng.standard_normal((3, length))
    noisy[1] *= 1e-3
    noisy[2] = 0.0
    shortest = 0.1 * rng.standard_normal((1, min_samples))
    return [noisy.astype(np.float32), shortest.astype(np.float32)]


def _check_parity(model: nn.Module, onnx_bytes: bytes, input_samples: int) -> float:
    """``max |onnx - torch| / max |torch|`` over :func:`_check_batch`'s inputs."""
    session = make_session(onnx_bytes, name="exported graph")
    worst = 0.0
    for batch in _check_batch(input_samples, int(model.min_samples)):
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        (actual,) = session.run(None, {"waveform": batch})
        if actual.shape != expected.shape:
            return math.inf
        scale = max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)
        diff = float(np.abs(actual - expected).max()) / scale
        if not math.isfinite(diff):  # NaN would pass every comparison below
            return math.inf
        worst = max(worst, diff)
    return worst
