"""cnn-comb: train a new dense head on two trained branches with the same loop as ``train``.

The two branch runs must have been trained on the same labels, at the same sample rate and input
length, with the same train/validation split (data, format, label pattern, groups, folds, fold,
seed, validation split): otherwise the head would be validated on clips a branch was trained on.
The split is then rebuilt from those shared settings, the branches are frozen inside
``CnnComb`` and only the head's parameters reach the optimizer. A ``--spec`` branch of imported
weights (no training run here, e.g. PANNs' cnn14) only has to share the sample rate; rates are
never converted inside the comb, so the ``--audio`` branch is trained at that rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wavemel.augment import eval_fill_for, fill_short
from wavemel.checkpoint import load_checkpoint
from wavemel.errors import CheckpointError
from wavemel.infer import window_starts
from wavemel.models.cnn_comb import CnnComb
from wavemel.train.config import SPLIT_FIELDS, CombineConfig, TrainConfig, resume_config
from wavemel.train.distributed import cleanup, init_distributed
from wavemel.train.loader import PreparedData, prepare_data
from wavemel.train.loop import fit, open_run, seed_everything, start_run
from wavemel.train.run_folder import check_not_inside

__all__ = ["combine", "check_branches", "check_slots", "resolve_combine_config"]


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
        head = {"hidden": config.hidden, "dropout": config.dropout}
        model = CnnComb(
            audio_model,
            spec_model,
            len(data.labels),
            **{k: v for k, v in head.items() if v is not None},
            feature_means=True,
        )
        # The branches are frozen, so their mean training features (the mean-input ablation)
        # are the same before and after the head trains: record them once, into the buffers.
        model.to(ctx.device)
        model.record_feature_means(
            _training_windows(
                data,
                loop_config.input_samples,
                eval_fill_for(loop_config.p_replicate),
                max(loop_config.batch_size, 64),
                ctx.device,
            )
        )
        start_run(run, config, ctx)
        run_config = config.replace(force=False, resume=False).to_dict()
        run_config["model"] = "cnn-comb"
        extra = {
            "frontend": spec_meta.get("frontend"),
            "branches": {"audio": str(config.audio_run), "spec": str(config.spec_run)},
        }
        return fit(
            model,
            data,
            loop_config,
            Path(config.out),
            run_config=run_config,
            extra_meta=extra,
            ctx=ctx,
            run=run,
        )
    finally:
        if run is not None:
            run.release()
        cleanup(ctx)
