"""Layers shared by the model families."""

from __future__ import annotations

from typing import Any

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


def check_vgg_config(model_name: str, config: Any, other_sizes: list[Any]) -> None:
    """Validate the fields every VGG-like config shares; raise a clear ``ValueError``.

    Args:
        model_name: used in the message, e.g. ``"cnn-audio"``.
        config: a dataclass with ``channels``, ``convs_per_block``, ``pools``, ``kernel_size``,
            ``dense`` and ``dropout``.
        other_sizes: the family's own fields that must be positive integers too.
    """
    if not len(config.channels) == len(config.convs_per_block) == len(config.pools) >= 1:
        raise ValueError(
            "channels, convs_per_block and pools need one entry per block (at least one); got "
            f"{config.channels}, {config.convs_per_block}, {config.pools}"
        )
    sizes = [*other_sizes, *config.channels, *config.convs_per_block, *config.pools]
    sizes += [config.kernel_size, config.dense]
    if any(int(v) != v or v < 1 for v in sizes):
        raise ValueError(f"{model_name} sizes must be positive integers, got {config}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
