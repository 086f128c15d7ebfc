"""Training configurations: dataclass defaults, then an optional JSON file, then CLI flags.

``TrainConfig`` drives ``wavemel train`` (one branch, cnn-audio or cnn-spec) and
``CombineConfig`` drives ``wavemel combine`` (cnn-comb's head on two trained branches). The
resolved configuration is written to ``RUN/config.json``; it records everything needed to rebuild
the train/validation split (data, format, label_pattern, group_field, folds, fold, seed,
val_split), which is what ``--resume``, ``wavemel evaluate`` and ``wavemel combine`` read back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from wavemel._fields import check_field_types
from wavemel._io import atomic_write_text, read_json
from wavemel.checkpoint import MAX_INPUT_SECONDS
from wavemel.data.splits import SPLIT_FIELDS
from wavemel.errors import CheckpointError, WavemelError
from wavemel.models._layers import SAMPLE_RATE_RANGE
from wavemel.train.ema import check_ema_decay

__all__ = [
    "TrainConfig",
    "CombineConfig",
    "SPLIT_FIELDS",
    "load_config_file",
    "layer_config",
    "resume_config",
]


_Config = TypeVar("_Config", bound="_RunConfig")


@dataclass
class _RunConfig:
    """The settings both configurations share, their JSON round trip and checks.

    Attributes:
        out: Run folder.
        format: Dataset layout; ``None`` auto-detects.
        label_pattern: File-name pattern for the "pattern" format.
        group_field: Record field whose value keeps clips together in one fold (e.g. speaker).
        val_split: Use the dataset's own labelled split of this name (e.g. "test") for validation
            instead of a fold.
        test_fold: Hold this fold out of training and validation (k-fold data without a test
            split): it is scored afterwards as split "heldout", while ``fold`` chooses the epoch.
        hop_seconds: Window hop for whole-clip validation; ``None`` uses the inference default.
        val_every: Validate every this many epochs (and always after the last); the best epoch
            is chosen among the validated ones and patience counts epochs. Validation is 5-10%
            of a small CPU epoch (``benchmarks/profile_epoch.py``).
        batch_size: Batch size per process under torchrun.
        lr, weight_decay: AdamW.
        mixup_alpha: Beta(alpha, alpha) mixup; 0 disables it.
        p_replicate: Probability that a short clip is replicated rather than zero-padded.
        verified_weight, unverified_weight: Loss weight of clips whose label was (not) manually
            verified; clips without that information count as verified.
        log_every: Progress-bar refresh interval in steps.
        device: "auto" picks CUDA when available.
        workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: Page-locked host batches for faster CUDA copies (ignored on CPU).
        amp: Mixed precision on CUDA (bfloat16 where supported, else float16 + GradScaler).
        channels_last: NHWC memory format for cnn-spec on CUDA (faster convolutions), and on the
            CPU with ``cpu_amp``.
        cpu_amp: bfloat16 autocast for the training steps on a CPU with bfloat16 units (AMX,
            AVX512-BF16 or Arm BF16: ``wavemel._device.cpu_has_bf16_units``); elsewhere oneDNN
            would emulate it, slower than float32, so those CPUs train in float32 (and say so).
            Off by default: it changes the numerics, so whether a recipe keeps its MAP@3 is
            measured, not assumed. Validation stays float32.
        compile: ``torch.compile`` the model.
        cache_dir: Clip cache; ``None`` uses ``$WAVEMEL_CACHE`` or ``~/.cache/wavemel``.
        force: Replace an existing run folder.
        resume: Continue the interrupted run in ``out`` from ``out/state``.
    """

    out: str = ""
    format: str | None = None
    label_pattern: str | None = None
    group_field: str | None = None
    val_split: str | None = None
    test_fold: int | None = None
    hop_seconds: float | None = None
    val_every: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    mixup_alpha: float = 0.4
    p_replicate: float = 0.5
    verified_weight: float = 1.0
    unverified_weight: float = 1.0
    log_every: int = 10
    device: str = "auto"
    workers: int = 2
    pin_memory: bool = True
    amp: bool = True
    channels_last: bool = True
    cpu_amp: bool = False
    compile: bool = False
    cache_dir: str | None = None
    force: bool = False
    resume: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (paths as strings)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    @classmethod
    def from_dict(cls: type[_Config], values: dict[str, Any], *, source: str = "config") -> _Config:
        """Build a config from ``values``, checking every field's type against its annotation.

        Unknown keys are an error (they are usually typos). Ranges are checked by ``check()``.

        Raises:
            WavemelError: ``SOURCE: unknown setting(s) ...`` or
                ``SOURCE: field 'X' must be ..., got ...``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise WavemelError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        check_field_types(cls, values, error=WavemelError, source=source)
        return cls(**values)

    def replace(self: _Config, **changes: Any) -> _Config:
        return dataclasses.replace(self, **changes)

    def with_absolute_paths(self: _Config) -> _Config:
        """The same settings with input paths made absolute.

        ``RUN/config.json`` is read back by ``evaluate``, ``--resume`` and ``combine``, possibly
        from another working directory, so the dataset, cache and branch-run paths it records
        must not depend on where training was started.
        """
        changes = {}
        for name in ("data", "cache_dir", "audio_run", "spec_run", "init"):
            value = getattr(self, name, None)
            if value:
                changes[name] = str(Path(value).expanduser().resolve())
        return self.replace(**changes)

    def save(self, path: Path) -> None:
        """Write the configuration as indented JSON to ``path`` (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls: type[_Config], path: Path) -> _Config:
        """Read a configuration written by :meth:`save` (or by hand)."""
        return cls.from_dict(load_config_file(path), source=str(path))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from ``path``, with the type of every configuration field checked.

    The file may hold a :class:`TrainConfig` or a :class:`CombineConfig` (or part of one, or a
    hand-written subset such as ``evaluate`` accepts): each known field must have the type it has
    in either. Unknown keys are left to :meth:`_RunConfig.from_dict`.

    Raises:
        WavemelError: The file is missing, not a regular file, not JSON or not a JSON object,
            or a field has the wrong type (``FILE: field 'fold' must be an integer, got '1'``).
    """
    values = read_json(path, what="config file")
    check_field_types((TrainConfig, CombineConfig), values, error=WavemelError, source=str(path))
    return values


