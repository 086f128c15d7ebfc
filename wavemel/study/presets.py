"""What a study runs: presets, the invocation's settings, units, and the scored variants.

A study trains, for every input length and every *unit* (a seed, or a seed and a fold), the two
branches (:data:`BRANCHES`), combines them into cnn-comb and scores the :data:`VARIANTS`; Table 1
shows :data:`TABLE_MODELS` and the :data:`BASELINE` row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

from wavemel.errors import DataError

__all__ = [
    "BASELINE",
    "BRANCHES",
    "PRESETS",
    "TABLE_MODELS",
    "VARIANTS",
    "ABLATION_VARIANTS",
    "ZERO_INPUT_VARIANTS",
    "MEAN_INPUT_VARIANTS",
    "Preset",
    "StudyConfig",
    "Unit",
    "Variant",
    "inner_fold",
    "length_key",
    "split_fields",
    "study_units",
]

BRANCHES = ("cnn-audio", "cnn-spec")


class Variant(NamedTuple):
    """One scored variant.

    Attributes:
        name: its name in tables and figures.
        run: the run folder it scores.
        ablation: ``None``, or ``"zero-audio"``/``"zero-spec"`` (that branch's input set to zero,
            the poster's ablation) or ``"mean-audio"``/``"mean-spec"`` (that branch's features
            replaced by their training mean), as in the evaluation file names.
    """

    name: str
    run: str
    ablation: str | None = None


VARIANTS: tuple[Variant, ...] = (
    Variant("cnn-audio", "cnn-audio"),
    Variant("cnn-spec", "cnn-spec"),
    Variant("cnn-comb audio_input=0", "cnn-comb", "zero-audio"),
    Variant("cnn-comb spec_input=0", "cnn-comb", "zero-spec"),
    Variant("cnn-comb audio=mean", "cnn-comb", "mean-audio"),
    Variant("cnn-comb spec=mean", "cnn-comb", "mean-spec"),
    Variant("cnn-comb", "cnn-comb"),
)
#: The poster's zero-input variants and the mean-feature ones, shown under Table 1.
ZERO_INPUT_VARIANTS = ("cnn-comb audio_input=0", "cnn-comb spec_input=0")
MEAN_INPUT_VARIANTS = ("cnn-comb audio=mean", "cnn-comb spec=mean")
ABLATION_VARIANTS = ZERO_INPUT_VARIANTS + MEAN_INPUT_VARIANTS
TABLE_MODELS = ("cnn-audio", "cnn-spec", "cnn-comb")
BASELINE = "baseline (MFCC + LR)"


@dataclass(frozen=True)
class Preset:
    """Sizes and schedules of a study.

    Attributes:
        name: preset name.
        size: model size for cnn-audio and cnn-spec (``tiny``, ``small``, ``paper``).
        lengths: input lengths in seconds.
        seeds: seeds (units on test-split data; multiplied with folds otherwise). At least 3
            on test-split data so that every claim can be checked against the spread (the
            ``tiny`` test preset excepted).
        epochs: branch training epochs.
        comb_epochs: cnn-comb head epochs.
        batch_size: batch size of all trainings.
        lr: peak learning rate of the branches (the head uses the same).
        sample_rate: model sample rate in Hz (clips are resampled once into the cache).
        folds: k for data without a labelled test split (at least 3: per unit one fold is
            scored, another chooses the epochs, the rest train).
        max_folds: run only the first this-many folds (None: all k, the default of every
            preset).
        val_folds: on test-split data, 1/val_folds of the training clips choose the best epoch.
        patience: early stopping patience in epochs (0: never stop early).
        workers: data-loader worker processes.
        mixup_alpha: mixup of the branch trainings (the poster uses mixup).
        val_every: branches validate every this many epochs (and after the last).
        recipe: more training settings, by network: ``"branches"`` (TrainConfig fields of
            both branches), ``"cnn-audio"`` / ``"cnn-spec"`` (one branch; these win) and
            ``"cnn-comb"`` (CombineConfig fields of the head), e.g. the levers that a levers
            study kept (``wavemel levers``).
    """

    name: str
    size: str
    lengths: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    comb_epochs: int
    batch_size: int
    lr: float
    sample_rate: int
    folds: int
    max_folds: int | None
    val_folds: int
    patience: int
    workers: int
    mixup_alpha: float = 0.4
    val_every: int = 1
    recipe: dict = field(default_factory=dict, hash=False)

    def branch_recipe(self, model: str) -> dict:
        """The extra TrainConfig settings of branch ``model``."""
        return {**self.recipe.get("branches", {}), **self.recipe.get(model, {})}

    def comb_recipe(self) -> dict:
        """The extra CombineConfig settings of cnn-comb's head."""
        return dict(self.recipe.get("cnn-comb", {}))


