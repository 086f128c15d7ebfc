"""Self-describing checkpoints: safetensors weights + a JSON file, never pickle.

A checkpoint named ``STEM`` is two files:

- ``STEM.safetensors``: the model's ``state_dict`` (contiguous CPU tensors);
- ``STEM.json``: everything needed to rebuild and use the model without the training code's
  help: ``format_version``, ``model`` (registry name), ``model_config`` (``model.config_dict()``),
  ``num_classes``, plus what the caller passes in ``meta`` (``labels``, ``sample_rate``,
  ``input_seconds``, ``frontend``, ``train_config``, ``metrics``, ...).

Both files are written to a temporary name and renamed into place, so a crash mid-write never
leaves a half-written checkpoint under the real name. The JSON is renamed last: it is the
"commit" that makes the pair visible to :func:`load_checkpoint`.

:func:`save_tensors` / :func:`load_tensors` store any named tensors plus JSON the same way (the
trainer's resume state), and :func:`flatten_state` / :func:`unflatten_state` turn nested
structures such as ``optimizer.state_dict()`` or RNG states into that form and back.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from wavemel._device import resolve_device
from wavemel._io import atomic_write_bytes, json_default, read_json
from wavemel.errors import CheckpointError
from wavemel.models import model_from_config

__all__ = [
    "FORMAT_VERSION",
    "flatten_state",
    "load_checkpoint",
    "load_tensors",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_tensors",
    "unflatten_state",
]

#: Bumped when the JSON layout changes incompatibly; loaders refuse newer versions.
FORMAT_VERSION = 1

_REQUIRED_KEYS = ("model", "model_config", "num_classes")


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix("")
    return path


def _write_pair(stem: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:

    stem.parent.mkdir(parents=True, exist_ok=True)
    # Serialise the JSON first so that a non-JSON-able value fails before anything is written.
    text = json.dumps(meta, indent=2, default=json_default, allow_nan=True) + "\n"
    atomic_write_bytes(
        stem.with_name(stem.name + ".safetensors"),
        save(_plain_tensors(tensors)),
        error=CheckpointError,
    )
    atomic_write_bytes(
        stem.with_name(stem.name + ".json"), text.encode("utf-8"), error=CheckpointError
    )


def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no storage (safetensors refuses aliases)."""
    plain: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if tensor.numel() and key in seen:
            # Tied weights: store a copy under each name; loading assigns both names again.
            tensor = tensor.clone()
        seen.add(key)
        plain[name] = tensor
    return plain


def save_checkpoint(path_stem: str | os.PathLike, model: torch.nn.Module, meta: dict) -> Path:
    """Write ``path_stem.safetensors`` (weights) and ``path_stem.json`` (model + run metadata).

    Args:
        path_stem: Destination without suffix, e.g. ``RUN/best`` (a ``.json`` or
            ``.safetensors`` suffix is stripped). Parent folders are created.
        model: A wavemel model (needs ``.name``, ``.num_classes`` and ``.config_dict()``). A
            ``DistributedDataParallel`` or ``torch.compile`` wrapper is unwrapped.
        meta: JSON-able metadata stored alongside (labels, sample_rate, input_seconds, frontend,
            train_config, metrics, ...). Its ``model``/``model_config``/``num_classes`` keys are
            overwritten by the model's own.

    Returns:
        The path of the JSON file.
    """
    model = _unwrap(model)
    stem = _stem(path_stem)
    record = dict(meta)
    record.update(
        format_version=FORMAT_VERSION,
        model=model.name,
        model_config=model.config_dict(),
        num_classes=int(model.num_classes),
    )
    _write_pair(stem, model.state_dict(), record)
    return stem.with_name(stem.name + ".json")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Stem of the checkpoint a path names: a run folder (its ``best``), a file or a stem.

    Raises:
        CheckpointError: Nothing checkpoint-like exists there.
    """
    path = Path(path)
    if path.is_dir():
        best = path / "best.json"
        if not best.exists():
            raise CheckpointError(f"{path}: run folder has no best.json checkpoint")
        return path / "best"
    stem = _stem(path)
    json_path = stem.with_name(stem.name + ".json")
    if not json_path.exists():
        if path.exists() and path.suffix not in (".json", ".safetensors"):
            raise CheckpointError(f"{path}: not a checkpoint (expected a .json or .safetensors)")
        raise CheckpointError(f"{json_path}: checkpoint metadata file not found")
    return stem


def _read_json(json_path: Path) -> dict:
    return read_json(json_path, error=CheckpointError, what="checkpoint metadata")


def _read_tensors(weights_path: Path, device: str | torch.device = "cpu") -> dict:
    if not weights_path.exists():
        raise CheckpointError(f"{weights_path}: weights file not found")
    try:
        return load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{weights_path}: corrupt safetensors file ({reason})") from None


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from its checkpoint alone, in eval mode.

    Args:
        path: A run folder (loads ``best``), ``STEM.json``, ``STEM.safetensors`` or ``STEM``.
        device: Where to put the model; ``"auto"`` picks CUDA when available.

    Returns:
        ``(model, meta)``: the model with its weights loaded strictly, and the JSON metadata.

    Raises:
        CheckpointError: A file is missing or corrupt, a required key is missing, the model name
            is unknown, or the weights do not fit the model (names or shapes). The message names
            the file.
    """
    stem = resolve_checkpoint(path)
    json_path = stem.with_name(stem.name + ".json")
    weights_path = stem.with_name(stem.name + ".safetensors")
    meta = _read_json(json_path)
    missing = [key for key in _REQUIRED_KEYS if key not in meta]
    if missing:
        raise CheckpointError(f"{json_path}: missing key(s) {', '.join(missing)}")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{json_path}: format_version {version!r} is newer than this wavemel supports "
            f"({FORMAT_VERSION}); upgrade wavemel"
        )
    try:
        model = model_from_config(meta["model"], int(meta["num_classes"]), meta["model_config"])
    except (KeyError, ValueError, TypeError) as exc:
        reason = str(exc).strip("'\"") or type(exc).__name__
        raise CheckpointError(
            f"{json_path}: cannot build model {meta['model']!r} ({reason})"
        ) from None

    state = _read_tensors(weights_path)
    expected = model.state_dict()
    problems = []
    absent = [name for name in expected if name not in state]
    extra = [name for name in state if name not in expected]
    if absent:
        problems.append(f"missing {len(absent)} tensor(s) e.g. {absent[0]!r}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s) e.g. {extra[0]!r}")
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            problems.append(
                f"shape mismatch for {name!r}: file {tuple(tensor.shape)}, "
                f"model {tuple(expected[name].shape)}"
            )
            break
    if problems:
        raise CheckpointError(
            f"{weights_path}: weights do not fit model {meta['model']!r}: {'; '.join(problems)}"
        )
    model.load_state_dict(state, strict=True)
    model.to(resolve_device(device))
    model.eval()
    return model, meta