def layer_config(
    cls: type[_Config], file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> _Config:
    """Dataclass defaults, then the settings in ``file`` (JSON), then ``overrides`` (CLI flags).

    Overrides whose value is ``None`` are ignored, so an argparse namespace can be passed as is.
    """
    values: dict[str, Any] = {}
    if file is not None:
        values.update(load_config_file(file))
    source = str(file) if file is not None else "config"
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cls.from_dict(values, source=source)


def resume_config(config: _Config) -> _Config:
    """The configuration to continue ``config.out`` with: the run's own ``config.json`` wins.

    Only where and how the run executes may change on ``--resume`` (device, data-loading workers,
    clip cache); everything that shapes the result comes from the saved file, so a resumed run
    ends as the uninterrupted one would.

    Raises:
        WavemelError: No run folder given.
        CheckpointError: The run folder has no ``config.json``.
    """
    if not config.out:
        raise WavemelError("--resume needs the run folder to continue (--out RUN)")
    path = Path(config.out) / "config.json"
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{config.out}: no config.json to resume from")
    saved = type(config).load(path)
    resumed = saved.replace(
        out=config.out,
        resume=True,
        force=False,
        device=config.device,
        workers=config.workers,
        cache_dir=config.cache_dir or saved.cache_dir,
    )
    try:
        resumed.check()
    except WavemelError as exc:
        # The saved settings, not the command line, are at fault: name the file.
        raise CheckpointError(f"{path}: {exc}") from None
    return resumed


def _check_common(cfg: TrainConfig | CombineConfig) -> None:
    if cfg.epochs < 1:
        raise WavemelError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 2:
        # BatchNorm needs two examples per batch in training mode.
        raise WavemelError(f"--batch-size must be at least 2, got {cfg.batch_size}")
    if cfg.lr <= 0:
        raise WavemelError(f"--lr must be positive, got {cfg.lr}")
    if cfg.warmup_epochs < 0:
        raise WavemelError(f"--warmup-epochs must be >= 0, got {cfg.warmup_epochs}")
    if cfg.mixup_alpha < 0:
        raise WavemelError(f"--mixup-alpha must be >= 0 (0 disables mixup), got {cfg.mixup_alpha}")
    if cfg.val_every < 1:
        raise WavemelError(f"--val-every must be at least 1, got {cfg.val_every}")
    if cfg.patience < 0:
        raise WavemelError(
            f"--patience must be >= 0 (0 disables early stopping), got {cfg.patience}"
        )
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise WavemelError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.workers < 0:
        raise WavemelError(f"--workers must be >= 0, got {cfg.workers}")
    if not 0.0 <= cfg.p_replicate <= 1.0:
        raise WavemelError(f"p_replicate must be in [0, 1], got {cfg.p_replicate}")
    if not cfg.out:
        raise WavemelError("no run folder given (--out RUN)")


@dataclass
class TrainConfig(_RunConfig):
    """Everything that defines one training run of a single branch (cnn-audio or cnn-spec).

    The fields shared with :class:`CombineConfig` are documented in :class:`_RunConfig`.

    Attributes:
        model: Registered model name ("cnn-audio", "cnn-spec" or "cnn14").
        size: Named model size ("tiny", "small", "paper").
        data: Dataset root (or CSV manifest) given to ``wavemel.data.load_dataset``.
        folds, fold: Stratified k-fold split of the labelled train clips; ``fold`` is validation.
        seed: Seeds the split, the weights, the data order and the augmentations.
        sample_rate: Model sample rate; clips are resampled once into the clip cache.
        input_seconds: Training input length (the poster uses 1, 2 or 3 s).
        epochs: Training epochs.
        warmup_epochs: Linear warm-up from 0, then cosine decay to 0, updated every step.
        mixup_on: "wave" mixes waveforms; "spec" mixes log-mels (cnn-spec only), as in the poster.
        patience: Stop after this many epochs without a better validation MAP@3; 0 never stops.
        init: Checkpoint (or run folder) to start from: its model config and weights, with a
            new classifier when its labels differ from the data's; sets ``sample_rate``.
        freeze_blocks: Keep the first N conv blocks frozen (models with ``freeze_blocks``).
        multi_label: Sigmoid outputs with binary cross-entropy on multi-hot targets, and
            per-class decision thresholds chosen on the validation clips; ``None`` (the default)
            switches it on when any training clip has several labels. The run's ``config.json``
            records the resolved value.
        spec_freq_masks: SpecAugment-style bands of mel bins masked per training example
            (cnn-spec and cnn14 only; 0, the default, masks none). See
            :class:`wavemel.augment.SpecMask`: masks fill with the example's mean log-mel, are
            applied after mixup and only in training.
        spec_freq_width: Largest width of a frequency mask in mel bins (each mask's width is
            drawn from [0, this]); at most the model's mel bands.
        spec_time_masks: Bands of frames masked per training example (0: none).
        spec_time_width: Largest width of a time mask as a fraction of the input's frames, in
            (0, 1]: a fraction rather than frames so that one setting means the same share of
            the input for cnn-spec (20 ms hop) and cnn14 (10 ms hop) at any input length.
        ema_decay: Keep an exponential moving average of the weights (and BatchNorm statistics)
            with this decay, warmed up as ``min(ema_decay, (1 + step) / (10 + step))``; the
            validation, the best-epoch choice and the checkpoints then use the averaged weights
            while training continues on the raw ones (see ``wavemel.train.ema``). Must be in
            [0, 1); 0 (the default) keeps no average; 0.999 is typical.
        noisy_drop: Fraction in [0, 1) of the unverified training clips (``manually_verified``
            0) that each epoch from ``noisy_after`` on trains with ``noisy_weight``: those whose
            whole-clip loss against their given label, scored by the previous epoch's model,
            is highest (see ``wavemel.train.noisy``). 0 (the default) is off; verified clips
            are never touched.
        noisy_after: First (1-based) epoch that trains with such a choice; 1 scores the starting
            model (useful with ``init``). The default lets the model learn the clean majority
            for four epochs first: early on, a high loss marks a hard clip more than a wrong
            label.
        noisy_weight: Loss weight of the chosen clips; 0 (the default) drops them.
    """

    model: str = "cnn-audio"
    size: str = "small"
    data: str = ""
    folds: int = 5
    fold: int = 0
    seed: int = 0
    sample_rate: int = 16000
    input_seconds: float = 2.0
    epochs: int = 30
    warmup_epochs: float = 1.0
    mixup_on: str = "wave"
    patience: int = 10
    init: str | None = None
    freeze_blocks: int = 0
    multi_label: bool | None = None
    spec_freq_masks: int = 0
    # 8 of 64 bins and a tenth of the frames per mask: about the stripes PANNs trained with.
    spec_freq_width: int = 8
    spec_time_masks: int = 0
    spec_time_width: float = 0.1
    ema_decay: float = 0.0
    noisy_drop: float = 0.0
    noisy_after: int = 5
    noisy_weight: float = 0.0

    @property
    def input_samples(self) -> int:
        return int(round(self.input_seconds * self.sample_rate))

    def check(self) -> None:
        """Reject settings that cannot work, with a one-line message naming the option.

        Raises:
            WavemelError: An option is out of range or inconsistent with another.
        """
        _check_common(self)
        if self.model not in ("cnn-audio", "cnn-spec", "cnn14"):
            raise WavemelError(
                f"--model must be cnn-audio, cnn-spec or cnn14, got {self.model!r} "
                "(cnn-comb is trained with `wavemel combine`)"
            )
        self._check_init()
        if not self.data:
            raise WavemelError("no dataset given (--data ROOT)")
        low, high = SAMPLE_RATE_RANGE
        if not low <= self.sample_rate <= high:
            raise WavemelError(
                f"--sample-rate must be in [{low}, {high}] Hz, got {self.sample_rate}"
            )
        if not 0 < self.input_seconds <= MAX_INPUT_SECONDS:
            raise WavemelError(
                f"--input-seconds must be in (0, {MAX_INPUT_SECONDS:g}], got {self.input_seconds}"
            )
        if self.val_split is None and (self.folds < 2 or not 0 <= self.fold < self.folds):
            raise WavemelError(
                f"--fold must be in [0, --folds) with --folds >= 2, got fold {self.fold} "
                f"of {self.folds}"
            )
        if self.mixup_on not in ("wave", "spec"):
            raise WavemelError(f"mixup_on must be 'wave' or 'spec', got {self.mixup_on!r}")
        if self.mixup_on == "spec" and self.model not in ("cnn-spec", "cnn14"):
            raise WavemelError("mixup_on 'spec' needs --model cnn-spec or cnn14")
        self._check_spec_masks()
        check_ema_decay(self.ema_decay)
        _check_noisy(self)

    @property
    def spec_masking(self) -> bool:
        """Whether training masks bands of the log-mel (``spec_*_masks``)."""
        return self.spec_freq_masks > 0 or self.spec_time_masks > 0

    def _check_spec_masks(self) -> None:
        for flag, count in (
            ("--spec-freq-masks", self.spec_freq_masks),
            ("--spec-time-masks", self.spec_time_masks),
        ):
            if count < 0:
                raise WavemelError(f"{flag} must be >= 0 (0 masks none), got {count}")
        if self.spec_freq_width < 1:
            raise WavemelError(
                f"--spec-freq-width must be at least 1 mel bin, got {self.spec_freq_width}"
            )
        if not 0.0 < self.spec_time_width <= 1.0:
            raise WavemelError(
                f"--spec-time-width must be a fraction of the input's frames in (0, 1], got "
                f"{self.spec_time_width}"
            )
        if self.spec_masking and self.model not in ("cnn-spec", "cnn14"):
            raise WavemelError(
                f"--spec-freq-masks / --spec-time-masks need --model cnn-spec or cnn14 "
                f"({self.model} has no log-mel front end)"
            )

    def _check_init(self) -> None:
        if self.freeze_blocks < 0:
            raise WavemelError(f"--freeze must be >= 0, got {self.freeze_blocks}")
        if self.freeze_blocks and not self.init:
            # Frozen random blocks would never learn anything.
            raise WavemelError("--freeze needs --init: only pretrained blocks are worth freezing")
        if self.init is not None and not str(self.init).strip():
            raise WavemelError("--init needs a checkpoint or run folder")


def _check_noisy(cfg: TrainConfig) -> None:
    if not 0.0 <= cfg.noisy_drop < 1.0:
        raise WavemelError(f"--noisy-drop must be in [0, 1) (0 = off), got {cfg.noisy_drop}")
    if cfg.noisy_weight < 0:
        raise WavemelError(f"--noisy-weight must be >= 0 (0 drops), got {cfg.noisy_weight}")
    if cfg.noisy_after < 1:
        raise WavemelError(f"--noisy-after must be an epoch >= 1, got {cfg.noisy_after}")
    if cfg.noisy_drop and cfg.noisy_after > cfg.epochs:
        # Otherwise the run would silently drop nothing.
        raise WavemelError(
            f"--noisy-after {cfg.noisy_after} is after the last epoch (--epochs {cfg.epochs}): "
            "no clip would be dropped"
        )


@dataclass
class CombineConfig(_RunConfig):
    """Training cnn-comb's head on two trained branch runs.

    The split fields (``data`` unless given, ``format``, ``label_pattern``, ``group_field``,
    ``folds``, ``fold``, ``seed``, ``val_split``) and ``sample_rate``/``input_seconds`` are
    ``None`` until :func:`wavemel.train.combine.combine` fills them from the branch runs, which
    must agree on them. The other fields mean what they mean in :class:`TrainConfig`.

    Attributes:
        audio_run, spec_run: Run folders (or checkpoints) of the two trained branches.
        hidden, dropout: Head size and dropout; ``None`` keeps CnnComb's defaults.
        head_init: ``"new"`` (random weights, the poster's head) or ``"branches"``: the head
            starts from the branches' dense layers side by side, so before training its logits
            are the sum of the branches' logits (``hidden`` defaults to their dense widths
            together and must equal it).
        mixup_alpha: Mixup for the head too (default 0.4, as for the branches). The frozen
            branches were trained on the same clips, so their features separate the training
            clips almost perfectly and a head trained on them without mixup overfits within two
            epochs: on fsdk18-mini (2 s branches, seed 0) mixup raised the head's validation
            MAP@3 from 0.888 to 0.914 (test 0.930 to 0.933).
        finetune_epochs: After the head's ``epochs``, train the branches and the head together
            for this many epochs (0, the default, keeps the poster's frozen branches). The
            fine-tune starts from the best head-only weights, uses the same augmentations and
            mixup, and ``best`` is chosen over both stages, so a fine-tune that lowers the
            validation MAP@3 leaves the head-only weights in ``best``.
        finetune_lr: Peak learning rate of the fine-tune, for branches and head alike (its own
            ``warmup_epochs`` warm-up and cosine decay, a fresh AdamW). Default 1e-4, a tenth of
            the default ``lr``: the trained branches should move little, and the head, already
            fitted to their features, follows them at the same rate rather than outrunning them.
            Under-trained branches want more: on fsdk18-mini (tiny branches, 10 epochs of 1 s
            windows; head 5 epochs at lr 3e-3), 4 fine-tune epochs at 1e-4 never beat the head
            (best stayed head-only, test MAP@3 0.745), at 1e-3 they raised validation MAP@3 from
            0.714 to 0.770 (test 0.745 to 0.772).
        finetune_freeze_bn: Keep the branches' BatchNorm layers in eval mode while fine-tuning
            (running statistics from branch training; weights still train). The default,
            ``False``, trains them as the branches were trained, with batch statistics; with
            fewer than about 16 clips per batch and process those are noisy (and mixed by
            mixup), and freezing them is the safer choice.
    """

    audio_run: str = ""
    spec_run: str = ""
    data: str | None = None
    hidden: int | None = None
    dropout: float | None = None
    head_init: str = "new"
    epochs: int = 10
    warmup_epochs: float = 0.5
    patience: int = 5
    # Filled from the branch runs.
    folds: int | None = None
    fold: int | None = None
    seed: int | None = None
    sample_rate: int | None = None
    input_seconds: float | None = None
    finetune_epochs: int = 0
    finetune_lr: float = 1e-4
    finetune_freeze_bn: bool = False

    def check(self) -> None:
        """Reject settings that cannot work (see :meth:`TrainConfig.check`)."""
        _check_common(self)
        if not self.audio_run or not self.spec_run:
            raise WavemelError("combine needs both --audio RUN_A and --spec RUN_B")
        if self.head_init not in ("new", "branches"):
            raise WavemelError(f"--head-init must be new or branches, got {self.head_init!r}")
        if self.finetune_epochs < 0:
            raise WavemelError(
                f"--finetune-epochs must be >= 0 (0 trains the head only), "
                f"got {self.finetune_epochs}"
            )
        if not self.finetune_lr > 0:
            raise WavemelError(f"--finetune-lr must be positive, got {self.finetune_lr}")
