"""cnn-comb: train a new dense head on two trained branches with the same loop as ``train``.

The two branch runs must have been trained on the same labels, at the same sample rate and input
length, with the same train/validation split (data, format, label pattern, groups, folds, fold,
seed, validation split): otherwise the head would be validated on clips a branch was trained on.
The split is then rebuilt from those shared settings, the branches are frozen inside
``CnnComb`` and only the head's parameters reach the optimizer. A ``--spec`` branch of imported
weights (no training run here, e.g. PANNs' cnn14) only has to share the sample rate; rates are
never converted inside the comb, so the ``--audio`` branch is trained at that rate.

With ``finetune_epochs`` the run has a second stage (see :mod:`wavemel.train.stages`): from the
best head-only weights, the branches are unfrozen and everything trains end to end at
``finetune_lr``; the branch features then change, so the comb's mean training features (the
mean-input ablation) are recorded again after every fine-tune epoch, before it is saved. The
branch run folders are only ever read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wavemel._io import os_error_reason
from wavemel.augment import eval_fill_for, fill_short
from wavemel.checkpoint import load_checkpoint
from wavemel.errors import CheckpointError, WavemelError
from wavemel.infer import window_starts
from wavemel.models.cnn_comb import CnnComb
from wavemel.train.config import SPLIT_FIELDS, CombineConfig, TrainConfig, resume_config
from wavemel.train.distributed import DistContext, barrier, cleanup, init_distributed
from wavemel.train.loader import PreparedData, prepare_data
from wavemel.train.loop import fit, open_run, seed_everything, start_run
from wavemel.train.run_folder import RunFolder, check_not_inside
from wavemel.train.stages import Stage
from wavemel.train.state import Progress, saved_progress

__all__ = [
    "combine",
    "check_branches",
    "check_slots",
    "resolve_combine_config",
    "HEAD",
    "FINETUNE",
]

#: The stage names recorded in ``metrics.jsonl`` and the checkpoints' metrics.
HEAD, FINETUNE = "head", "finetune"


def _same_path(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a == b
    return Path(a).expanduser().absolute() == Path(b).expanduser().absolute()


def check_slots(
    audio_model: Any, spec_model: Any, audio_meta: dict, audio_run: str, spec_run: str
) -> None:
    """Any single-branch model fits ``--audio``; ``--spec`` needs a log-mel front end.

    The comb uses a branch through ``conv_features`` only, and the Figure 4 ablation zeroes the
    ``--spec`` branch's spectrogram (``conv_features_from_spectrogram``). Both branches must take
    the ``--audio`` run's input length (an imported ``--spec`` branch may need longer windows).
    """
    if not hasattr(audio_model, "conv_features"):
        raise CheckpointError(
            f"{audio_run}: --audio must be a single-branch run, not {audio_model.name}"
        )
    if not hasattr(spec_model, "conv_features_from_spectrogram"):
        raise CheckpointError(
            f"{spec_run}: --spec must be a log-mel model run (cnn-spec, cnn14), "
            f"not {spec_model.name}"
        )
    seconds = float(audio_meta.get("input_seconds") or 0)
    if round(seconds * spec_model.sample_rate) < spec_model.min_samples:
        raise CheckpointError(
            f"{spec_run}: {spec_model.name} needs windows of at least "
            f"{spec_model.min_samples / spec_model.sample_rate:.3f} s; {audio_run} was trained "
            f"on {seconds:g} s windows"
        )


def check_branches(audio_meta: dict, spec_meta: dict, audio_run: str, spec_run: str) -> None:
    """Raise a CheckpointError naming the first setting on which the two branch runs differ.

    The ``--audio`` run must have been trained here (its split is the comb's). A ``--spec`` run
    without a ``train_config`` (imported weights, e.g. PANNs' cnn14) never saw this data, so
    only its sample rate has to match.
    """
    if not audio_meta.get("train_config"):
        raise CheckpointError(f"{audio_run}: --audio must be a run trained with wavemel train")
    if audio_meta.get("sample_rate") != spec_meta.get("sample_rate"):
        raise CheckpointError(
            f"cannot combine {audio_run} and {spec_run}: they differ in sample_rate "
            f"({audio_meta.get('sample_rate')!r} vs {spec_meta.get('sample_rate')!r}); train the "
            "--audio branch at the --spec branch's rate (wavemel train --sample-rate)"
        )
    if not spec_meta.get("train_config"):
        return
    pairs = [
        ("labels", audio_meta.get("labels"), spec_meta.get("labels")),
        ("input_seconds", audio_meta.get("input_seconds"), spec_meta.get("input_seconds")),
    ]
    audio_cfg = audio_meta.get("train_config") or {}
    spec_cfg = spec_meta.get("train_config") or {}
    pairs += [(field, audio_cfg.get(field), spec_cfg.get(field)) for field in SPLIT_FIELDS]
    for field, a, b in pairs:
        same = _same_path(a, b) if field == "data" else a == b
        if not same:
            shown_a, shown_b = (
                (f"{len(a or [])} labels", f"{len(b or [])} labels")
                if field == "labels" and len(a or []) != len(b or [])
                else (repr(a), repr(b))
            )
            if field == "labels" and shown_a == shown_b:
                shown_a, shown_b = "one label list", "another"
            raise CheckpointError(
                f"cannot combine {audio_run} and {spec_run}: they differ in {field} "
                f"({shown_a} vs {shown_b}); train both branches with the same settings"
            )


def resolve_combine_config(config: CombineConfig, audio_meta: dict) -> CombineConfig:
    """Fill the split fields, sample rate, input length (and cache) from the checked branches."""
    branch = audio_meta.get("train_config") or {}
    split = {name: branch.get(name) for name in SPLIT_FIELDS if name != "data"}
    return config.replace(
        data=config.data or branch.get("data"),
        **split,
        sample_rate=int(audio_meta["sample_rate"]),
        input_seconds=float(audio_meta["input_seconds"]),
        # The branches' clip cache already holds these clips at this rate.
        cache_dir=config.cache_dir or branch.get("cache_dir"),
    )


def _loop_config(config: CombineConfig) -> TrainConfig:
    """The :class:`TrainConfig` the shared loop runs with (model "cnn-comb")."""
    shared = {
        name: getattr(config, name)
        for name in TrainConfig.__dataclass_fields__
        if hasattr(config, name) and name not in ("model", "size")
    }
    return TrainConfig(model="cnn-comb", size="custom", mixup_on="wave", **shared)


def _training_windows(
    data: PreparedData, input_samples: int, fill: str, batch_size: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Every input window of the training clips, as inference cuts them, in ``(B, N)`` batches."""
    pending: list[torch.Tensor] = []
    for item in data.train:
        clip = torch.from_numpy(np.asarray(data.store.read(item.index), dtype=np.float32))
        if clip.shape[0] < input_samples:
            pending.append(fill_short(clip[None], None, input_samples, fill)[0])
        else:
            starts = window_starts(clip.shape[0], input_samples)
            pending.extend(clip[start : start + input_samples] for start in starts)
        while len(pending) >= batch_size:
            yield torch.stack(pending[:batch_size]).to(device)
            pending = pending[batch_size:]
    if pending:
        yield torch.stack(pending).to(device)


def combine(config: CombineConfig) -> Path:
    """Train cnn-comb's head on the best checkpoints of ``config.audio_run`` and ``spec_run``.

    Writes the same run folder as :func:`wavemel.train.train`; the checkpoint's model name is
    "cnn-comb" and its config contains both branch configs, so ``load_checkpoint`` rebuilds it.

    Returns:
        The run folder.

    Raises:
        CheckpointError: A branch run is missing or the two runs differ in labels, sample rate,
            input length or split settings (the message names the setting).
    """
    if config.resume:
        config = resume_config(config)
    config.check()
    config = config.with_absolute_paths()
    check_not_inside(config.out, {"--audio": config.audio_run, "--spec": config.spec_run})
    audio_model, audio_meta = load_checkpoint(config.audio_run)
    spec_model, spec_meta = load_checkpoint(config.spec_run)
    check_slots(audio_model, spec_model, audio_meta, config.audio_run, config.spec_run)
    check_branches(audio_meta, spec_meta, config.audio_run, config.spec_run)
    config = resolve_combine_config(config, audio_meta)
    loop_config = _loop_config(config)

    ctx = init_distributed(config.device)
    run = None
    try:
        run = open_run(config, ctx)
        data = prepare_data(loop_config, ctx)
        if list(data.labels) != list(audio_meta["labels"]):
            raise CheckpointError(
                f"{config.data}: its labels differ from those of {config.audio_run}; combine on "
                "the data set the branches were trained on"
            )
        seed_everything(loop_config.seed)
        model = CnnComb(
            audio_model,
            spec_model,
            len(data.labels),
            **_head_settings(config, audio_model, spec_model),
            feature_means=True,
        )
        # The branches are frozen, so their mean training features (the mean-input ablation)
        # are the same before and after the head trains: record them once, into the buffers.
        model.to(ctx.device)
        _record_feature_means(model, data, loop_config, ctx.device)
        start_run(run, config, ctx)
        run_config = config.replace(force=False, resume=False).to_dict()
        run_config["model"] = "cnn-comb"
        extra = {
            "frontend": spec_meta.get("frontend"),
            "branches": {"audio": str(config.audio_run), "spec": str(config.spec_run)},
        }
        fit_args = {"run_config": run_config, "extra_meta": extra, "ctx": ctx}
        if not config.finetune_epochs:
            out = Path(config.out)
            return fit(model, data, loop_config, out, **fit_args, run=run, stage=Stage(HEAD))
        return _head_then_finetune(model, data, config, run, fit_args)
    finally:
        if run is not None:
            run.release()
        cleanup(ctx)


def _head_settings(config: CombineConfig, audio_model, spec_model) -> dict:
    """CnnComb's head arguments: the config's size, and where its weights start."""
    head = {
        k: v for k, v in (("hidden", config.hidden), ("dropout", config.dropout)) if v is not None
    }
    if config.head_init == "branches":
        dense = audio_model.embedding[0].out_features + spec_model.embedding[0].out_features
        head.setdefault("hidden", dense)
        if head["hidden"] != dense:
            raise WavemelError(
                f"--head-init branches needs the head as wide as the branches' dense layers "
                f"together ({dense}), got --hidden {head['hidden']}"
            )
        head["head_from_branches"] = True
    return head


def _record_feature_means(
    model: CnnComb, data: PreparedData, config: TrainConfig, device: torch.device
) -> None:
    """The comb's mean branch features over the training windows, with the branches as they are."""
    # Eval mode: the means are those inference sees, and recording them moves no BatchNorm
    # statistics (the next training epoch switches train mode back on).
    model.eval()
    windows = _training_windows(
        data,
        config.input_samples,
        eval_fill_for(config.p_replicate),
        max(config.batch_size, 64),
        device,
    )
    model.record_feature_means(windows)


def _head_then_finetune(
    model: CnnComb,
    data: PreparedData,
    config: CombineConfig,
    run: RunFolder | None,
    fit_args: dict[str, Any],
) -> Path:
    """The head on the frozen branches, then everything end to end, in one run folder.

    A resumed run continues in the stage its resume state belongs to: a fine-tune interrupted
    after one of its epochs does not train the head again. ``fit_args`` are :func:`fit`'s
    ``run_config``, ``extra_meta`` and ``ctx``, the same for both stages.
    """
    out = Path(config.out)
    ctx: DistContext = fit_args["ctx"]
    loop_config = _loop_config(config)
    resumed = _resumed_stage(out) if config.resume else None
    if resumed != FINETUNE:
        # The head stage ends without finished.json: the run is not finished yet.
        fit(model, data, loop_config, out, **fit_args, run=None, stage=Stage(HEAD))
        barrier(ctx)
        # Fine-tune the best head, not the last one (with the same branch weights).
        best, _ = load_checkpoint(out / "best")
        model.load_state_dict(best.state_dict())
    model.unfreeze_branches(batchnorm_train=not config.finetune_freeze_bn)
    stage = Stage(
        FINETUNE,
        start=_head_progress(out),
        before_save=lambda m: _record_feature_means(m, data, loop_config, ctx.device),
    )
    finetune_config = loop_config.replace(
        epochs=config.finetune_epochs, lr=config.finetune_lr, resume=resumed == FINETUNE
    )
    if ctx.is_main and resumed != FINETUNE:
        print(
            f"fine-tuning cnn-comb end to end for {config.finetune_epochs} epochs "
            f"(lr {config.finetune_lr:g})",
            flush=True,
        )
    return fit(model, data, finetune_config, out, **fit_args, run=run, stage=stage)


def _metric_lines(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    try:
        text = path.read_text() if path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({os_error_reason(exc)})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not one JSON object per line ({exc.msg})") from None


def _resumed_stage(out: Path) -> str:
    """The stage of ``out``'s resume state: that of the last epoch it holds (``HEAD`` if none)."""
    progress = saved_progress(out)
    if progress is None or progress.epoch == 0:
        return HEAD
    lines = _metric_lines(out)
    # metrics.jsonl gets an epoch's line before its state, so it holds the state's last epoch.
    if len(lines) < progress.epoch or not isinstance(lines[progress.epoch - 1], dict):
        raise CheckpointError(f"{out / 'metrics.jsonl'}: fewer epochs than the resume state")
    return HEAD if lines[progress.epoch - 1].get("stage", HEAD) == HEAD else FINETUNE


def _head_progress(out: Path) -> Progress:
    """Where the fine-tune starts: after the head's epochs, with their best validation MAP@3.

    Read from ``metrics.jsonl``, so a resumed run gets the same as an uninterrupted one; the
    best is the first epoch of the highest MAP@3, as the loop chooses it.
    """
    progress = Progress()
    head = [line for line in _metric_lines(out) if line.get("stage", HEAD) == HEAD]
    for line in head:
        score = float(line.get("val_map3", math.nan))
        progress.epoch += 1
        if score > progress.best_map3:
            progress.best_map3, progress.best_epoch = score, progress.epoch
    return progress