PRESETS: dict[str, Preset] = {
    # Tests: seconds per run on the synthetic data; the report code path is the full one.
    "tiny": Preset(
        name="tiny",
        size="tiny",
        lengths=(1.0, 2.0),
        seeds=(0,),
        epochs=1,
        comb_epochs=1,
        batch_size=16,
        lr=1e-3,
        sample_rate=8000,
        folds=3,
        max_folds=None,
        val_folds=4,
        patience=0,
        workers=0,
    ),
    # Two CPU cores, fsdk18-mini (1,173 train / 420 test clips): per seed 6 branch runs + 3
    # heads; three seeds, so every claim is checked against the spread. The recipe trains the
    # branches with bfloat16 steps where the CPU has bfloat16 units (elsewhere float32, said
    # once): the levers study found them no worse on validation and 1.7-1.9x faster. Measured
    # on 2 idle cores of a Xeon with AMX (BENCHMARKS.md, study wall time): one seed in about
    # 9 min, where the first version of this preset (the same 24 epochs in float32, every
    # epoch validated, threads fixed at start-up) took 25 min.
    "cpu": Preset(
        name="cpu",
        size="small",
        lengths=(1.0, 2.0, 3.0),
        seeds=(0, 1, 2),
        epochs=24,
        comb_epochs=6,
        batch_size=32,
        lr=2e-3,
        sample_rate=16000,
        folds=5,
        max_folds=None,
        val_folds=10,
        patience=0,
        workers=0,
        val_every=2,
        recipe={"branches": {"cpu_amp": True}},
    ),
    # A GPU and FSDKaggle2018: paper-scale (VGG-like) networks, three seeds.
    "paper": Preset(
        name="paper",
        size="paper",
        lengths=(1.0, 2.0, 3.0),
        seeds=(0, 1, 2),
        epochs=80,
        comb_epochs=15,
        batch_size=64,
        lr=1e-3,
        sample_rate=22050,
        folds=5,
        max_folds=None,
        val_folds=10,
        patience=20,
        workers=6,
    ),
}


@dataclass
class StudyConfig:
    """One ``wavemel reproduce`` invocation; ``None`` fields take the preset's value.

    Attributes:
        data: dataset root (or CSV manifest).
        out: study folder.
        preset: key of :data:`PRESETS`.
        format, label_pattern, group_field: how to read the data (see ``load_dataset``).
        seeds, lengths, folds, max_folds, epochs, comb_epochs, val_every, sample_rate: preset
            overrides.
        no_recipe: train with the preset's schedule but without its ``recipe`` (e.g. a levers
            study whose baseline is the recipe before the preset adopted some levers).
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: clip cache (default ``OUT/cache``).
        force: discard a previous study in ``out`` (or one made with other settings).
        progress: progress bars and per-run lines on stderr.
    """

    data: str
    out: str
    preset: str = "cpu"
    format: str | None = None
    label_pattern: str | None = None
    group_field: str | None = None
    seeds: tuple[int, ...] | None = None
    lengths: tuple[float, ...] | None = None
    folds: int | None = None
    max_folds: int | None = None
    epochs: int | None = None
    comb_epochs: int | None = None
    val_every: int | None = None
    sample_rate: int | None = None
    no_recipe: bool = False
    device: str = "auto"
    cache_dir: str | None = None
    force: bool = False
    progress: bool = True

    def resolved_preset(self) -> Preset:
        """The preset with this invocation's overrides applied."""
        if self.preset not in PRESETS:
            raise DataError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        base = PRESETS[self.preset]
        overrides = {
            "seeds": tuple(self.seeds) if self.seeds else None,
            "lengths": tuple(float(x) for x in self.lengths) if self.lengths else None,
            "folds": self.folds,
            "max_folds": self.max_folds,
            "epochs": self.epochs,
            "comb_epochs": self.comb_epochs,
            "val_every": self.val_every,
            "sample_rate": self.sample_rate,
            "recipe": {} if self.no_recipe else None,
        }
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Unit:
    """One repetition of the grid: a seed, and a fold for fold-based evaluation."""

    seed: int
    fold: int | None = None

    @property
    def key(self) -> str:
        """Folder and table name: ``seed0`` or ``seed0-fold1``."""
        return f"seed{self.seed}" if self.fold is None else f"seed{self.seed}-fold{self.fold}"


def length_key(seconds: float) -> str:
    """The name of an input length in folders and tables: ``1.0`` -> ``"1s"``."""
    return f"{seconds:g}s"


def study_units(preset: Preset, has_test: bool) -> list[Unit]:
    """The units of a study: seeds on test-split data, else seed x fold (first ``max_folds``)."""
    if has_test:
        return [Unit(seed) for seed in preset.seeds]
    n_folds = preset.folds if preset.max_folds is None else min(preset.folds, preset.max_folds)
    return [Unit(seed, fold) for seed in preset.seeds for fold in range(n_folds)]


def inner_fold(preset: Preset, scored_fold: int) -> int:
    """The fold that chooses the epochs of a unit whose ``scored_fold`` is held out: the next one.

    It comes from the same fold assignment, so whole groups (speakers) stay together and the
    scored clips, the validation clips and the training clips never share a group.
    """
    return (scored_fold + 1) % preset.folds


def split_fields(preset: Preset, unit: Unit, has_test: bool) -> dict:
    """The TrainConfig split settings of a unit (the trainer re-derives the split from them).

    No clip that is scored ever chooses an epoch: on test-split data fold 0 of ``val_folds``
    of the training clips validates and the test split is scored; on k-fold data the unit's
    fold is held out (``test_fold``, scored as split ``"heldout"``) and :func:`inner_fold`
    validates.
    """
    if has_test:
        return {"folds": preset.val_folds, "fold": 0, "seed": unit.seed}
    return {
        "folds": preset.folds,
        "fold": inner_fold(preset, unit.fold),
        "test_fold": unit.fold,
        "seed": unit.seed,
    }
