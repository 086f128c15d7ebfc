"""Device and precision choice, shared by training and inference.

``"auto"`` means CUDA when available; inference's mixed precision runs on CUDA only and prefers
bfloat16, whose float32 range cannot overflow on loud input. (Training may also autocast to
bfloat16 on the CPU, ``TrainConfig.cpu_amp``, which is fast only on CPUs with bfloat16 units.)
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from wavemel.errors import WavemelError

__all__ = ["autocast", "cpu_has_bf16_units", "half_dtype", "model_device", "resolve_device"]

# CPU flags of native bfloat16 arithmetic: x86 AMX / AVX512-BF16, Arm's BF16 extension.
_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` -> this rank's GPU.

    Raises:
        WavemelError: The name is not a device, or names a CUDA device this machine lacks (a
            one-line message instead of torch's assertion deep inside ``Module.to``).
    """
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    except RuntimeError:
        raise WavemelError(
            f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise WavemelError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise WavemelError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) available"
            )
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def half_dtype() -> torch.dtype:
    """bfloat16 where the GPU supports it, else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (its ``flags`` / ``Features`` list it).

    Without such units oneDNN emulates bfloat16 and is slower than float32 (torch's own
    ``_is_mkldnn_bf16_supported`` is true for the emulation too, so it cannot tell). Where
    ``/proc/cpuinfo`` is missing (macOS, Windows) the answer is no.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(_BF16_FLAGS & set(value.split()))
    return False


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA when ``enabled``; a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=half_dtype())
    return contextlib.nullcontext()
