"""cnn14: the 14-layer log-mel CNN of PANNs (Kong et al., 2020), as a wavemel model family.

Layout: ``self.frontend`` (:class:`wavemel.frontend.LogMel` with reflect-padded frames, no
``top_db``) -> BatchNorm over the mel bands (one statistic per band, learned) -> six blocks of
[Conv3x3-BN-ReLU] x 2, 2x2 average pooling (none after the last block) and dropout, doubling the
channels from 64 to 2048 -> mean over frequency, then max + mean over time (summed, not
concatenated) -> dropout -> dense + ReLU (the embedding) -> classifier.

The published models were trained on AudioSet with sigmoid outputs (multi-label); the model
returns logits like every wavemel model and records the activation its logits were trained for in
``config.output_activation`` ("sigmoid" for imported PANNs weights, "softmax" for what wavemel's
own loop trains). ``wavemel import-weights panns-cnn14`` (:mod:`wavemel.convert`) turns a PANNs
``.pth`` into a checkpoint of this model.

The spectrogram is laid out ``(B, 1, n_mels, frames)`` as in cnn-spec (PANNs uses
``(B, 1, frames, n_mels)``); the 3x3 kernels and 2x2 pools are symmetric, so the importer only
transposes the kernels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from wavemel.frontend import PANNS_LOG_MEL, LogMel
from wavemel.models._layers import SpectrogramModel
from wavemel.models._registry import ConfiguredModel, register_model

#: Activations a model's logits can be meant for.
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid")


# The importer (wavemel.convert) resolves a PANNs release's settings through these two.
def cnn14_hop_length(sample_rate: int) -> int:
    """PANNs' 10 ms hop (320 at 32 kHz, 160 at 16 kHz)."""
    return PANNS_LOG_MEL.hop_length(sample_rate)


def cnn14_fmax(sample_rate: int) -> float:
    """PANNs' 14 kHz, or the Nyquist frequency below 28 kHz (8000 at 16 kHz)."""
    return PANNS_LOG_MEL.fmax_at(sample_rate)


@dataclass(frozen=True)
class Cnn14Config:
    """Hyper-parameters of cnn14 (front end included).

    Attributes:
        sample_rate: input sample rate in Hz (the AudioSet release: 32000).
        n_fft: FFT size and window (``None``: :data:`~wavemel.frontend.PANNS_LOG_MEL`'s, the
            power of two nearest 32 ms: 1024 at 32 kHz).
        hop_length: frame hop (``None``: :data:`~wavemel.frontend.PANNS_LOG_MEL`'s, 10 ms).
        n_mels: mel bands.
        fmin: lowest mel frequency in Hz.
        fmax: highest mel frequency in Hz (``None``: 14 kHz, capped at Nyquist).
        amin: power floor before the log (1e-10 -> -100 dB).
        channels: output channels of each block; every block but the last halves both axes.
        dense: width of the dense layer (the embedding returned by ``features``).
        block_dropout: dropout after each block.
        dropout: dropout on the pooled features, before the dense layer.
        output_activation: what the logits are meant for, "softmax" or "sigmoid" (multi-label).
    """

    sample_rate: int = 32000
    n_fft: int | None = None
    hop_length: int | None = None
    n_mels: int = PANNS_LOG_MEL.n_mels
    fmin: float = PANNS_LOG_MEL.fmin
    fmax: float | None = None
    amin: float = PANNS_LOG_MEL.amin
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    dense: int = 2048
    block_dropout: float = 0.2
    dropout: float = 0.5
    output_activation: str = "softmax"

    def __post_init__(self) -> None:
        sizes = [self.sample_rate, self.n_mels, self.dense, *self.channels]
        if not self.channels or any(int(v) != v or v < 1 for v in sizes):
            raise ValueError(f"cnn14 sizes must be positive integers, got {self}")
        for name in ("block_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {OUTPUT_ACTIVATIONS}, "
                f"got {self.output_activation!r}"
            )
        if 2 ** (len(self.channels) - 1) > self.n_mels:
            raise ValueError(
                f"n_mels={self.n_mels} is too few for {len(self.channels) - 1} pooling blocks "
                f"(need at least {2 ** (len(self.channels) - 1)})"
            )


SIZES: dict[str, Cnn14Config] = {
    # For tests: the same layout at 1/8 of the width (~0.1 M parameters at 10 classes).
    "tiny": Cnn14Config(channels=(8, 16, 32, 64, 128, 256), dense=64),
    # Half the width, a quarter of the published model's parameters, for CPU training.
    "small": Cnn14Config(channels=(32, 64, 128, 256, 512, 1024), dense=1024),
    # The published CNN14 (80 M parameters at 527 classes).
    "paper": Cnn14Config(),
}


