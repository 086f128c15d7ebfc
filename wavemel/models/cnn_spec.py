"""cnn-spec: a VGG-like 2-D CNN on the log-mel spectrogram (the poster's spectrogram branch).

Layout: ``self.frontend`` (:class:`wavemel.frontend.LogMel`, so the model takes a waveform like
every other model) -> BatchNorm2d over the single input channel (a learned normalisation of the
dB values) -> blocks of [Conv2d-BN-ReLU] x n then 2-D max-pooling, widening the channels -> mean
over frequency, then max+mean over time -> dense-BN-ReLU (the embedding) -> dropout -> classifier.

The spectrogram stage is exposed separately (:meth:`CnnSpec.spectrogram`,
:meth:`CnnSpec.forward_spectrogram`) so a trainer can apply mixup to spectrograms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from wavemel.frontend import LOG_MEL, LogMel
from wavemel.models._layers import (
    SpectrogramModel,
    check_num_classes,
    check_parameter_budget,
    check_vgg_config,
    dense_head,
    dense_head_parameter_count,
    vgg_blocks,
    vgg_parameter_count,
)
from wavemel.models._registry import ConfiguredModel, register_model

_MAX_N_FFT = 65536
_MAX_N_MELS = 1024


@dataclass(frozen=True)
class CnnSpecConfig:
    """Hyper-parameters of cnn-spec (front end included).

    Attributes:
        sample_rate: input sample rate in Hz.
        n_fft: FFT size (``None``: :data:`~wavemel.frontend.LOG_MEL`'s, the smallest power of
            two covering 64 ms at ``sample_rate``).
        hop_length: frame hop (``None``: :data:`~wavemel.frontend.LOG_MEL`'s, 20 ms).
        n_mels: mel bands.
        fmin: lowest mel frequency in Hz.
        fmax: highest mel frequency in Hz (``None``: ``sample_rate / 2``).
        top_db: per-example dynamic-range floor in dB (``None``: only the ``amin`` floor).
        amin: power floor before the log (1e-10 -> -100 dB).
        channels: output channels of each block.
        convs_per_block: Conv2d-BN-ReLU layers in each block.
        pools: max-pooling factor (both axes) after each block.
        kernel_size: kernel size of the convolutions.
        dense: width of the dense layer (the embedding returned by ``features``).
        dropout: dropout before the classifier.
    """

    sample_rate: int = 16000
    n_fft: int | None = None
    hop_length: int | None = None
    n_mels: int = LOG_MEL.n_mels
    fmin: float = LOG_MEL.fmin
    fmax: float | None = LOG_MEL.fmax
    top_db: float | None = LOG_MEL.top_db
    amin: float = LOG_MEL.amin
    channels: tuple[int, ...] = (16, 32, 64, 128)
    convs_per_block: tuple[int, ...] = (2, 2, 2, 2)
    pools: tuple[int, ...] = (2, 2, 2, 2)
    kernel_size: int = 3
    dense: int = 128
    dropout: float = 0.3

    def __post_init__(self) -> None:
        check_vgg_config("cnn-spec", self, [self.sample_rate, self.n_mels])
        # The front end's window and filterbank grow with n_fft * n_mels: cap both well above
        # any real setting (the paper size uses 1024 and 128).
        for name, value, cap in (
            ("n_fft", self.n_fft, _MAX_N_FFT),
            ("hop_length", self.hop_length, _MAX_N_FFT),
            ("n_mels", self.n_mels, _MAX_N_MELS),
        ):
            if value is not None and not 1 <= value <= cap:
                raise ValueError(f"cnn-spec {name} must be in [1, {cap}], got {value}")
        if math.prod(self.pools) > self.n_mels:
            raise ValueError(
                f"n_mels={self.n_mels} is too few for pooling factors {self.pools} "
                f"(need at least {math.prod(self.pools)})"
            )


SIZES: dict[str, CnnSpecConfig] = {
    # For tests: a batch of 8 two-second 16 kHz clips runs forward+backward in ~0.1 s on 2 cores.
    "tiny": CnnSpecConfig(
        n_mels=32,
        channels=(8, 16, 32),
        convs_per_block=(2, 2, 2),
        pools=(2, 2, 2),
        dense=32,
        dropout=0.1,
    ),
    # CPU training of small data sets (the defaults above).
    "small": CnnSpecConfig(),
    # VGG-19: 16 convolutions in blocks of 2, 2, 4, 4, 4 with 64 -> 512 channels (for a GPU).
    "paper": CnnSpecConfig(
        n_mels=128,
        channels=(64, 128, 256, 512, 512),
        convs_per_block=(2, 2, 4, 4, 4),
        pools=(2, 2, 2, 2, 2),
        dense=1024,
        dropout=0.5,
    ),
}


@register_model("cnn-spec")
class CnnSpec(SpectrogramModel, ConfiguredModel, nn.Module):
    """VGG-like 2-D CNN on the log-mel spectrogram, with the front end inside the model.

    Works with ``channels_last`` memory format and under autocast (the front end itself runs
    in float32). The waveform entry points (``spectrogram``, ``conv_features``, ``features``,
    ``forward``) come from :class:`~wavemel.models._layers.SpectrogramModel`.

    Args:
        num_classes: number of output classes.
        config: hyper-parameters (see :class:`CnnSpecConfig` and :data:`SIZES`); ``n_fft`` and
            ``hop_length`` left at ``None`` are resolved from the sample rate and stored resolved
            in :attr:`config`.
    """

    name = "cnn-spec"
    Config = CnnSpecConfig
    SIZES = SIZES
    #: Its 2-D convolutions run faster in NHWC on CUDA (asked by the trainer, never by name).
    prefers_channels_last = True

    def __init__(self, num_classes: int, config: CnnSpecConfig | None = None) -> None:
        super().__init__()
        check_num_classes(num_classes)
        cfg = config or CnnSpecConfig()
        cfg = dataclasses.replace(
            cfg,
            n_fft=cfg.n_fft or LOG_MEL.n_fft(cfg.sample_rate),
            hop_length=cfg.hop_length or LOG_MEL.hop_length(cfg.sample_rate),
        )
        check_parameter_budget("cnn-spec", self.parameter_count(cfg, num_classes))
        self.config = cfg
        self.num_classes = int(num_classes)
        self.sample_rate = int(cfg.sample_rate)

        self.frontend = LogMel(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            fmin=cfg.fmin,
            fmax=cfg.fmax,
            top_db=cfg.top_db,
            amin=cfg.amin,
            pad_mode=LOG_MEL.pad_mode,
        )
        # Learned normalisation of the dB values (their scale depends on the recording level).
        self.input_norm = nn.BatchNorm2d(1)
        self.blocks, in_channels = vgg_blocks(
            2, 1, cfg.channels, cfg.convs_per_block, cfg.pools, cfg.kernel_size
        )
        #: Size of :meth:`conv_features` (max and mean pooling over time concatenated).
        self.conv_dim = 2 * in_channels
        self.embedding, self.dropout, self.classifier = dense_head(
            self.conv_dim, cfg.dense, cfg.dropout, self.num_classes
        )
        self.embedding_dim = cfg.dense
        #: Fewest spectrogram frames the pooling stack accepts.
        self.min_frames = math.prod(cfg.pools)
        #: Fewest waveform samples :meth:`forward` accepts.
        self.min_samples = max(cfg.n_fft, (self.min_frames - 1) * cfg.hop_length)
        if self.min_samples > self.sample_rate:
            raise ValueError(
                f"cnn-spec config needs {self.min_samples} samples, more than one second at "
                f"{self.sample_rate} Hz; use fewer pooling blocks or a shorter hop"
            )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    # -- construction helpers -----------------------------------------------------------------

    @staticmethod
    def parameter_count(config: CnnSpecConfig, num_classes: int) -> int:
        """Parameters and buffers (front end included) of a model of ``config``, unbuilt.

        ``config`` must have ``n_fft`` resolved (not ``None``).
        """
        frontend = config.n_fft + config.n_mels * (config.n_fft // 2 + 1)
        blocks = 4 + vgg_parameter_count(2, 1, config)  # 4: the input BatchNorm's tensors
        head = dense_head_parameter_count(2 * config.channels[-1], config.dense, num_classes)
        return frontend + blocks + head

    # -- forward --------------------------------------------------------------------------------

    def conv_features_from_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Pooled conv-stack output of a log-mel batch.

        Args:
            spec: ``(B, 1, n_mels, frames)`` log-mel in dB, ``frames >= min_frames``.

        Returns:
            ``(B, conv_dim)``: mean over frequency, then max and mean over time, concatenated.
        """
        self.check_spectrogram(spec)
        h = self.blocks(self.input_norm(spec)).mean(dim=2)  # (B, C, frames')
        return torch.cat([h.amax(dim=-1), h.mean(dim=-1)], dim=1)

    def features_from_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Embedding of a log-mel batch: ``(B, 1, n_mels, frames) -> (B, embedding_dim)``."""
        return self.embedding(self.conv_features_from_spectrogram(spec))

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Logits of a log-mel batch: ``(B, 1, n_mels, frames) -> (B, num_classes)``."""
        return self.classifier(self.dropout(self.features_from_spectrogram(spec)))
