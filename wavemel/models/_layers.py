"""Layers shared by the model families."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def dense_head(
    in_dim: int, dense: int, dropout: float, num_classes: int
) -> tuple[nn.Sequential, nn.Dropout, nn.Linear]:
    """The poster's dense head: embedding (Linear-BN-ReLU), dropout and classifier.

    Callers store the three parts as the attributes ``embedding``, ``dropout`` and
    ``classifier``; checkpoints name the weights ``embedding.0.weight``, ``embedding.1.*`` and
    ``classifier.*``, so the Sequential's layout must not change.

    Args:
        in_dim: size of the pooled features fed to the dense layer.
        dense: width of the dense layer (the model's embedding).
        dropout: dropout probability before the classifier.
        num_classes: number of output logits.

    Returns:
        ``(embedding, dropout, classifier)``: ``(B, in_dim) -> (B, dense)``, the dropout module
        and ``(B, dense) -> (B, num_classes)``.
    """
    # BatchNorm follows the dense layer, which makes the Linear bias redundant.
    embedding = nn.Sequential(
        nn.Linear(in_dim, dense, bias=False), nn.BatchNorm1d(dense), nn.ReLU(inplace=True)
    )
    return embedding, nn.Dropout(dropout), nn.Linear(dense, num_classes)


_LAYERS = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d),
}


def conv_bn_relu(
    dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> list[nn.Module]:
    """``[Conv, BatchNorm, ReLU]`` in 1-D or 2-D (``dims``), the VGG unit of both branches."""
    conv, norm, _ = _LAYERS[dims]
    # Odd kernels with k // 2 padding keep the size at stride 1; BN makes the conv bias redundant.
    return [
        conv(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        ),
        norm(out_channels),
        nn.ReLU(inplace=True),
    ]


def vgg_blocks(
    dims: int,
    in_channels: int,
    channels: tuple[int, ...],
    convs_per_block: tuple[int, ...],
    pools: tuple[int, ...],
    kernel_size: int,
) -> tuple[nn.Sequential, int]:
    """VGG-like stack: per block, ``convs_per_block[i]`` x [Conv-BN-ReLU] then max-pooling.

    Checkpoints name the weights ``blocks.<block>.<layer>.*`` (Conv, BN, ReLU per convolution,
    then the pool), so the layout must not change.

    Args:
        dims: 1 (``(B, C, T)`` input) or 2 (``(B, C, H, W)`` input).
        in_channels: channels of the stack's input.
        channels: output channels of each block.
        convs_per_block: convolutions in each block.
        pools: max-pooling factor after each block (over every axis).
        kernel_size: kernel size of every convolution.

    Returns:
        ``(blocks, out_channels)``: the stack and its number of output channels.
    """
    *_, pool_layer = _LAYERS[dims]
    blocks = []
    for out_channels, n_convs, pool in zip(channels, convs_per_block, pools):
        layers: list[nn.Module] = []
        for _ in range(n_convs):
            layers += conv_bn_relu(dims, in_channels, out_channels, kernel_size)
            in_channels = out_channels
        layers.append(pool_layer(pool))
        blocks.append(nn.Sequential(*layers))
    return nn.Sequential(*blocks), in_channels


#: Caps on a VGG-like config, far above the poster's largest ("paper") sizes. A config read
#: from a checkpoint's JSON is checked against them before any layer is built, so an edited or
#: corrupt file cannot ask for gigabytes of weights.
MAX_CHANNELS = 4096
MAX_BLOCKS = 16
MAX_CONVS_PER_BLOCK = 16
MAX_KERNEL = 1024
MAX_POOL = 64
MAX_DENSE = 16384
MAX_CLASSES = 100_000
#: About 1.6 GB of float32 weights; the paper sizes have under 25 million parameters.
MAX_PARAMETERS = 400_000_000
#: Sample rates a model may be built for (telephone speech to high-resolution audio).
SAMPLE_RATE_RANGE = (1000, 384_000)


def check_vgg_config(model_name: str, config: Any, other_sizes: list[Any]) -> None:
    """Validate the fields every VGG-like config shares; raise a clear ``ValueError``.

    Args:
        model_name: used in the message, e.g. ``"cnn-audio"``.
        config: a dataclass with ``sample_rate``, ``channels``, ``convs_per_block``, ``pools``,
            ``kernel_size``, ``dense`` and ``dropout``.
        other_sizes: the family's own fields that must be positive integers too.
    """
    if not len(config.channels) == len(config.convs_per_block) == len(config.pools) >= 1:
        raise ValueError(
            "channels, convs_per_block and pools need one entry per block (at least one); got "
            f"{config.channels}, {config.convs_per_block}, {config.pools}"
        )
    sizes = [*other_sizes, *config.channels, *config.convs_per_block, *config.pools]
    sizes += [config.kernel_size, config.dense]
    # isinstance first: int(inf) raises OverflowError and int("16") is not a comparison.
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
        raise ValueError(f"{model_name} sizes must be positive integers, got {config}")
    low, high = SAMPLE_RATE_RANGE
    if not low <= config.sample_rate <= high:
        raise ValueError(f"sample_rate must be in [{low}, {high}] Hz, got {config.sample_rate}")
    for name, values, cap in (
        ("blocks", [len(config.channels)], MAX_BLOCKS),
        ("channels", config.channels, MAX_CHANNELS),
        ("convs_per_block", config.convs_per_block, MAX_CONVS_PER_BLOCK),
        ("pools", config.pools, MAX_POOL),
        ("kernel_size", [config.kernel_size], MAX_KERNEL),
        ("dense", [config.dense], MAX_DENSE),
    ):
        if max(values) > cap:
            raise ValueError(f"{model_name} {name} is at most {cap}, got {max(values)}")
    if isinstance(config.dropout, bool) or not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")


def vgg_parameter_count(dims: int, in_channels: int, config: Any) -> int:
    """Weights of :func:`vgg_blocks` built from ``config`` (convolutions and BatchNorm)."""
    count = 0
    for out_channels, n_convs in zip(config.channels, config.convs_per_block):
        for _ in range(n_convs):
            count += in_channels * out_channels * config.kernel_size**dims + 2 * out_channels
            in_channels = out_channels
    return count


def check_num_classes(num_classes: Any) -> None:
    """Raise ``ValueError`` unless ``num_classes`` is an integer in ``[1, MAX_CLASSES]``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")


def check_parameter_budget(model_name: str, parameters: int) -> None:
    """Refuse a model larger than :data:`MAX_PARAMETERS`, before any of it is allocated.

    Args:
        model_name: used in the message.
        parameters: the model's parameter count computed from its config.
    """
    if parameters > MAX_PARAMETERS:
        raise ValueError(
            f"{model_name} config asks for {parameters:,} parameters, over the "
            f"{MAX_PARAMETERS:,} limit"
        )


def dense_head_parameter_count(in_dim: int, dense: int, num_classes: int) -> int:
    """Weights of :func:`dense_head` (Linear without bias, BatchNorm, classifier)."""
    return in_dim * dense + 2 * dense + dense * num_classes + num_classes


def check_waveform(model_name: str, x: torch.Tensor, min_samples: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a ``(batch, samples)`` waveform of ``min_samples``.

    Args:
        model_name: used in the message, e.g. ``"cnn-audio"``.
        x: the model's input.
        min_samples: the fewest samples the model accepts.
    """
    if x.dim() != 2:
        raise ValueError(f"{model_name} expects a (batch, samples) waveform, got {tuple(x.shape)}")
    if x.shape[-1] < min_samples:
        raise ValueError(f"{model_name} needs at least {min_samples} samples, got {x.shape[-1]}")


class SpectrogramModel:
    """The waveform entry points of a model with a log-mel front end (mixed into its module).

    The family provides ``self.frontend`` (a :class:`wavemel.frontend.LogMel`), ``name``,
    ``min_samples``, ``min_frames``, ``config.n_mels`` and the three spectrogram stages:
    ``conv_features_from_spectrogram``, ``features_from_spectrogram`` and
    ``forward_spectrogram``. The stages are public so that a trainer can mix spectrograms.
    """

    name: str
    frontend: nn.Module
    min_samples: int
    min_frames: int
    config: Any

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel front end: ``(B, T)`` waveform -> ``(B, 1, n_mels, frames)`` in dB."""
        check_waveform(self.name, x, self.min_samples)
        return self.frontend(x)

    def check_spectrogram(self, spec: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``spec`` is ``(B, 1, n_mels, frames >= min_frames)``."""
        if spec.dim() != 4 or spec.shape[1] != 1 or spec.shape[2] != self.config.n_mels:
            raise ValueError(
                f"{self.name} expects a (batch, 1, {self.config.n_mels}, frames) spectrogram, "
                f"got {tuple(spec.shape)}"
            )
        if spec.shape[-1] < self.min_frames:
            raise ValueError(
                f"{self.name} needs at least {self.min_frames} frames, got {spec.shape[-1]}"
            )

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled conv-stack output (before the dense layer): ``(B, T) -> (B, conv_dim)``."""
        return self.conv_features_from_spectrogram(self.spectrogram(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding after the dense layer: ``(B, T) -> (B, embedding_dim)``."""
        return self.features_from_spectrogram(self.spectrogram(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, T)`` waveform -> ``(B, num_classes)``."""
        return self.forward_spectrogram(self.spectrogram(x))