def save_tensors(
    path_stem: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict | None = None
) -> Path:
    """Atomically write named tensors (``STEM.safetensors``) and JSON metadata (``STEM.json``).

    Args:
        path_stem: Destination without suffix.
        tensors: Name -> tensor (any device; stored as contiguous CPU tensors).
        meta: JSON-able metadata, e.g. the skeleton from :func:`flatten_state`.

    Returns:
        The path of the JSON file.
    """
    stem = _stem(path_stem)
    record = {"format_version": FORMAT_VERSION, **(meta or {})}
    _write_pair(stem, tensors, record)
    return stem.with_name(stem.name + ".json")


def load_tensors(
    path_stem: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what :func:`save_tensors` wrote.

    Returns:
        ``(tensors, meta)``.

    Raises:
        CheckpointError: A file is missing or corrupt (the message names it).
    """
    stem = _stem(path_stem)
    meta = _read_json(stem.with_name(stem.name + ".json"))
    tensors = _read_tensors(stem.with_name(stem.name + ".safetensors"), device)
    return tensors, meta


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested structure into named tensors and a JSON-able skeleton.

    Handles dicts (any int/str/float/bool/None keys, e.g. ``optimizer.state_dict()``), lists,
    tuples, tensors, numpy arrays and scalars (e.g. ``np.random.get_state()``,
    ``random.getstate()``, ``torch.get_rng_state()``). :func:`unflatten_state` reverses it
    exactly, so ``save_tensors(stem, *flatten_state(obj))`` stores ``obj`` without pickle.

    Args:
        state: The structure to flatten.
        prefix: Name prefix for the tensors.

    Returns:
        ``(tensors, skeleton)``; the skeleton refers to tensors by name.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, name: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[name] = value
            return {"__tensor__": name}
        if isinstance(value, np.ndarray):
            # Stored as int64/float64/bool tensors so every numpy dtype survives safetensors.
            array = value
            if array.dtype.kind in "iu":
                array = array.astype(np.int64)
            elif array.dtype.kind == "f":
                array = array.astype(np.float64)
            elif array.dtype.kind != "b":
                raise TypeError(f"{name}: cannot store numpy dtype {value.dtype}")
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
            return {"__ndarray__": name, "dtype": value.dtype.str}
        if isinstance(value, dict):
            return {
                "__dict__": [
                    [walk(k, f"{name}.k{i}"), walk(v, f"{name}.{i}")]
                    for i, (k, v) in enumerate(value.items())
                ]
            }
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, f"{name}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{name}.{i}") for i, v in enumerate(value)]
        if isinstance(value, np.generic):
            return walk(value.item(), name)
        if isinstance(value, float) and not math.isfinite(value):
            return {"__float__": repr(value)}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{name or 'state'}: cannot store a {type(value).__name__}")

    skeleton = walk(state, prefix or "state")
    return tensors, skeleton


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of :func:`flatten_state`.

    Raises:
        CheckpointError: The skeleton names a tensor that ``tensors`` lacks.
    """

    def build(value: Any) -> Any:
        if isinstance(value, list):
            return [build(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__tensor__" in value or "__ndarray__" in value:
            name = value.get("__tensor__", value.get("__ndarray__"))
            if name not in tensors:
                raise CheckpointError(f"saved state refers to missing tensor {name!r}")
            if "__tensor__" in value:
                return tensors[name]
            return tensors[name].numpy().astype(np.dtype(value["dtype"]))
        if "__dict__" in value:
            return {build(k): build(v) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(build(v) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        raise CheckpointError(f"saved state has an unknown entry {sorted(value)}")

    return build(skeleton)
