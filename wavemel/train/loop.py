"""The training loop, top to bottom: ``train_one_epoch()``, ``validate()``, ``fit()``, ``train()``.

One epoch: every training clip contributes one random window (``loader.WindowDataset``); on the
device, ``WaveformAugment`` shifts it and crops, pads or replicates it to the input length, then
Mixup blends pairs (on waveforms, or on log-mels for cnn-spec with ``mixup_on="spec"``), the
network gives logits, and the soft-target cross-entropy (weighted per clip; binary cross-entropy
on the multi-hot label vectors for a multi-label run, see :class:`Objective`) is minimised with
AdamW under a per-step linear warm-up + cosine schedule. After each epoch the validation clips are
scored whole (``wavemel.infer.predict_waveforms``: input-length windows, mean probabilities) for
MAP@3; the best and the last model are saved as checkpoints, the resume state after them. With
``ema_decay`` > 0 an exponential moving average of the weights (``ema.py``) follows every step and
is what validation scores and the checkpoints hold; training continues on the raw weights.

Under ``torchrun`` (see ``distributed.py``) the same code runs on every rank: DDP averages the
gradients, each rank sees its shard of the epoch, losses and validation predictions are combined
across ranks, and only rank 0 writes or prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from wavemel._device import cpu_has_bf16_units, half_dtype
from wavemel._io import atomic_write_text, os_error_reason
from wavemel._threads import retune_threads
from wavemel.augment import Mixup, SpecMask, WaveformAugment, eval_fill_for
from wavemel.checkpoint import save_checkpoint
from wavemel.errors import WavemelError
from wavemel.infer import hop_to_samples
from wavemel.metrics import (
    choose_thresholds,
    lwlrap,
    map_at_k,
    mean_average_precision,
    top_k_accuracy,
)
from wavemel.train.config import TrainConfig, resume_config
from wavemel.train.distributed import (
    DistContext,
    ShardSampler,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup,
    init_distributed,
    wrap_model,
)
from wavemel.train.ema import ModelEma
from wavemel.train.finetune import build_model, resolve_init
from wavemel.train.loader import (
    ClipItem,
    PreparedData,
    WindowDataset,
    collate_windows,
    prepare_data,
    shift_margin,
)
from wavemel.train.noisy import NOISY_LOG, NoisyLabels, NoisySettings, noisy_candidates
from wavemel.train.run_folder import RunFolder
from wavemel.train.scoring import ClipScoring, clip_probabilities
from wavemel.train.stages import Stage
from wavemel.train.state import Progress, load_state, save_state

__all__ = [
    "Objective",
    "soft_cross_entropy",
    "soft_binary_cross_entropy",
    "lr_at_step",
    "seed_everything",
    "train_one_epoch",
    "validate",
    "fit",
    "train",
    "open_run",
    "start_run",
]


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft targets, each example weighted.

    Args:
        logits: (B, C).
        targets: (B, C) distributions (one-hot, multi-label shares or mixup blends).
        weights: (B,) per-example weights, e.g. lower for unverified labels; ``None`` = 1.

    Returns:
        Scalar: ``mean_b(weights[b] * CE_b)`` (so down-weighting really lowers the loss, rather
        than being normalised away in batches of unverified clips).
    """
    per_example = -(targets * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weights is not None:
        per_example = per_example * weights
    return per_example.mean()


def soft_binary_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy of every label against soft targets, each example weighted.

    Args:
        logits: (B, C).
        targets: (B, C) in [0, 1]: multi-hot label vectors, or their mixup blends.
        weights: (B,) per-example weights; ``None`` = 1.

    Returns:
        Scalar: ``mean_b(weights[b] * mean_c(BCE_bc))``.
    """
    per_label = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none"
    )
    per_example = per_label.mean(dim=1)
    if weights is not None:
        per_example = per_example * weights
    return per_example.mean()


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the outputs mean: one label per clip (softmax cross-entropy) or several (sigmoid BCE).

    Attributes:
        multi_label: Sigmoid outputs and binary cross-entropy; validation then also reports
            macro mAP and lwlrap and chooses per-class decision thresholds.
    """

    multi_label: bool = False

    @property
    def activation(self) -> str:
        """The ``wavemel.infer`` activation of the logits: ``"softmax"`` or ``"sigmoid"``."""
        return "sigmoid" if self.multi_label else "softmax"

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The training loss of a batch (see the two loss functions)."""
        if self.multi_label:
            return soft_binary_cross_entropy(logits, targets, weights)
        return soft_cross_entropy(logits, targets, weights)

    def clip_loss(self, probs: np.ndarray, targets: np.ndarray) -> float:
        """Mean loss of whole-clip probabilities ``(N, C)`` against targets ``(N, C)``."""
        if not len(probs):
            return math.nan
        clipped = np.clip(probs, 1e-12, 1.0 - 1e-12 if self.multi_label else None)
        if self.multi_label:
            per_label = targets * np.log(clipped) + (1.0 - targets) * np.log1p(-clipped)
            return float(np.mean(-per_label.mean(axis=1)))
        return float(np.mean(-(targets * np.log(clipped)).sum(axis=1)))

    def scores(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Validation metrics of clip probabilities (all-NaN rows: no answer, a miss)."""
        hot = (targets > 0).astype(np.int64)
        scores: dict[str, Any] = {
            "val_map3": map_at_k(probs, hot, k=3),
            "val_top1": top_k_accuracy(probs, hot, k=1),
        }
        if self.multi_label:
            scores["val_map"] = mean_average_precision(probs, hot)
            scores["val_lwlrap"] = lwlrap(probs, hot)
            # Not a metric: the per-class thresholds this epoch's checkpoint will tag with.
            scores["thresholds"] = choose_thresholds(probs, hot).tolist()
        return scores


def lr_at_step(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr``, then cosine decay to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int, *parts: int) -> None:
    """Seed Python, NumPy and torch (all devices) from ``(seed, *parts)``.

    The trainer calls this at the start of every epoch with (seed, epoch, rank), so each epoch's
    augmentations, mixup and dropout depend only on those numbers: a resumed run repeats them.
    """
    words = np.random.SeedSequence([seed, *parts]).generate_state(2)
    random.seed(int(words[0]))
    np.random.seed(int(words[0]))
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))