def _block(in_channels: int, out_channels: int, pool: bool, dropout: float) -> nn.Sequential:
    """[Conv3x3-BN-ReLU] x 2, 2x2 average pooling (or none) and dropout.

    Checkpoints name the weights ``blocks.<i>.{0,1,3,4}.*``, so the layout must not change.
    """
    layers: list[nn.Module] = []
    for cin in (in_channels, out_channels):
        # BatchNorm follows every convolution, which makes a conv bias redundant.
        layers += [
            nn.Conv2d(cin, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.AvgPool2d(2) if pool else nn.Identity(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


@register_model("cnn14")
class Cnn14(SpectrogramModel, ConfiguredModel, nn.Module):
    """PANNs' CNN14 on the log-mel spectrogram, with the front end inside the model.

    Args:
        num_classes: number of output classes.
        config: hyper-parameters (see :class:`Cnn14Config` and :data:`SIZES`); ``n_fft``,
            ``hop_length`` and ``fmax`` left at ``None`` are resolved from the sample rate and
            stored resolved in :attr:`config`.

    The waveform entry points (``spectrogram``, ``conv_features``, ``features``, ``forward``)
    come from :class:`~wavemel.models._layers.SpectrogramModel`; apply ``output_activation``
    to the logits.
    """

    name = "cnn14"
    Config = Cnn14Config
    SIZES = SIZES
    default_size = "paper"
    default_sample_rate = 32000
    #: Its 2-D convolutions run faster in NHWC on CUDA.
    prefers_channels_last = True

    def __init__(self, num_classes: int, config: Cnn14Config | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg = config or Cnn14Config()
        rate = cfg.sample_rate
        cfg = dataclasses.replace(
            cfg,
            n_fft=cfg.n_fft or PANNS_LOG_MEL.n_fft(rate),
            hop_length=cfg.hop_length or PANNS_LOG_MEL.hop_length(rate),
            fmax=PANNS_LOG_MEL.fmax_at(rate) if cfg.fmax is None else float(cfg.fmax),
        )
        self.config = cfg
        self.num_classes = int(num_classes)
        self.sample_rate = int(rate)
        #: What the logits are meant for: "sigmoid" (multi-label) or "softmax".
        self.output_activation = cfg.output_activation

        self.frontend = LogMel(
            sample_rate=rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            fmin=cfg.fmin,
            fmax=cfg.fmax,
            top_db=PANNS_LOG_MEL.top_db,
            amin=cfg.amin,
            pad_mode=PANNS_LOG_MEL.pad_mode,
        )
        # One learned normalisation per mel band (PANNs' "bn0").
        self.input_norm = nn.BatchNorm2d(cfg.n_mels)
        widths = (1, *cfg.channels)
        last = len(cfg.channels) - 1
        self.blocks = nn.Sequential(
            *(
                _block(widths[i], widths[i + 1], pool=i < last, dropout=cfg.block_dropout)
                for i in range(len(cfg.channels))
            )
        )
        #: Size of :meth:`conv_features` (max + mean over time, summed).
        self.conv_dim = cfg.channels[-1]
        self.dropout = nn.Dropout(cfg.dropout)
        self.embedding = nn.Sequential(nn.Linear(self.conv_dim, cfg.dense), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(cfg.dense, self.num_classes)
        self.embedding_dim = cfg.dense
        #: Fewest spectrogram frames (and mel bands) the pooling stack accepts.
        self.min_frames = 2**last
        #: Fewest waveform samples :meth:`forward` accepts.
        self.min_samples = max(cfg.n_fft, (self.min_frames - 1) * cfg.hop_length)
        #: Blocks (with ``input_norm``) kept frozen by :meth:`freeze_blocks`.
        self.frozen_blocks = 0
        # PANNs' initialisation (Xavier-uniform weights, zero biases), so that a model trained
        # from scratch here starts where the published recipe starts.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- construction helpers -----------------------------------------------------------------

    # -- fine-tuning ----------------------------------------------------------------------------

    def freeze_blocks(self, count: int) -> None:
        """Freeze the input normalisation and the first ``count`` blocks.

        Frozen modules get ``requires_grad=False`` and stay in eval mode even in
        ``model.train()``, so their BatchNorm statistics do not drift either.

        Raises:
            ValueError: ``count`` is not in ``[0, len(blocks)]``.
        """
        if not 0 <= count <= len(self.blocks):
            raise ValueError(f"can freeze 0 to {len(self.blocks)} blocks of cnn14, not {count}")
        self.frozen_blocks = int(count)
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if not self.frozen_blocks:
            return []
        # The first block sees the normalised bands: freezing it alone would let them shift.
        return [self.input_norm, *self.blocks[: self.frozen_blocks]]

    def train(self, mode: bool = True) -> Cnn14:
        """Set the training mode; frozen blocks always stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    # -- forward --------------------------------------------------------------------------------

    def conv_features_from_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Pooled conv-stack output of a log-mel batch.

        Args:
            spec: ``(B, 1, n_mels, frames)`` log-mel in dB, ``frames >= min_frames``.

        Returns:
            ``(B, conv_dim)``: mean over frequency, then max plus mean over time.
        """
        self.check_spectrogram(spec)
        # The bands become the channels for the per-band normalisation.
        h = self.input_norm(spec.transpose(1, 2)).transpose(1, 2)
        h = self.blocks(h).mean(dim=2)  # (B, C, frames')
        return h.amax(dim=-1) + h.mean(dim=-1)

    def features_from_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Embedding of a log-mel batch: ``(B, 1, n_mels, frames) -> (B, embedding_dim)``."""
        return self.embedding(self.dropout(self.conv_features_from_spectrogram(spec)))

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Logits of a log-mel batch: ``(B, 1, n_mels, frames) -> (B, num_classes)``."""
        return self.classifier(self.features_from_spectrogram(spec))
