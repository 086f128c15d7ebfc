"""cnn-comb: trained cnn-audio and cnn-spec joined by a new dense head (the poster's combination).

As in the poster, each branch loses its dense and softmax layers: the comb concatenates the
branches' *pooled conv features* (``branch.conv_features(x)``, the vector that fed the removed
dense layer), not their ``features(x)`` embeddings, and trains a new head on top:
Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear. The branch weights are frozen
(``requires_grad=False``) and the branches stay in eval mode even in ``comb.train()``, so their
BatchNorm running statistics never change. :meth:`CnnComb.unfreeze_branches` lifts both for the
optional end-to-end fine-tune that ``wavemel combine --finetune-epochs`` runs after the head.

Two ablations (the poster's Figure 4), each switched by an attribute:

``comb.zero_input``, the poster's literal one:

* ``"audio"``: the audio branch's *waveform* input is all zeros (after its per-example
  standardisation it is still all zeros);
* ``"spec"``: the spectrogram branch's *log-mel input tensor* (the ``(B, 1, n_mels, frames)``
  output of its front end, in dB) is all zeros, i.e. 0 dB everywhere, which then goes through the
  branch's input BatchNorm and conv stack. This mirrors feeding a zero spectrogram to a network
  whose input is the spectrogram. It is *not* a silent waveform: silence would give the log
  floor, -100 dB for ``amin=1e-10``, far outside the training distribution.

Both are out of distribution: the branch's input normalisation expects about -38 dB, so a 0 dB
log-mel is +2 sigma in every bin, and what the head then sees says little about how much it
relies on that branch. ``comb.mean_input`` (``"audio"`` or ``"spec"``) instead replaces that
branch's pooled conv *features* by their mean over the training clips' input windows: the head
keeps an in-distribution input that carries no information about the clip. The means live in
buffers (``audio_feature_mean``, ``spec_feature_mean``, ``feature_mean_windows``) when the comb
is built with ``feature_means=True``, so they travel in the checkpoint; while the branches are
frozen, the means computed once before the head trains (:meth:`CnnComb.record_feature_means`) are
those of the trained comb too (a fine-tune records them again after each of its epochs).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wavemel.models._layers import (
    MAX_DENSE,
    check_num_classes,
    check_parameter_budget,
    check_waveform,
    dense_head,
    dense_head_parameter_count,
)
from wavemel.models._registry import (
    config_for_size,
    create_model,
    model_from_config,
    register_model,
)

ZERO_INPUTS = (None, "audio", "spec")


@dataclass(frozen=True)
class CnnCombConfig:
    """Hyper-parameters of the comb's head.

    Attributes:
        hidden: width of the new dense layer (the comb's embedding).
        dropout: dropout between the dense layer and the classifier.
        feature_means: the comb holds its branches' mean training features (buffers) for the
            ``mean_input`` ablation; ``False`` for combs saved before they existed.
    """

    hidden: int = 512
    dropout: float = 0.5
    feature_means: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int):
            raise ValueError(f"hidden must be a positive integer, got {self.hidden!r}")
        if not 1 <= self.hidden <= MAX_DENSE:
            raise ValueError(f"hidden must be in [1, {MAX_DENSE}], got {self.hidden}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.feature_means, bool):
            raise ValueError(f"feature_means must be true or false, got {self.feature_means!r}")


SIZES: dict[str, CnnCombConfig] = {
    "tiny": CnnCombConfig(hidden=32, dropout=0.1),
    "small": CnnCombConfig(hidden=256, dropout=0.5),
    "paper": CnnCombConfig(hidden=1024, dropout=0.5),
}


@register_model("cnn-comb")
class CnnComb(nn.Module):
    """Frozen cnn-audio and cnn-spec conv features, concatenated, with a new trainable head.

    The branches are deep-copied (the caller's models are left untouched), their dense layer,
    dropout and classifier are removed, and all their parameters are frozen.

    Args:
        audio_model: a trained :class:`~wavemel.models.cnn_audio.CnnAudio` (or any module with
            ``conv_features(x)``, ``conv_dim``, ``sample_rate``, ``name`` and ``config_dict()``).
        spec_model: a trained :class:`~wavemel.models.cnn_spec.CnnSpec` (additionally needs
            ``spectrogram(x)`` and ``conv_features_from_spectrogram(spec)``).
        num_classes: number of output classes.
        hidden: width of the head's dense layer.
        dropout: dropout before the classifier.
        zero_input: ablation switch, ``None``, ``"audio"`` or ``"spec"`` (see module docs).
        feature_means: hold buffers for the branches' mean training features (see module
            docs); fill them with :meth:`record_feature_means`.
        mean_input: ablation switch, ``None``, ``"audio"`` or ``"spec"`` (needs the means).
        head_from_branches: start the head from the branches' own dense layers instead of at
            random (see :meth:`_head_from_branches`); needs ``hidden`` equal to the sum of
            their dense widths.

    Raises:
        ValueError: if the branches' sample rates differ or an argument is out of range.
    """

    name = "cnn-comb"
    SIZES = SIZES

    def __init__(
        self,
        audio_model: nn.Module,
        spec_model: nn.Module,
        num_classes: int,
        hidden: int = 512,
        dropout: float = 0.5,
        zero_input: str | None = None,
        feature_means: bool = False,
        mean_input: str | None = None,
        head_from_branches: bool = False,
    ) -> None:
        super().__init__()
        if audio_model.sample_rate != spec_model.sample_rate:
            raise ValueError(
                f"cnn-comb branches must share a sample rate: {audio_model.name} runs at "
                f"{audio_model.sample_rate} Hz, {spec_model.name} at {spec_model.sample_rate} Hz"
            )
        check_num_classes(num_classes)
        self.head_config = CnnCombConfig(
            hidden=hidden, dropout=dropout, feature_means=feature_means
        )
        in_dim = audio_model.conv_dim + spec_model.conv_dim
        check_parameter_budget("cnn-comb", dense_head_parameter_count(in_dim, hidden, num_classes))
        self.num_classes = int(num_classes)
        self.sample_rate = int(audio_model.sample_rate)
        self.audio = self._strip_branch(audio_model)
        self.spec = self._strip_branch(spec_model)
        self.min_samples = max(self.audio.min_samples, self.spec.min_samples)
        self.embedding, self.dropout, self.classifier = dense_head(
            in_dim, hidden, dropout, self.num_classes
        )
        self.embedding_dim = int(hidden)
        if head_from_branches:
            self._head_from_branches(audio_model, spec_model)
        if feature_means:
            self.register_buffer("audio_feature_mean", torch.zeros(audio_model.conv_dim))
            self.register_buffer("spec_feature_mean", torch.zeros(spec_model.conv_dim))
            # How many windows the means average; 0 until they are recorded.
            self.register_buffer("feature_mean_windows", torch.zeros(()))
        self._zero_input = self._mean_input = None
        self.zero_input = zero_input
        self.mean_input = mean_input
        # Set by unfreeze_branches for the optional end-to-end fine-tune; never saved, so a
        # loaded comb is frozen as before.
        self._branch_norm_trains = False

    def _head_from_branches(self, audio_model: nn.Module, spec_model: nn.Module) -> None:
        """Set the head to the branches' dense layers side by side (before they are dropped).

        The dense weight becomes block-diagonal (audio features to the audio dense units, spec
        features to the spec ones), the BatchNorm and its running statistics are the two
        branches' concatenated, and the classifier reads both halves with the branches' own
        weights, with their biases summed. In eval mode the head's logits are then exactly the
        sum of the two branches' logits (a product of their class probabilities, renormalised),
        a fusion that is rarely worse than either branch, and training the head starts there
        instead of at random weights fitted to features that separate the training clips
        almost perfectly.
        """
        parts = (audio_model, spec_model)
        dense = [m.embedding[0].out_features for m in parts]
        if sum(dense) != self.embedding_dim:
            raise ValueError(
                f"a head started from the branches needs hidden = {dense[0]} + {dense[1]} = "
                f"{sum(dense)} (their dense widths), got {self.embedding_dim}"
            )
        with torch.no_grad():
            weight = self.embedding[0].weight
            weight.zero_()
            row = col = 0
            for model in parts:
                block = model.embedding[0].weight
                weight[row : row + block.shape[0], col : col + block.shape[1]] = block
                row, col = row + block.shape[0], col + block.shape[1]
            norm = self.embedding[1]
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(norm, name).copy_(torch.cat([getattr(m.embedding[1], name) for m in parts]))
            self.classifier.weight.copy_(torch.cat([m.classifier.weight for m in parts], dim=1))
            self.classifier.bias.copy_(parts[0].classifier.bias + parts[1].classifier.bias)

    @staticmethod
    def _strip_branch(model: nn.Module) -> nn.Module:
        branch = copy.deepcopy(model)
        # The poster removes the branches' dense and softmax layers; only the conv stack is used.
        branch.embedding = None
        branch.dropout = None
        branch.classifier = None
        branch.requires_grad_(False)
        return branch.eval()

    @property
    def zero_input(self) -> str | None:
        """Which branch gets an all-zero input: ``None``, ``"audio"`` or ``"spec"``."""
        return self._zero_input

    @zero_input.setter
    def zero_input(self, value: str | None) -> None:
        if value not in ZERO_INPUTS:
            raise ValueError(f"zero_input must be None, 'audio' or 'spec', got {value!r}")
        if value is not None and self._mean_input is not None:
            raise ValueError("zero_input and mean_input are two ablations: set one at a time")
        self._zero_input = value

    @property
    def has_feature_means(self) -> bool:
        """Whether the mean training features are recorded (``mean_input`` can be used)."""
        return self.head_config.feature_means and float(self.feature_mean_windows) > 0

    @property
    def mean_input(self) -> str | None:
        """Which branch's features are replaced by their training mean: ``None``, ``"audio"``,
        ``"spec"``."""
        return self._mean_input

    @mean_input.setter
    def mean_input(self, value: str | None) -> None:
        if value not in ZERO_INPUTS:
            raise ValueError(f"mean_input must be None, 'audio' or 'spec', got {value!r}")
        if value is not None and not self.has_feature_means:
            raise ValueError("mean_input needs the training feature means (record_feature_means)")
        if value is not None and self._zero_input is not None:
            raise ValueError("zero_input and mean_input are two ablations: set one at a time")
        self._mean_input = value

    @torch.no_grad()
    def record_feature_means(self, windows: Iterable[torch.Tensor]) -> int:
        """Averages both branches' pooled conv features over training windows into the buffers.

        Args:
            windows: Batches ``(B, T)`` of input-length training windows at
                :attr:`sample_rate` (on the comb's device).

        Returns:
            The number of windows averaged.

        Raises:
            ValueError: The comb was built without ``feature_means`` or no window was given.
        """
        if not self.head_config.feature_means:
            raise ValueError("this cnn-comb was built without feature_means buffers")
        switches = (self._zero_input, self._mean_input)
        self._zero_input = self._mean_input = None
        audio_sum = torch.zeros_like(self.audio_feature_mean, dtype=torch.float64)
        spec_sum = torch.zeros_like(self.spec_feature_mean, dtype=torch.float64)
        count = 0
        try:
            for batch in windows:
                audio, spec = self.branch_features(batch)
                audio_sum += audio.double().sum(dim=0)
                spec_sum += spec.double().sum(dim=0)
                count += batch.shape[0]
        finally:
            self._zero_input, self._mean_input = switches
        if count == 0:
            raise ValueError("record_feature_means needs at least one training window")
        self.audio_feature_mean.copy_(audio_sum / count)
        self.spec_feature_mean.copy_(spec_sum / count)
        self.feature_mean_windows.fill_(count)
        return count

    def unfreeze_branches(self, batchnorm_train: bool = True) -> None:
        """Make every branch parameter trainable, for an end-to-end fine-tune after the head.

        Args:
            batchnorm_train: Whether :meth:`train` puts the branches in train mode, so their
                BatchNorm layers normalise with batch statistics and update their running ones.
                ``False`` keeps the branches in eval mode: their running statistics stay those
                of branch training (safer when batches are small), only the weights move.
        """
        self.audio.requires_grad_(True)
        self.spec.requires_grad_(True)
        self._branch_norm_trains = bool(batchnorm_train)
        self.train(self.training)

    def train(self, mode: bool = True) -> CnnComb:
        """Set the head's mode; the branches stay in eval mode unless a fine-tune unfroze them."""
        super().train(mode)
        branch_mode = mode and self._branch_norm_trains
        self.audio.train(branch_mode)
        self.spec.train(branch_mode)
        return self

    # -- construction helpers -----------------------------------------------------------------

    @classmethod
    def from_size(
        cls, num_classes: int, size: str = "small", sample_rate: int = 16000, **overrides: Any
    ) -> CnnComb:
        """A comb of freshly initialised branches of a named size (for tests and benchmarks).

        ``overrides`` replace the head's fields (``hidden``, ``dropout``). The real path is
        ``CnnComb(trained_audio, trained_spec, num_classes)``.
        """
        head = config_for_size(CnnCombConfig, SIZES, size, **overrides)
        audio = create_model("cnn-audio", num_classes, size=size, sample_rate=sample_rate)
        spec = create_model("cnn-spec", num_classes, size=size, sample_rate=sample_rate)
        return cls(audio, spec, num_classes, hidden=head.hidden, dropout=head.dropout)

    @classmethod
    def from_config(cls, num_classes: int, config: dict[str, Any]) -> CnnComb:
        """Rebuild from :meth:`config_dict` (branch weights then come from the state dict)."""
        try:
            audio_cfg, spec_cfg = config["audio"], config["spec"]
            head = {k: v for k, v in config.items() if k not in ("audio", "spec", "sample_rate")}
            names = (audio_cfg["name"], spec_cfg["name"])
            branch_configs = (audio_cfg["config"], spec_cfg["config"])
        except (KeyError, TypeError):
            raise ValueError(
                "cnn-comb config needs 'audio' and 'spec' entries of the form "
                "{'name': ..., 'config': {...}}"
            ) from None
        # A comb inside a comb would recurse without bound on a crafted config.
        if "cnn-comb" in names:
            raise ValueError(f"cnn-comb branches cannot be cnn-comb models, got {names!r}")
        # Branch classifier sizes do not matter: those layers are removed.
        audio = model_from_config(names[0], 1, branch_configs[0])
        spec = model_from_config(names[1], 1, branch_configs[1])
        head_cfg = config_for_size(CnnCombConfig, {"_": CnnCombConfig()}, "_", **head)
        return cls(
            audio,
            spec,
            num_classes,
            hidden=head_cfg.hidden,
            dropout=head_cfg.dropout,
            feature_means=head_cfg.feature_means,
        )

    def config_dict(self) -> dict[str, Any]:
        """JSON-able config: head fields plus each branch's name and config."""
        return {
            **dataclasses.asdict(self.head_config),
            "sample_rate": self.sample_rate,
            "audio": {"name": self.audio.name, "config": self.audio.config_dict()},
            "spec": {"name": self.spec.name, "config": self.spec.config_dict()},
        }

    # -- forward --------------------------------------------------------------------------------

    def branch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled conv features of both branches, with the ablation applied.

        Args:
            x: ``(B, T)`` waveform at :attr:`sample_rate`.

        Returns:
            ``(audio_feats (B, audio.conv_dim), spec_feats (B, spec.conv_dim))``.
        """
        check_waveform(self.name, x, self.min_samples)
        frozen = not any(p.requires_grad for p in self.audio.parameters()) and not any(
            p.requires_grad for p in self.spec.parameters()
        )
        # Frozen branches need no autograd graph: saves memory and time while the head trains.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            batch = x.shape[0]
            if self.mean_input == "audio":
                audio = self.audio_feature_mean.to(x.dtype).expand(batch, -1)
            elif self.zero_input == "audio":
                # Branches are in eval mode, so every example of a zero batch gives the same vector.
                audio = self.audio.conv_features(x.new_zeros(1, x.shape[-1])).expand(batch, -1)
            else:
                audio = self.audio.conv_features(x)
            if self.mean_input == "spec":
                spec = self.spec_feature_mean.to(x.dtype).expand(batch, -1)
            elif self.zero_input == "spec":
                frames = self.spec.frontend.num_frames(x.shape[-1])
                zeros = x.new_zeros(1, 1, self.spec.config.n_mels, frames, dtype=torch.float32)
                spec = self.spec.conv_features_from_spectrogram(zeros).expand(batch, -1)
            else:
                spec = self.spec.conv_features(x)
        return audio, spec

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding of the new head: ``(B, T) -> (B, hidden)``."""
        audio, spec = self.branch_features(x)
        return self.embedding(torch.cat([audio, spec], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, T)`` waveform -> ``(B, num_classes)``."""
        return self.classifier(self.dropout(self.features(x)))