class _SpectrogramInput(nn.Module):
    """Presents cnn-spec's ``forward_spectrogram`` as ``forward`` (for mixup on log-mels).

    DDP only synchronises gradients of what runs through its ``forward``, so the network after
    the front end is wrapped here rather than called through a side method.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.model.forward_spectrogram(spec)


@dataclasses.dataclass
class TrainStep:
    """How one optimizer step turns a loader batch into a loss (everything but the model).

    Attributes:
        augment: ``WaveformAugment`` in train mode: (B, T) + lengths -> (B, input_samples).
        mixup: ``Mixup`` or ``None``.
        device: Training device.
        lr_schedule: Step -> learning rate.
        scaler: GradScaler (float16 AMP; disabled otherwise).
        amp_dtype: Autocast dtype of the training steps (CUDA's half type, or bfloat16 on the
            CPU with ``cpu_amp``), ``None`` for full precision.
        spectrogram: When set, the network takes log-mels: (B, N) -> (B, 1, F, frames) on the
            device ("spec" mixup, or masking).
        mix_waveforms: Mixup blends the waveforms before ``spectrogram`` ("wave" mixup with
            masking) rather than the log-mels after it.
        spec_mask: ``SpecMask`` applied to the log-mels last (needs ``spectrogram``), or ``None``.
        channels_last: Put spectrogram inputs in NHWC memory format.
        log_every: Refresh the bar's loss every this many steps (reading it syncs the GPU).
        objective: The loss (softmax cross-entropy, or sigmoid BCE for multi-label runs).
    """

    augment: nn.Module
    mixup: nn.Module | None
    device: torch.device
    lr_schedule: Callable[[int], float]
    scaler: torch.amp.GradScaler = dataclasses.field(
        default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False)
    )
    amp_dtype: torch.dtype | None = None
    spectrogram: Callable[[torch.Tensor], torch.Tensor] | None = None
    mix_waveforms: bool = False
    spec_mask: nn.Module | None = None
    channels_last: bool = False
    log_every: int = 10
    objective: Objective = Objective()

    def inputs(self, waves, lengths, targets, weights):
        """Augmented (and mixed) inputs, soft targets and loss weights of one batch, on the device.

        Mixup mixes the per-clip loss weights like the targets, so a blend of a verified and an
        unverified clip counts by how much of each it holds.
        """
        with torch.no_grad():
            x = self.augment(waves, lengths)
            mix_spectrograms = self.spectrogram is not None and not self.mix_waveforms
            if self.mixup is not None and not mix_spectrograms:
                x, targets, weights = self.mixup(x, targets, weights)
            if self.spectrogram is not None:
                x = self.spectrogram(x)
                if self.mixup is not None and mix_spectrograms:
                    x, targets, weights = self.mixup(x, targets, weights)
                if self.spec_mask is not None:
                    # Last, so that a mask hides what it covers of both clips of a mixture.
                    x = self.spec_mask(x)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
        return x, targets, weights


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    step: TrainStep,
    progress: Progress,
    *,
    ctx: DistContext | None = None,
    desc: str = "train",
    postfix: dict[str, Any] | None = None,
    ema: ModelEma | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss (over all ranks).

    Args:
        model: Maps the augmented batch to (B, C) logits (possibly DDP-wrapped).
        loader: Yields ``(waves (B, T), lengths (B,), targets (B, C), weights (B,))``.
        optimizer: Its learning rate is set from ``step.lr_schedule(progress.step)`` each step.
        step: Augmentation, mixup, precision and schedule settings.
        progress: Its ``step`` is advanced once per optimizer step.
        ctx: Distributed context (only rank 0 shows a progress bar).
        desc: Progress-bar title.
        postfix: Extra fields for the bar (e.g. the last validation MAP@3).
        ema: Weight average updated after every optimizer step (of the plain model inside
            ``model``), or ``None``.
    """
    ctx = ctx or DistContext()
    device = step.device
    model.train()
    step.augment.train()
    for part in (step.mixup, step.spec_mask):
        if part is not None:
            part.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    bar = tqdm(
        loader,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        # None: tqdm hides itself when stderr is not a terminal; other ranks never show one.
        disable=None if ctx.is_main else True,
        file=sys.stderr,
    )
    for i, (waves, lengths, targets, weights) in enumerate(bar):
        retune_threads()  # between steps: outside any parallel region
        lr = step.lr_schedule(progress.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        waves, lengths, targets, weights = (
            t.to(device, non_blocking=True) for t in (waves, lengths, targets, weights)
        )
        x, targets, weights = step.inputs(waves, lengths, targets, weights)
        with torch.autocast(
            device.type, dtype=step.amp_dtype or torch.float32, enabled=step.amp_dtype is not None
        ):
            logits = model(x)
        loss = step.objective.loss(logits, targets, weights)
        optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        step.scaler.step(optimizer)
        step.scaler.update()
        progress.step += 1
        if ema is not None:
            ema.update(progress.step)
        loss_sum += loss.detach().double() * len(waves)
        count += len(waves)
        if i % step.log_every == 0 and not bar.disable:
            bar.set_postfix(
                loss=f"{loss_sum.item() / count:.4f}", lr=f"{lr:.2e}", **(postfix or {})
            )
    bar.close()
    total, n = all_reduce_sum([loss_sum.item(), float(count)], ctx)
    return total / max(n, 1.0)


def validate(
    model: nn.Module,
    store,
    items: list[ClipItem],
    *,
    input_samples: int,
    hop_samples: int | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    empty_distribution: np.ndarray | None = None,
    fill: str = "replicate",
    ctx: DistContext | None = None,
    objective: Objective = Objective(),
) -> dict[str, Any]:
    """Whole-clip validation: MAP@3, top-1 accuracy and cross-entropy of the clip predictions.

    Each rank scores every ``world_size``-th clip; the predictions are gathered so that every rank
    returns the same numbers.

    Args:
        model: The plain (unwrapped) model; left in the mode it was in.
        store: ``ClipStore`` holding the clips.
        items: Validation clips.
        input_samples: Window length (training input length).
        hop_samples: Window hop (``None``: the inference default, no overlap).
        batch_size: Windows per forward pass.
        device: Where to run the model.
        amp_dtype: Autocast dtype on CUDA, or ``None``.
        empty_distribution: (C,) prediction for empty clips (default uniform).
        fill: How a clip shorter than a window is filled (the checkpoint's ``eval_fill``).
        ctx: Distributed context.
        objective: Single- or multi-label (sigmoid probabilities, BCE, mAP and lwlrap).

    Returns:
        ``{"val_loss", "val_map3", "val_top1"}``; multi-label adds ``"val_map"`` (macro mAP),
        ``"val_lwlrap"`` and ``"thresholds"`` (per-class, chosen on these clips).
    """
    scoring = ClipScoring(
        input_samples=input_samples,
        hop_samples=hop_samples,
        batch_size=batch_size,
        device=device,
        amp_dtype=amp_dtype,
        empty_distribution=empty_distribution,
        fill=fill,
        activation=objective.activation,
    )
    # Undecodable clips have no answer (all-NaN rows) and count as misses, as in `evaluate`.
    probs = clip_probabilities(model, store, items, scoring, ctx)
    targets = np.stack([item.target for item in items])
    answered = ~np.isnan(probs).all(axis=1)
    loss = objective.clip_loss(probs[answered], targets[answered])
    return {"val_loss": loss, **objective.scores(probs, targets)}


def _format_duration(seconds: float) -> str:
    """``"1h02m"``, ``"3m05s"`` or ``"12s"``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _frontend_config(model: nn.Module) -> dict | None:
    frontend = getattr(model, "frontend", None)
    return frontend.config() if frontend is not None and hasattr(frontend, "config") else None


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the first ``epochs`` lines: an interrupted epoch may have logged before its state."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        atomic_write_text(path, "".join(line + "\n" for line in lines[:epochs]))


def _make_loader(
    data: PreparedData, config: TrainConfig, ctx: DistContext
) -> tuple[torch.utils.data.DataLoader, WindowDataset, ShardSampler]:
    """The epoch's loader: one window per training clip, this rank's shard, shuffled per epoch."""
    input_samples = config.input_samples
    dataset = WindowDataset(
        data.store, data.train, input_samples + shift_margin(input_samples), seed=config.seed
    )
    sampler = ShardSampler(
        len(dataset), rank=ctx.rank, world_size=ctx.world_size, seed=config.seed, shuffle=True
    )
    if len(sampler) < 2:
        raise WavemelError(f"{config.data}: too few training clips per process ({len(sampler)})")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_windows,
        pin_memory=config.pin_memory and ctx.device.type == "cuda",
        # BatchNorm cannot train on a last batch of one clip; a short last batch is dropped
        # unless it is the only one.
        drop_last=len(sampler) >= config.batch_size,
        persistent_workers=False,
    )
    return loader, dataset, sampler


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    try:
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise WavemelError(f"{path}: cannot write ({os_error_reason(exc)})") from None


def _epoch_line(epochs: int, record: dict[str, Any], improved: bool, eta: str) -> str:
    multi_label = "".join(
        f"  {key} {record[key]:.4f}" for key in ("val_map", "val_lwlrap") if key in record
    )
    scores = (
        f"val_loss {record['val_loss']:.4f}  val_map3 {record['val_map3']:.4f}{multi_label}"
        if "val_map3" in record
        else "(not validated)"
    )
    return (
        f"epoch {record['epoch']}/{epochs}  train_loss {record['train_loss']:.4f}  "
        f"{scores}{' *' if improved else '  '}  lr {record['lr']:.2e}  "
        f"{record['seconds']:.1f}s  eta {eta}"
    )


def _validates(epoch: int, config: TrainConfig) -> bool:
    """Whether 0-based ``epoch`` ends with a validation: every ``val_every``-th, and the last."""
    return (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs


def _update_progress(progress: Progress, epoch: int, val_map3: float, every: int = 1) -> bool:
    """Count the finished, validated epoch; returns whether it is the best so far.

    ``every`` epochs passed since the previous validation, so that many count towards patience.
    """
    progress.epoch = epoch + 1
    improved = val_map3 > progress.best_map3
    if improved:
        progress.best_map3 = val_map3
        progress.best_epoch = epoch + 1
        progress.epochs_without_improvement = 0
    else:
        progress.epochs_without_improvement += every
    return improved


def _build_step(
    model: nn.Module,
    config: TrainConfig,
    ctx: DistContext,
    steps: int,
    objective: Objective = Objective(),
) -> TrainStep:
    """Augmentation, mixup, precision, LR schedule and loss of a run (``steps`` per epoch)."""
    device = ctx.device
    amp_dtype = _amp_dtype(config, device)
    total_steps = steps * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps))
    mixup = Mixup(config.mixup_alpha) if config.mixup_alpha > 0 else None
    spec_mixup = config.mixup_on == "spec" and mixup is not None
    spec_mask = _spec_mask_for(model, config)
    return TrainStep(
        augment=WaveformAugment(config.input_samples, p_replicate=config.p_replicate).to(device),
        mixup=mixup,
        device=device,
        lr_schedule=lambda step: lr_at_step(step, total_steps, warmup_steps, config.lr),
        # Loss scaling is only needed for float16's narrow exponent range.
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        spectrogram=model.spectrogram if spec_mixup or spec_mask is not None else None,
        mix_waveforms=not spec_mixup,
        spec_mask=spec_mask,
        channels_last=_use_channels_last(model, config, device),
        log_every=config.log_every,
        objective=objective,
    )


def _spec_mask_for(model: nn.Module, config: TrainConfig) -> SpecMask | None:
    """The run's log-mel masking (``config.spec_*``), or ``None`` when it masks nothing.

    Raises:
        WavemelError: Masking for a model without a log-mel front end, or frequency masks wider
            than the model's mel bands.
    """
    if not config.spec_masking:
        return None
    if not hasattr(model, "forward_spectrogram"):
        raise WavemelError(
            f"--spec-freq-masks / --spec-time-masks need a model with a log-mel front end "
            f"(cnn-spec or cnn14), not {config.model}"
        )
    n_mels = model.config.n_mels
    if config.spec_freq_masks and config.spec_freq_width > n_mels:
        raise WavemelError(
            f"--spec-freq-width {config.spec_freq_width}: more than the model's {n_mels} mel bands"
        )
    return SpecMask(
        config.spec_freq_masks,
        config.spec_freq_width,
        config.spec_time_masks,
        config.spec_time_width,
    )


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The training steps' autocast dtype: CUDA's half type with ``amp``, bfloat16 on the CPU
    with ``cpu_amp``, else ``None`` (float32). Validation and inference on the CPU stay float32.
    """
    if device.type == "cuda":
        return half_dtype() if config.amp else None
    fast = config.cpu_amp and device.type == "cpu" and cpu_has_bf16_units()
    return torch.bfloat16 if fast else None


def _use_channels_last(model: nn.Module, config: TrainConfig, device: torch.device) -> bool:
    # CUDA's 2-D convolutions gain from NHWC, and so do oneDNN's bfloat16 ones on the CPU (in
    # float32 on the CPU NHWC was slower); the model says whether it has such a body.
    fast_nhwc = device.type == "cuda" or (device.type == "cpu" and config.cpu_amp)
    return (
        config.channels_last and fast_nhwc and bool(getattr(model, "prefers_channels_last", False))
    )


def _checkpoint_meta(
    model: nn.Module,
    data: PreparedData,
    config: TrainConfig,
    run_config: dict[str, Any],
    extra_meta: dict[str, Any] | None,
) -> dict[str, Any]:
    """What every checkpoint of a run records besides its weights and metrics."""
    return {
        "labels": list(data.labels),
        "sample_rate": config.sample_rate,
        "input_seconds": config.input_seconds,
        "frontend": _frontend_config(model),
        "train_config": run_config,
        "label_prior": data.label_prior(),
        "eval_fill": eval_fill_for(config.p_replicate),
        # Only multi-label runs carry the key, so single-label checkpoints stay as they were.
        **({"multi_label": True} if data.multi_label else {}),
        **(extra_meta or {}),
    }


def _noisy_labels(
    config: TrainConfig,
    data: PreparedData,
    step: TrainStep,
    objective: Objective,
    meta: dict[str, Any],
    out: Path,
    ctx: DistContext,
) -> NoisyLabels | None:
    """The run's noisy-label lever (``config.noisy_drop``), or ``None`` when it is off."""
    settings = NoisySettings.from_config(config)
    if settings is None:
        return None
    # fit()'s validation settings: unverified clips are scored as validation clips are.
    scoring = ClipScoring(
        input_samples=config.input_samples,
        hop_samples=hop_to_samples(config.hop_seconds, config.sample_rate),
        batch_size=max(config.batch_size, 64),
        device=ctx.device,
        amp_dtype=step.amp_dtype,
        empty_distribution=np.asarray(data.label_prior()),
        fill=meta["eval_fill"],
        activation=objective.activation,
    )
    return NoisyLabels(settings, data, scoring, objective, out / NOISY_LOG if ctx.is_main else None)


def _resume(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: TrainStep,
    epochs: int,
    ctx: DistContext,
    ema: ModelEma | None = None,
) -> Progress:
    """Load the resume state of ``out``; the metrics log loses an unfinished epoch's line."""
    progress = load_state(out, model, optimizer, scaler=step.scaler, ema=ema)
    if ctx.is_main:
        _truncate_metrics(out / "metrics.jsonl", progress.epoch)
        print(f"resuming {out} after epoch {progress.epoch}/{epochs}", flush=True)
    return progress


def _save_epoch(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: TrainStep,
    progress: Progress,
    meta: dict[str, Any],
    improved: bool,
    ema: ModelEma | None = None,
) -> None:
    """The epoch's ``last`` (and ``best``) checkpoints, then the resume state.

    With a weight EMA the checkpoints hold the averaged weights (what validation scored); the
    resume state holds both, the raw ones to train on and the average.
    """
    scored = ema.module if ema is not None else model
    save_checkpoint(out / "last", scored, meta)
    if improved:
        save_checkpoint(out / "best", scored, meta)
    # Written last: a run interrupted before this line repeats the whole epoch.
    save_state(out, model, optimizer, progress, scaler=step.scaler, ema=ema)


def fit(
    model: nn.Module,
    data: PreparedData,
    config: TrainConfig,
    out: Path,
    *,
    run_config: dict[str, Any],
    extra_meta: dict[str, Any] | None = None,
    ctx: DistContext | None = None,
    run: RunFolder | None = None,
    stage: Stage | None = None,
) -> Path:
    """Train ``model``'s trainable parameters on ``data`` and write the run folder.

    Args:
        model: Plain model (cnn-audio, cnn-spec or cnn-comb with frozen branches).
        data: Prepared clips (see ``loader.prepare_data``).
        config: Training settings; ``config.resume`` continues from ``out/state``.
        out: Run folder (already started by :func:`start_run`).
        run_config: The resolved configuration stored in the checkpoints (``train_config``).
        extra_meta: More checkpoint metadata (e.g. the branch runs of cnn-comb).
        ctx: Distributed context.
        run: Rank 0's run folder; ``finished.json`` is written through it at the end.
        stage: Set when the run is trained in stages (see :mod:`wavemel.train.stages`):
            ``config.epochs`` then counts this stage's epochs, after ``stage.start.epoch``.

    Returns:
        ``out``.
    """
    ctx = ctx or DistContext()
    out = Path(out)
    device = ctx.device
    model.to(device)
    loader, dataset, sampler = _make_loader(data, config, ctx)
    objective = Objective(multi_label=data.multi_label)
    step = _build_step(model, config, ctx, len(loader), objective)
    if step.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # Of the plain model, after its device and memory format are set (the copy keeps both).
    ema = ModelEma.create(model, config.ema_decay)
    first = stage.start.epoch if stage is not None else 0
    epochs = first + config.epochs
    if config.resume:
        progress = _resume(out, model, optimizer, step, epochs, ctx, ema)
    else:
        progress = stage.first_progress() if stage is not None else Progress()
    hop_samples = hop_to_samples(config.hop_seconds, config.sample_rate)
    train_module = wrap_model(_SpectrogramInput(model) if step.spectrogram else model, ctx)
    if config.compile:
        train_module = torch.compile(train_module)
    prior = np.asarray(data.label_prior())
    base_meta = _checkpoint_meta(model, data, config, run_config, extra_meta)
    if ctx.is_main and progress.epoch == 0 and first == 0:
        print(
            f"training {config.model} on {len(data.train)} clips, validating on {len(data.val)} "
            f"({len(data.labels)} classes, {len(loader)} steps/epoch, device {device}, "
            f"{ctx.world_size} process(es))",
            flush=True,
        )
        if config.cpu_amp and device.type == "cpu" and step.amp_dtype is None:
            print("cpu_amp: this CPU has no bfloat16 units, so training stays float32", flush=True)
    noisy = _noisy_labels(config, data, step, objective, base_meta, out, ctx)
    if noisy is not None:
        noisy.start(model, progress, ctx)
    last_map3 = progress.best_map3 if progress.epoch else float("nan")
    run_started, first_epoch, run_eta = time.perf_counter(), progress.epoch, "?"
    for epoch in range(progress.epoch, epochs):
        if config.patience and progress.epochs_without_improvement >= config.patience:
            break
        started = time.perf_counter()
        if noisy is not None:
            noisy.apply(dataset, progress)
        seed_everything(config.seed, epoch, ctx.rank)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        train_loss = train_one_epoch(
            train_module,
            loader,
            optimizer,
            step,
            progress,
            ctx=ctx,
            desc=f"epoch {epoch + 1}/{epochs}",
            postfix={"map3": f"{last_map3:.3f}", "run_eta": run_eta},
            ema=ema,
        )
        broadcast_buffers(model, ctx)
        scores, thresholds, improved = {}, None, False
        if _validates(epoch - first, config):
            if ema is not None:
                broadcast_buffers(ema.module, ctx)
            scores = validate(
                ema.module if ema is not None else model,
                data.store,
                data.val,
                input_samples=config.input_samples,
                hop_samples=hop_samples,
                batch_size=max(config.batch_size, 64),
                device=device,
                amp_dtype=step.amp_dtype,
                empty_distribution=prior,
                fill=base_meta["eval_fill"],
                ctx=ctx,
                objective=objective,
            )
            thresholds = scores.pop("thresholds", None)
            last_map3 = scores["val_map3"]
            improved = _update_progress(progress, epoch, scores["val_map3"], config.val_every)
        else:
            progress.epoch = epoch + 1
        if noisy is not None:
            noisy.update(ema.module if ema is not None else model, progress, ctx)
        # Whole-run ETA from the mean epoch time so far (the bar's own ETA covers one epoch).
        per_epoch = (time.perf_counter() - run_started) / (progress.epoch - first_epoch)
        run_eta = _format_duration(per_epoch * (epochs - progress.epoch))
        record = {
            "epoch": epoch + 1,
            **({"stage": stage.name} if stage is not None else {}),
            "train_loss": train_loss,
            **scores,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        if ctx.is_main:
            _append_metrics(out / "metrics.jsonl", record)
            metrics = {
                **record,
                "best_val_map3": progress.best_map3,
                "best_epoch": progress.best_epoch,
            }
            meta = {**base_meta, "metrics": metrics}
            if thresholds is not None:
                meta["thresholds"] = thresholds
            if stage is not None and stage.before_save is not None:
                stage.before_save(ema.module if ema is not None else model)
            _save_epoch(out, model, optimizer, step, progress, meta, improved, ema)
            print(_epoch_line(epochs, record, improved, run_eta), flush=True)
        barrier(ctx)
    if ctx.is_main:
        _report_end(config, progress, out, run, epochs)
    return out


def _report_end(
    config: TrainConfig, progress: Progress, out: Path, run: RunFolder | None, epochs: int
) -> None:
    stopped = bool(config.patience) and progress.epochs_without_improvement >= config.patience
    if stopped and progress.epoch < epochs:
        print(f"early stop: no better val_map3 for {config.patience} epochs", flush=True)
    if run is not None:
        run.finish(
            {
                "epochs": progress.epoch,
                "best_epoch": progress.best_epoch,
                "best_val_map3": progress.best_map3,
                "early_stop": stopped and progress.epoch < epochs,
            }
        )
    print(
        f"best val_map3 {progress.best_map3:.4f} at epoch {progress.best_epoch}; "
        f"checkpoints in {out}",
        flush=True,
    )


def open_run(config, ctx: DistContext) -> RunFolder | None:
    """Check the run folder on every rank; rank 0 also takes its lock. Nothing is written yet.

    Returns:
        Rank 0's :class:`RunFolder` (``None`` on the other ranks).
    """
    out = Path(config.out)
    RunFolder.check(out, force=config.force, resume=config.resume)
    barrier(ctx)
    if not ctx.is_main:
        return None
    return RunFolder.claim(out, force=config.force, resume=config.resume)


def start_run(run: RunFolder | None, config, ctx: DistContext) -> None:
    """Create or (``--force``) clear the run folder and write ``config.json``, on rank 0.

    Called only once the settings, the data and the model are known good, so a failing run never
    clears a folder it was pointed at.
    """
    if run is not None:
        run.start(config.replace(force=False, resume=False).to_dict())
    barrier(ctx)


def train(config: TrainConfig) -> Path:
    """Train one branch (cnn-audio, cnn-spec or cnn14) as described by ``config``.

    Writes ``RUN/config.json``, ``RUN/metrics.jsonl`` (one JSON line per epoch), ``RUN/best.*``
    and ``RUN/last.*`` (checkpoints) and ``RUN/state/`` (resume state).

    Returns:
        The run folder.

    Raises:
        WavemelError: Bad settings, an existing run folder without ``force``/``resume``, or data
            problems (DataError) and resume problems (CheckpointError).
    """
    if config.resume:
        config = resume_config(config)
    config.check()
    config = resolve_init(config.with_absolute_paths())
    ctx = init_distributed(config.device)
    run = None
    try:
        run = open_run(config, ctx)
        data = prepare_data(config, ctx)
        seed_everything(config.seed)
        model = build_model(config, data.labels)
        min_samples = int(getattr(model, "min_samples", 1))
        if config.input_samples < min_samples:
            raise WavemelError(
                f"--input-seconds {config.input_seconds:g}: {config.model} needs at least "
                f"{min_samples} samples ({min_samples / config.sample_rate:.3f} s at "
                f"{config.sample_rate} Hz)"
            )
        _spec_mask_for(model, config)  # its errors come before the run folder is touched
        noisy_candidates(data, NoisySettings.from_config(config))  # before the folder is made
        if config.multi_label is None and data.multi_label:
            # Switched on because a training clip has several labels: config.json says so. (A
            # single-label run keeps None, so its config is what it was before multi-label.)
            config = config.replace(multi_label=True)
        start_run(run, config, ctx)
        run_config = config.replace(force=False, resume=False).to_dict()
        return fit(model, data, config, Path(config.out), run_config=run_config, ctx=ctx, run=run)
    finally:
        if run is not None:
            run.release()
        cleanup(ctx)
