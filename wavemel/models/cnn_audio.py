"""cnn-audio: a VGG-like 1-D CNN on the raw waveform (the poster's raw-audio branch).

Layout: per-example standardisation -> strided stem conv (cuts the rate by ``stem_stride``) ->
blocks of [Conv1d-BN-ReLU] x n then max-pooling, widening the channels -> global max+mean pooling
over time -> dense-BN-ReLU (the embedding) -> dropout -> classifier. Global pooling makes the
network accept any input of at least :attr:`CnnAudio.min_samples` samples (well under one second
for every named size), so 1, 2 or 3 s training crops and longer inference windows need no change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wavemel.models._layers import (
    MAX_CHANNELS,
    MAX_KERNEL,
    check_num_classes,
    check_parameter_budget,
    check_vgg_config,
    check_waveform,
    conv_bn_relu,
    dense_head,
    dense_head_parameter_count,
    vgg_blocks,
    vgg_parameter_count,
)
from wavemel.models._registry import ConfiguredModel, register_model

# Standardisation floor for the per-example standard deviation: about -80 dBFS, so digital
# silence with a little dither is not blown up to unit variance.
_STD_FLOOR = 1e-4


@dataclass(frozen=True)
class CnnAudioConfig:
    """Hyper-parameters of cnn-audio.

    Attributes:
        sample_rate: input sample rate in Hz.
        stem_channels: channels of the strided first convolution.
        stem_kernel: kernel size of the first convolution.
        stem_stride: stride of the first convolution (rate reduction before the blocks).
        channels: output channels of each block.
        convs_per_block: number of Conv1d-BN-ReLU layers in each block.
        pools: max-pooling factor after each block.
        kernel_size: kernel size of the block convolutions.
        dense: width of the dense layer (the embedding returned by ``features``).
        dropout: dropout before the classifier.
        normalize: ``"standardize"`` (zero mean, unit variance per example) or ``"none"``.
    """

    sample_rate: int = 16000
    stem_channels: int = 16
    stem_kernel: int = 11
    stem_stride: int = 4
    channels: tuple[int, ...] = (16, 32, 64, 128)
    convs_per_block: tuple[int, ...] = (2, 2, 2, 2)
    pools: tuple[int, ...] = (4, 4, 4, 4)
    kernel_size: int = 7
    dense: int = 128
    dropout: float = 0.3
    normalize: str = "standardize"

    def __post_init__(self) -> None:
        stem = [self.sample_rate, self.stem_channels, self.stem_kernel, self.stem_stride]
        check_vgg_config("cnn-audio", self, stem)
        stem_too_big = max(self.stem_kernel, self.stem_stride) > MAX_KERNEL
        if self.stem_channels > MAX_CHANNELS or stem_too_big:
            raise ValueError(
                f"cnn-audio stem_channels is at most {MAX_CHANNELS} and stem_kernel / stem_stride "
                f"at most {MAX_KERNEL}, got {self.stem_channels}, {self.stem_kernel}, "
                f"{self.stem_stride}"
            )
        if self.normalize not in ("standardize", "none"):
            raise ValueError(f"normalize must be 'standardize' or 'none', got {self.normalize!r}")


SIZES: dict[str, CnnAudioConfig] = {
    # For tests: a batch of 8 two-second 16 kHz clips runs forward+backward in ~0.1 s on 2 cores.
    "tiny": CnnAudioConfig(
        stem_channels=8,
        channels=(8, 16, 32),
        convs_per_block=(2, 2, 2),
        pools=(4, 4, 4),
        kernel_size=5,
        dense=32,
        dropout=0.1,
    ),
    # CPU training of small data sets (the defaults above).
    "small": CnnAudioConfig(),
    # VGG-19 scale: 1 stem + 16 block convolutions, channels 64 -> 512 (for a GPU).
    "paper": CnnAudioConfig(
        stem_channels=64,
        channels=(64, 128, 256, 256, 512, 512),
        convs_per_block=(2, 2, 3, 3, 3, 3),
        pools=(4, 4, 4, 2, 2, 2),
        kernel_size=7,
        dense=1024,
        dropout=0.5,
    ),
}


@register_model("cnn-audio")
class CnnAudio(ConfiguredModel, nn.Module):
    """VGG-like 1-D CNN on the raw waveform.

    Input normalisation: each example is standardised (zero mean, unit standard deviation, the
    deviation floored at 1e-4) because clip levels in Freesound-style data vary by tens of dB and
    a raw-waveform CNN has no log compression to absorb that; an all-zero input stays all zeros
    (this is what cnn-comb's ``zero_input="audio"`` feeds). ``normalize="none"`` disables it.

    Args:
        num_classes: number of output classes.
        config: hyper-parameters (see :class:`CnnAudioConfig` and :data:`SIZES`).
    """

    name = "cnn-audio"
    Config = CnnAudioConfig
    SIZES = SIZES

    def __init__(self, num_classes: int, config: CnnAudioConfig | None = None) -> None:
        super().__init__()
        self.config = config or CnnAudioConfig()
        cfg = self.config
        check_num_classes(num_classes)
        check_parameter_budget("cnn-audio", self.parameter_count(cfg, num_classes))
        self.num_classes = int(num_classes)
        self.sample_rate = int(cfg.sample_rate)

        self.stem = nn.Sequential(
            *conv_bn_relu(1, 1, cfg.stem_channels, cfg.stem_kernel, stride=cfg.stem_stride)
        )
        self.blocks, in_channels = vgg_blocks(
            1, cfg.stem_channels, cfg.channels, cfg.convs_per_block, cfg.pools, cfg.kernel_size
        )
        #: Size of :meth:`conv_features` (max and mean pooling concatenated).
        self.conv_dim = 2 * in_channels
        self.embedding, self.dropout, self.classifier = dense_head(
            self.conv_dim, cfg.dense, cfg.dropout, self.num_classes
        )
        self.embedding_dim = cfg.dense
        self.min_samples = self._min_samples()
        if self.min_samples > self.sample_rate:
            raise ValueError(
                f"cnn-audio config reduces the rate too much: it needs {self.min_samples} samples, "
                f"more than one second at {self.sample_rate} Hz"
            )
        self._init_weights()

    # -- construction helpers -----------------------------------------------------------------

    @staticmethod
    def parameter_count(config: CnnAudioConfig, num_classes: int) -> int:
        """Parameters (and BatchNorm statistics) a model of ``config`` has, without building it."""
        stem = config.stem_channels * config.stem_kernel + 2 * config.stem_channels
        blocks = vgg_parameter_count(1, config.stem_channels, config)
        head = dense_head_parameter_count(2 * config.channels[-1], config.dense, num_classes)
        return stem + blocks + head

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _output_length(self, num_samples: int) -> int:
        cfg = self.config
        pad = cfg.stem_kernel // 2
        length = (num_samples + 2 * pad - cfg.stem_kernel) // cfg.stem_stride + 1
        for pool in cfg.pools:
            length //= pool
        return length

    def _min_samples(self) -> int:
        # Bounded search: a config that needs more than a second is refused by the caller, and
        # an unbounded loop would spin for ages on absurd pooling factors.
        num_samples = 1
        while self._output_length(num_samples) < 1 and num_samples <= self.sample_rate:
            num_samples += 1
        return num_samples

    # -- forward --------------------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example standardisation of ``(B, T)`` waveforms (identity if disabled)."""
        if self.config.normalize == "none":
            return x
        mean = x.mean(dim=-1, keepdim=True)
        std = x.std(dim=-1, keepdim=True, unbiased=False).clamp_min(_STD_FLOOR)
        return (x - mean) / std

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled output of the conv stack (before the dense layer).

        Args:
            x: ``(B, T)`` waveform at :attr:`sample_rate`, ``T >= min_samples``.

        Returns:
            ``(B, conv_dim)``: global max pooling over time concatenated with mean pooling.
        """
        check_waveform(self.name, x, self.min_samples)
        h = self.blocks(self.stem(self.normalize(x).unsqueeze(1)))  # (B, C, frames)
        return torch.cat([h.amax(dim=-1), h.mean(dim=-1)], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding after the dense-BN-ReLU layer: ``(B, T) -> (B, embedding_dim)``."""
        return self.embedding(self.conv_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, T)`` waveform -> ``(B, num_classes)``."""
        return self.classifier(self.dropout(self.features(x)))
