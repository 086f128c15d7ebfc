"""The model a training run starts from: fresh, or a checkpoint's weights (``--init``).

``--init RUN`` fine-tunes: the model is rebuilt from the checkpoint's own config (so its sizes and
front end are the checkpoint's, whatever ``--size`` says), its weights are loaded, and when its
labels differ from the data's the classifier is replaced by a freshly initialised one for the
data's labels. The run's sample rate becomes the checkpoint's, since the weights only make sense
at that rate. ``--freeze N`` then keeps the first N conv blocks fixed (models that offer
``freeze_blocks``, e.g. cnn14).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from wavemel._io import read_json
from wavemel.checkpoint import load_checkpoint, resolve_checkpoint
from wavemel.errors import CheckpointError, WavemelError
from wavemel.models import create_model, model_from_config
from wavemel.train.config import TrainConfig

__all__ = ["build_model", "resolve_init"]

# Weights of the classifier in every wavemel model (see models/_layers.dense_head).
_CLASSIFIER = "classifier."


def _init_meta(config: TrainConfig) -> dict:
    stem = resolve_checkpoint(config.init)
    meta = read_json(stem.with_name(stem.name + ".json"), error=CheckpointError, what="checkpoint")
    if meta.get("model") != config.model:
        raise CheckpointError(
            f"{config.init}: --init holds a {meta.get('model') or 'unknown'} model, not "
            f"{config.model}; pass --model {meta.get('model')}"
        )
    if not isinstance(meta.get("sample_rate"), int):
        raise CheckpointError(f"{config.init}: checkpoint metadata lacks its sample_rate")
    return meta


def resolve_init(config: TrainConfig) -> TrainConfig:
    """``config`` with the sample rate of its ``--init`` checkpoint (unchanged without one).

    Raises:
        CheckpointError: The checkpoint is missing or holds another model than ``--model``.
    """
    if not config.init:
        return config
    rate = _init_meta(config)["sample_rate"]
    if rate != config.sample_rate:
        print(f"--init {config.init}: training at its sample rate, {rate} Hz", flush=True)
    return config.replace(sample_rate=rate)


def build_model(config: TrainConfig, labels: Sequence[str]) -> nn.Module:
    """The model to train: fresh (``--model``, ``--size``) or from ``--init``, then frozen.

    Raises:
        CheckpointError: The ``--init`` checkpoint cannot be loaded.
        WavemelError: ``--freeze`` asks for more blocks than the model has, or for a model that
            cannot freeze blocks.
    """
    if config.init:
        model = _from_init(config, labels)
    else:
        model = create_model(
            config.model, len(labels), size=config.size, sample_rate=config.sample_rate
        )
    if config.freeze_blocks:
        if not hasattr(model, "freeze_blocks"):
            raise WavemelError(f"--freeze: {config.model} cannot freeze blocks")
        try:
            model.freeze_blocks(config.freeze_blocks)
        except ValueError as exc:
            raise WavemelError(f"--freeze {config.freeze_blocks}: {exc}") from None
    return model


def _from_init(config: TrainConfig, labels: Sequence[str]) -> nn.Module:
    source, meta = load_checkpoint(config.init)
    model_config = dict(meta["model_config"])
    if "output_activation" in model_config:
        # The loop trains with softmax cross-entropy, whatever the source was trained with.
        model_config["output_activation"] = "softmax"
    model = model_from_config(meta["model"], len(labels), model_config)
    state = source.state_dict()
    if list(meta.get("labels") or []) == list(labels):
        model.load_state_dict(state)
        return model
    kept = {name: tensor for name, tensor in state.items() if not name.startswith(_CLASSIFIER)}
    missing, _ = model.load_state_dict(kept, strict=False)
    # The model came from the checkpoint's own config, so only the classifier can be missing.
    assert all(name.startswith(_CLASSIFIER) for name in missing), missing
    print(
        f"--init {config.init}: new classifier for the data's {len(labels)} labels "
        f"(the checkpoint has {len(meta.get('labels') or [])})",
        flush=True,
    )
    return model
