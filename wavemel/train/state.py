"""Resume state: everything a run needs to continue after the last finished epoch, without pickle.

``RUN/state/state.safetensors`` holds the tensors (model weights, optimizer moments, torch RNG
states and, when the run keeps one, the weight EMA) and ``RUN/state/state.json`` the rest (epoch,
step, best metric, early-stopping counter, optimizer hyper-parameters, GradScaler, Python and
NumPy RNG states), both written by ``wavemel.checkpoint.save_tensors`` (temporary names renamed
into place, JSON last). The data order needs no state: it is a pure function of (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wavemel._fields import check_field_types
from wavemel.checkpoint import flatten_state, load_tensors, save_tensors, unflatten_state
from wavemel.errors import CheckpointError
from wavemel.train.ema import ModelEma

__all__ = ["Progress", "save_state", "load_state", "saved_progress", "has_state", "STATE_STEM"]

#: Where the state lives inside a run folder.
STATE_STEM = Path("state") / "state"


@dataclass
class Progress:
    """Loop counters saved with the state.

    Attributes:
        epoch: Number of finished epochs.
        step: Number of optimizer steps taken (drives the learning-rate schedule).
        best_map3: Best validation MAP@3 so far (-1 before the first validation).
        best_epoch: Epoch (1-based) that reached ``best_map3``.
        epochs_without_improvement: Early-stopping counter.
        noisy_clips: Positions in the training clips of the unverified clips that the next
            epoch trains with ``noisy_weight`` (``noisy_drop``), highest loss first; kept here so
            that a resumed run trains with the choice the interrupted one made.
    """

    epoch: int = 0
    step: int = 0
    best_map3: float = -1.0
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    noisy_clips: list[int] = dataclasses.field(default_factory=list)


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) generator states."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].to(torch.uint8))
    if "cuda" in states and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the states it can.
        cuda = states["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])


def has_state(run: Path) -> bool:
    return (Path(run) / STATE_STEM).with_suffix(".json").exists()


def save_state(
    run: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    *,
    scaler: torch.amp.GradScaler | None = None,
    ema: ModelEma | None = None,
) -> Path:
    """Write the resume state of ``run`` after an epoch.

    Args:
        run: Run folder.
        model: The plain model (not a DDP / compile wrapper).
        optimizer: Its optimizer.
        progress: Loop counters.
        scaler: GradScaler when training in float16.
        ema: The weight EMA, when the run keeps one (stored under ``"ema"``; a run without one
            writes the state it wrote before the EMA existed).

    Returns:
        Path of the state's JSON file.
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": vars(progress).copy(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_states(),
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    tensors, skeleton = flatten_state(state)
    return save_tensors(Path(run) / STATE_STEM, tensors, {"state": skeleton})


def load_state(
    run: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    ema: ModelEma | None = None,
    restore_rng: bool = True,
) -> Progress:
    """Load ``run``'s resume state into ``model``, ``optimizer`` (and ``scaler``, ``ema``).

    Returns:
        The loop counters to continue from.

    Raises:
        CheckpointError: No state, or it does not fit this model/optimizer.
    """
    stem = Path(run) / STATE_STEM
    if not has_state(run):
        raise CheckpointError(
            f"{stem.parent}: no resume state (the run has not finished an epoch); "
            "start it again with --force"
        )
    tensors, meta = load_tensors(stem)
    source = f"{stem}.json"
    try:
        state = unflatten_state(tensors, meta["state"])
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: corrupt resume state ({exc})") from None
    _check_ema(state, ema, source)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        progress = _progress(state["progress"], source)
        if restore_rng:
            set_rng_states(state["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{source}: resume state does not fit this run ({reason})") from None
    return progress


def saved_progress(run: Path) -> Progress | None:
    """The loop counters of ``run``'s resume state, or ``None`` without one (nothing is loaded).

    Raises:
        CheckpointError: The state is corrupt.
    """
    if not has_state(run):
        return None
    stem = Path(run) / STATE_STEM
    tensors, meta = load_tensors(stem)
    source = f"{stem}.json"
    try:
        values = unflatten_state(tensors, meta["state"])["progress"]
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: corrupt resume state ({exc})") from None
    return _progress(values, source)


def _check_ema(state: Any, ema: ModelEma | None, source: str) -> None:
    """A run with a weight EMA needs one in its state, and a run without one must not have one."""
    saved = isinstance(state, dict) and "ema" in state
    if ema is not None and not saved:
        raise CheckpointError(f"{source}: the resume state has no weight EMA (ema_decay > 0)")
    if ema is None and saved:
        raise CheckpointError(f"{source}: the resume state has a weight EMA but ema_decay is 0")


def _progress(values: Any, source: str) -> Progress:
    """The saved loop counters, refused unless each is a non-negative number of its type."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: 'progress' must be a JSON object")
    names = {f.name for f in dataclasses.fields(Progress)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CheckpointError(f"{source}: unknown progress field(s) {', '.join(unknown)}")
    check_field_types(Progress, values, error=CheckpointError, source=source)
    progress = Progress(**values)
    counters = [f.name for f in dataclasses.fields(Progress) if f.type == "int"]
    negative = [name for name in counters if getattr(progress, name) < 0]
    negative += ["noisy_clips"] if any(i < 0 for i in progress.noisy_clips) else []
    if negative:
        raise CheckpointError(f"{source}: field {negative[0]!r} must be >= 0")
    if not -1.0 <= progress.best_map3 <= 1.0:
        raise CheckpointError(f"{source}: field 'best_map3' must be in [-1, 1]")
    return progress
