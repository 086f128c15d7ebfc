"""Self-describing checkpoints: safetensors weights + a JSON file, never pickle.

A checkpoint named ``STEM`` is two files:

- ``STEM.safetensors``: the model's ``state_dict`` (contiguous CPU tensors);
- ``STEM.json``: everything needed to rebuild and use the model without the training code's
  help: ``format_version``, ``model`` (registry name), ``model_config`` (``model.config_dict()``),
  ``num_classes``, plus what the caller passes in ``meta`` (``labels``, ``sample_rate``,
  ``input_seconds``, ``frontend``, ``train_config``, ``label_prior``, ``metrics``, ...).

The two files are replaced as a unit. Each save draws a random ``pair_id`` and stores it in both
(in the safetensors header's metadata and in the JSON). Both are written in full under temporary
names (``.STEM.json.tmp-PID``), then the weights are renamed into place, then the JSON. A
process killed between the two renames leaves new weights beside the old JSON and the complete
new JSON under its temporary name: a loader that finds the pair ids disagree takes that pending
JSON (and renames it into place, finishing the commit), or, when there is none, refuses with
one line naming both files. The next save removes the temporary files of dead writers.

Everything read is validated before it is used: the metadata once, into a
:class:`CheckpointInfo` (types and ranges of the sample rate, input length, labels, prior...),
the model config by the model families before any layer is allocated, and the weights by name,
shape, dtype (never cast) and finiteness.

:func:`save_tensors` / :func:`load_tensors` store any named tensors plus JSON the same way (the
trainer's resume state), and :func:`flatten_state` / :func:`unflatten_state` turn nested
structures such as ``optimizer.state_dict()`` or RNG states into that form and back.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from wavemel._device import resolve_device
from wavemel._io import json_default, os_error_reason, read_json, require_regular_file, temp_name
from wavemel.augment import FILLS
from wavemel.errors import CheckpointError
from wavemel.models import model_from_config
from wavemel.models._layers import MAX_CLASSES, SAMPLE_RATE_RANGE

__all__ = [
    "FORMAT_VERSION",
    "CheckpointInfo",
    "checkpoint_info",
    "flatten_state",
    "load_checkpoint",
    "load_model",
    "load_tensors",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_tensors",
    "unflatten_state",
]

#: Bumped when the JSON layout changes incompatibly; loaders refuse newer versions.
FORMAT_VERSION = 1

#: Longest input window a checkpoint may ask for; the poster uses 1-3 s.
MAX_INPUT_SECONDS = 600.0
#: How the loader fills clips shorter than the input window.
EVAL_FILLS = FILLS  # how a short clip is filled for scoring (augment holds the list)

_REQUIRED_KEYS = ("model", "model_config", "num_classes")
# safetensors header of a file beyond its tensors' bytes: far below this.
_HEADER_ALLOWANCE = 1 << 20


# -- paths -------------------------------------------------------------------------------------


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix("")
    return path


def _paths(stem: Path) -> tuple[Path, Path]:
    """``(STEM.json, STEM.safetensors)``."""
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


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
    json_path, _ = _paths(stem)
    if not json_path.exists():
        if path.exists() and path.suffix not in (".json", ".safetensors"):
            raise CheckpointError(f"{path}: not a checkpoint (expected a .json or .safetensors)")
        raise CheckpointError(f"{json_path}: checkpoint metadata file not found")
    return stem


# -- writing -----------------------------------------------------------------------------------


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


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable; some file systems cannot open a folder, which is harmless."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # PermissionError: it exists but belongs to someone else
    return True


def _temp_files(stem: Path) -> list[tuple[Path, int | None]]:
    """The temporary files of saves of ``stem`` and the process id in each name."""
    found = []
    for path in _paths(stem):
        for temp in path.parent.glob(f".{path.name}.tmp-*"):
            pid = temp.name.rsplit("-", 1)[-1]
            found.append((temp, int(pid) if pid.isdigit() else None))
    return found


def _clean_interrupted_saves(stem: Path) -> None:
    """Finish a commit a killed writer left half done, then remove dead writers' temp files."""
    json_path, weights_path = _paths(stem)
    if json_path.exists() and weights_path.exists():
        try:
            _read_pair_meta(json_path, weights_path)
        except CheckpointError:
            pass  # a broken pair is replaced by this save anyway
    for temp, pid in _temp_files(stem):
        if pid != os.getpid() and (pid is None or not _pid_alive(pid)):
            try:
                temp.unlink()
            except OSError:
                pass


def _write_pair(stem: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    pair_id = secrets.token_hex(8)
    # Serialise the JSON first so that a non-JSON-able value fails before anything is written.
    text = json.dumps({**meta, "pair_id": pair_id}, indent=2, default=json_default) + "\n"
    weights = save(_plain_tensors(tensors), metadata={"pair_id": pair_id})
    _clean_interrupted_saves(stem)
    json_path, weights_path = _paths(stem)
    json_temp, weights_temp = temp_name(json_path), temp_name(weights_path)
    weights_in_place = False
    target = weights_path
    try:
        _write_synced(weights_temp, weights)
        target = json_path
        _write_synced(json_temp, text.encode("utf-8"))
        os.replace(weights_temp, weights_path)
        weights_in_place = True
        try:
            os.replace(json_temp, json_path)
        except FileNotFoundError:
            # A reader finished this commit for us (see _read_pair_meta); fine if it is ours.
            if _json_pair_id(json_path) != pair_id:
                raise
        _fsync_folder(stem.parent)
    except OSError as exc:
        raise CheckpointError(f"{target}: cannot write ({os_error_reason(exc)})") from None
    finally:
        # Once the weights are in place the pending JSON is what completes the pair: keep it.
        for temp in (weights_temp,) if weights_in_place else (weights_temp, json_temp):
            if temp.exists():
                temp.unlink()


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
    return _paths(stem)[0]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


# -- reading the pair --------------------------------------------------------------------------


def _read_json(json_path: Path) -> dict:
    return read_json(json_path, error=CheckpointError, what="checkpoint metadata")


def _json_pair_id(json_path: Path) -> Any:
    try:
        return _read_json(json_path).get("pair_id")
    except CheckpointError:
        return None


def _open_weights(weights_path: Path, max_bytes: int | None = None):
    """``safe_open`` of a regular weights file no larger than ``max_bytes``."""
    if not weights_path.exists() and not weights_path.is_symlink():
        raise CheckpointError(f"{weights_path}: weights file not found")
    info = require_regular_file(weights_path, error=CheckpointError, what="weights file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise CheckpointError(
            f"{weights_path}: weights file is {info.st_size} bytes, far more than the model's "
            f"{max_bytes - _HEADER_ALLOWANCE} bytes of weights"
        )
    try:
        return safe_open(str(weights_path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{weights_path}: corrupt safetensors file ({reason})") from None


def _weights_pair_id(weights_path: Path) -> Any:
    with _open_weights(weights_path) as handle:
        return (handle.metadata() or {}).get("pair_id")


def _read_weights(
    weights_path: Path, device: str | torch.device = "cpu", max_bytes: int | None = None
) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(pair_id, tensors)`` from one opening of the file, so both belong to the same save."""
    try:
        with _open_weights(weights_path, max_bytes) as handle:
            pair_id = (handle.metadata() or {}).get("pair_id")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{weights_path}: corrupt safetensors file ({reason})") from None
    if str(device) != "cpu":
        tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    return pair_id, tensors


def _pending_meta(json_path: Path, pair_id: Any) -> tuple[Path, dict] | None:
    """The complete temporary JSON of the save whose weights carry ``pair_id``, if any."""
    if pair_id is None:
        return None
    for temp in sorted(json_path.parent.glob(f".{json_path.name}.tmp-*")):
        try:
            meta = _read_json(temp)
        except CheckpointError:
            continue  # a writer still writing it, or garbage
        if meta.get("pair_id") == pair_id:
            return temp, meta
    return None


def _mismatch(json_path: Path, weights_path: Path) -> CheckpointError:
    return CheckpointError(
        f"{json_path} and {weights_path} come from different saves (an interrupted write?); "
        "restore both files from one save, or train again"
    )


def _read_pair_meta(json_path: Path, weights_path: Path) -> dict:
    """The JSON metadata that belongs to the weights file now in place.

    Raises:
        CheckpointError: A file is missing or corrupt, or the two come from different saves
            and no pending JSON completes the newer one.
    """
    meta = _read_json(json_path)
    weights_id = _weights_pair_id(weights_path)
    if meta.get("pair_id") == weights_id:
        return meta
    pending = _pending_meta(json_path, weights_id)
    if pending is not None:
        temp, meta = pending
        try:
            os.replace(temp, json_path)  # finish the commit the writer did not
        except FileNotFoundError:
            pass  # the writer (or another reader) just finished it
        except OSError:
            pass  # read-only folder: use the pending JSON without committing it
        return meta
    # A writer may have replaced both files between the two reads above.
    meta = _read_json(json_path)
    if meta.get("pair_id") == _weights_pair_id(weights_path):
        return meta
    raise _mismatch(json_path, weights_path)


def _load_pair(
    stem: Path, prepare: Callable[[dict], tuple[Any, int | None]], device: str | torch.device
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Metadata (turned into ``prepare(meta)[0]``) and tensors of one and the same save.

    ``prepare`` validates the metadata and returns what the caller needs plus the largest
    weights file that can fit it. A writer replacing the pair between reading the JSON and the
    weights is caught by the pair id and answered by reading again.
    """
    json_path, weights_path = _paths(stem)
    for _ in range(2):
        meta = _read_pair_meta(json_path, weights_path)
        prepared, max_bytes = prepare(meta)
        pair_id, tensors = _read_weights(weights_path, device, max_bytes)
        if pair_id == meta.get("pair_id"):
            return prepared, tensors
    raise _mismatch(json_path, weights_path)


# -- validating the metadata -------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint's metadata, validated once (see :func:`checkpoint_info`).

    Attributes:
        json_path: The metadata file (named in every error about it).
        model: Registered model name.
        model_config: The model's ``config_dict()`` (validated when the model is built).
        num_classes: Number of outputs, in ``[1, 100000]``.
        labels: Class names (distinct, non-empty, one per class), or ``None`` if not recorded.
        sample_rate: Input sample rate in Hz, in ``[1000, 384000]``, or ``None``.
        input_seconds: Input window length, finite in ``(0, 600]``, or ``None``.
        eval_fill: How short clips are filled ("replicate" or "pad"), or ``None``.
        label_prior: Training label frequencies (non-negative, positive sum, one per class),
            or ``None``.
        meta: The whole JSON object, for fields this class does not interpret (metrics, ...).
    """

    json_path: Path
    model: str
    model_config: dict[str, Any]
    num_classes: int
    labels: list[str] | None = None
    sample_rate: int | None = None
    input_seconds: float | None = None
    eval_fill: str | None = None
    label_prior: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def require(self, *names: str) -> None:
        """Raise a :class:`CheckpointError` naming the file if one of ``names`` is missing."""
        for name in names:
            if getattr(self, name) is None:
                raise CheckpointError(f"{self.json_path}: checkpoint metadata lacks {name!r}")

    @property
    def input_samples(self) -> int:
        """The input window in samples (needs ``sample_rate`` and ``input_seconds``)."""
        self.require("sample_rate", "input_seconds")
        return int(round(self.input_seconds * self.sample_rate))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def checkpoint_info(meta: dict[str, Any], json_path: str | os.PathLike) -> CheckpointInfo:
    """Validate a checkpoint's JSON metadata; optional fields are checked when present.

    Raises:
        CheckpointError: One line ``JSON_PATH: field 'X' must be ..., got ...`` (or a missing
            key, or a newer format).
    """
    json_path = Path(json_path)

    def bad(name: str, wanted: str) -> CheckpointError:
        return CheckpointError(
            f"{json_path}: field {name!r} must be {wanted}, got {_shown(meta[name])}"
        )

    missing = [key for key in _REQUIRED_KEYS if key not in meta]
    if missing:
        raise CheckpointError(f"{json_path}: missing key(s) {', '.join(missing)}")
    version = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise bad("format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{json_path}: format_version {version!r} is newer than this wavemel supports "
            f"({FORMAT_VERSION}); upgrade wavemel"
        )
    if not isinstance(meta["model"], str):
        raise bad("model", "a model name (a string)")
    if not isinstance(meta["model_config"], dict):
        raise bad("model_config", "a JSON object")
    num_classes = meta["num_classes"]
    if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
        raise bad("num_classes", f"an integer in [1, {MAX_CLASSES}]")

    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise bad("labels", "a list of non-empty strings")
        if len(set(labels)) != len(labels):
            raise bad("labels", "a list of distinct labels")
        if len(labels) != num_classes:
            raise CheckpointError(
                f"{json_path}: {len(labels)} labels for num_classes {num_classes}"
            )
    sample_rate = meta.get("sample_rate")
    low, high = SAMPLE_RATE_RANGE
    if sample_rate is not None and (not _is_int(sample_rate) or not low <= sample_rate <= high):
        raise bad("sample_rate", f"an integer number of Hz in [{low}, {high}]")
    seconds = meta.get("input_seconds")
    if seconds is not None and (not _is_number(seconds) or not 0 < seconds <= MAX_INPUT_SECONDS):
        raise bad("input_seconds", f"a number of seconds in (0, {MAX_INPUT_SECONDS:g}]")
    eval_fill = meta.get("eval_fill")
    if eval_fill is not None and eval_fill not in EVAL_FILLS:
        raise bad("eval_fill", " or ".join(repr(fill) for fill in EVAL_FILLS))
    prior = meta.get("label_prior")
    if prior is not None:
        if not isinstance(prior, list) or not all(_is_number(p) and p >= 0 for p in prior):
            raise bad("label_prior", "a list of non-negative finite numbers")
        if len(prior) != num_classes or sum(prior) <= 0:
            raise bad("label_prior", f"{num_classes} weights (one per class) with a positive sum")
    for name in ("train_config", "frontend"):
        if meta.get(name) is not None and not isinstance(meta[name], dict):
            raise bad(name, "a JSON object")
    return CheckpointInfo(
        json_path=json_path,
        model=meta["model"],
        model_config=meta["model_config"],
        num_classes=num_classes,
        labels=labels,
        sample_rate=sample_rate,
        input_seconds=None if seconds is None else float(seconds),
        eval_fill=eval_fill,
        label_prior=prior,
        meta=meta,
    )


# -- loading -----------------------------------------------------------------------------------


def _build_model(info: CheckpointInfo) -> torch.nn.Module:
    try:
        model = model_from_config(info.model, info.num_classes, info.model_config)
    except (KeyError, ValueError, TypeError, OverflowError, RuntimeError) as exc:
        reason = (str(exc).splitlines() or [""])[0].strip("'\"") or type(exc).__name__
        raise CheckpointError(
            f"{info.json_path}: cannot build model {info.model!r} ({reason})"
        ) from None
    if info.sample_rate is not None and info.sample_rate != model.sample_rate:
        raise CheckpointError(
            f"{info.json_path}: sample_rate {info.sample_rate} differs from the model config's "
            f"{model.sample_rate}"
        )
    if info.input_seconds is not None and info.input_samples < model.min_samples:
        raise CheckpointError(
            f"{info.json_path}: input_seconds {info.input_seconds:g} is shorter than the "
            f"{model.min_samples} samples the model needs"
        )
    return model


def _check_weights(
    weights_path: Path, state: dict[str, torch.Tensor], model: torch.nn.Module, name: str
) -> None:
    """Names, shapes and dtypes as the model's (nothing is cast), finite values."""
    expected = model.state_dict()
    problems = []
    absent = [key for key in expected if key not in state]
    extra = [key for key in state if key not in expected]
    if absent:
        problems.append(f"missing {len(absent)} tensor(s) e.g. {absent[0]!r}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s) e.g. {extra[0]!r}")
    for key, tensor in state.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            problems.append(
                f"shape mismatch for {key!r}: file {tuple(tensor.shape)}, "
                f"model {tuple(expected[key].shape)}"
            )
            break
    if problems:
        raise CheckpointError(
            f"{weights_path}: weights do not fit model {name!r}: {'; '.join(problems)}"
        )
    for key, tensor in state.items():
        if tensor.dtype != expected[key].dtype:
            raise CheckpointError(
                f"{weights_path}: tensor {key!r} is {tensor.dtype}, the model's is "
                f"{expected[key].dtype} (weights are never cast)"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{weights_path}: tensor {key!r} holds NaN or infinite values")
        if key.endswith("running_var") and (tensor < 0).any():
            raise CheckpointError(f"{weights_path}: tensor {key!r} holds negative variances")


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Rebuild a model from its checkpoint alone, in eval mode, with its validated metadata.

    Args:
        path: A run folder (loads ``best``), ``STEM.json``, ``STEM.safetensors`` or ``STEM``.
        device: Where to put the model; ``"auto"`` picks CUDA when available.

    Returns:
        ``(model, info)``: the model with its weights loaded strictly, and the metadata.

    Raises:
        CheckpointError: A file is missing, corrupt or not a regular file; a metadata field
            has the wrong type or is out of range; the model config is invalid or too large;
            the weights do not fit the model (names, shapes, dtypes) or are not finite; or the
            two files come from different saves. The message names the file.
    """
    stem = resolve_checkpoint(path)
    json_path, weights_path = _paths(stem)

    def prepare(meta: dict) -> tuple[tuple[torch.nn.Module, CheckpointInfo], int]:
        info = checkpoint_info(meta, json_path)
        model = _build_model(info)
        weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return (model, info), weight_bytes + _HEADER_ALLOWANCE

    (model, info), state = _load_pair(stem, prepare, "cpu")
    _check_weights(weights_path, state, model, info.model)
    model.load_state_dict(state, strict=True)
    model.to(resolve_device(device))
    model.eval()
    return model, info


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """:func:`load_model`, answering the metadata as the JSON dict.

    Returns:
        ``(model, meta)``.
    """
    model, info = load_model(path, device)
    return model, info.meta


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
    return _paths(stem)[0]


def load_tensors(
    path_stem: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what :func:`save_tensors` wrote (both files of the same save).

    Returns:
        ``(tensors, meta)``.

    Raises:
        CheckpointError: A file is missing or corrupt, or the two come from different saves
            (the message names the files).
    """
    meta, tensors = _load_pair(_stem(path_stem), lambda meta: (meta, None), device)
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
