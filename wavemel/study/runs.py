"""The steps of the grid, each skipped when its result is already there.

A :class:`Study` bundles what every step needs (the invocation, its preset, the state, the data);
the steps train a branch, train cnn-comb's head, score a variant and fit the baseline. A run
counts as finished when its run folder says so (:mod:`wavemel.train.run_folder`); a score when
the run's ``evaluation_<split>[_zero-<x>|_mean-<x>].json`` exists (written by ``evaluate``), so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wavemel.data.records import ClipRecord, DatasetIndex
from wavemel.data.splits import SplitSpec
from wavemel.evaluate import evaluate_run, evaluation_name
from wavemel.models.cnn_comb import SIZES as COMB_SIZES
from wavemel.study.baseline import run_baseline
from wavemel.study.presets import (
    BRANCHES,
    Preset,
    StudyConfig,
    Unit,
    Variant,
    length_key,
    split_fields,
)
from wavemel.study.state import StudyState, read_study_json, write_study_json
from wavemel.train import CombineConfig, TrainConfig, combine, train
from wavemel.train.run_folder import inspect_run_folder, read_finished

__all__ = ["Study", "evaluate_variant", "fit_baseline", "train_branch", "train_comb"]

# The evaluation fields a study keeps (the per-clip answers stay in the run folder).
_KEEP = ("map3", "map3_public", "map3_private", "top1", "n_clips", "per_class")


@dataclass
class Study:
    """One opened study: what every step of the grid needs.

    Attributes:
        config: the invocation.
        preset: its preset with the overrides applied.
        state: ``OUT/state.json``.
        index: the data set.
        has_test: whether the data have a labelled test split (scored), else folds are scored.
        has_usage: whether the test clips carry Public / Private (``usage``).
        cache_dir: the clip cache shared by all runs.
        kind: the study's name in progress lines (``reproduce``, ``levers``).
    """

    config: StudyConfig
    preset: Preset
    state: StudyState
    index: DatasetIndex
    has_test: bool
    has_usage: bool
    cache_dir: Path
    kind: str = "reproduce"

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def split(self) -> str:
        """The split every network is scored on: never one that chose an epoch."""
        return "test" if self.has_test else "heldout"

    @property
    def test_records(self) -> list[ClipRecord]:
        """The labelled test clips (empty for data scored by folds)."""
        return [r for r in self.index.split("test") if r.labels]

    def log(self, message: str) -> None:
        if self.config.progress:
            print(f"[{self.kind}] {message}", file=sys.stderr, flush=True)

    def run_key(self, run_dir: Path) -> str:
        """A run's name in ``state.json``: its folder relative to OUT."""
        return str(run_dir.relative_to(self.out))

    def length_dir(self, unit: Unit, seconds: float) -> Path:
        return self.out / "runs" / unit.key / length_key(seconds)

    def split_spec(self, unit: Unit) -> SplitSpec:
        """The split of a unit's runs, as their ``config.json`` records it."""
        return SplitSpec(
            data=str(self.config.data),
            format=self.config.format,
            label_pattern=self.config.label_pattern,
            group_field=self.config.group_field,
            **split_fields(self.preset, unit, self.has_test),
        )

    def split_records(self, unit: Unit) -> tuple[list[ClipRecord], list[ClipRecord]]:
        """The training and validation clips of a unit, exactly as the trainer derives them."""
        return self.split_spec(unit).split(self.index)

    def scored_records(self, unit: Unit) -> list[ClipRecord]:
        """The clips a unit is scored on: the test split, or the unit's held-out fold."""
        if self.has_test:
            return self.test_records
        return self.split_spec(unit).heldout(self.index)

    def mark_trained(self, run_dir: Path, started: float) -> None:
        wall_s = round(time.perf_counter() - started, 2)
        # Merged, not replaced: a levers study records the run's settings before training it.
        entry = self.state.runs.setdefault(self.run_key(run_dir), {})
        entry.update({"trained": True, "train_wall_s": wall_s})
        self.state.save()


def _run_finished(run_dir: Path) -> bool:
    return inspect_run_folder(run_dir).kind == "finished"


def _prepare_run_dir(run_dir: Path, restart: bool = False) -> dict:
    """Resume an interrupted run, restart a finished or half-made one, else start it.

    ``restart``: the folder holds a run made with other settings, never to be resumed.
    """
    kind = inspect_run_folder(run_dir).kind
    if restart:
        return {"resume": False, "force": kind != "absent"}
    if kind == "interrupted":
        return {"resume": True, "force": False}
    # A foreign folder is refused by the trainer itself, with or without force.
    return {"resume": False, "force": kind != "absent"}


def _drop_evaluations(run_dir: Path) -> None:
    # Scores of an earlier model in this folder must not survive its retraining.
    for stale in run_dir.glob("evaluation_*.json"):
        stale.unlink()


def train_branch(
    study: Study,
    unit: Unit,
    seconds: float,
    model: str,
    *,
    run_dir: Path | None = None,
    overrides: dict | None = None,
    restart: bool = False,
) -> bool:
    """Train one branch unless it is finished; True when it was (re)trained now.

    Args:
        study, unit, seconds, model: which branch of the grid.
        run_dir: its run folder (default ``runs/<unit>/<length>/<model>``).
        overrides: TrainConfig fields that replace the preset's recipe (a levers study).
        restart: the folder holds a run made with other settings: train it from scratch.
    """
    run_dir = run_dir or study.length_dir(unit, seconds) / model
    if not restart and _run_finished(run_dir):
        return False
    study.log(f"train {model} {length_key(seconds)} {unit.key}")
    _drop_evaluations(run_dir)
    started = time.perf_counter()
    config, preset = study.config, study.preset
    recipe = dict(
        model=model,
        size=preset.size,
        data=str(config.data),
        out=str(run_dir),
        format=config.format,
        label_pattern=config.label_pattern,
        group_field=config.group_field,
        sample_rate=preset.sample_rate,
        input_seconds=seconds,
        epochs=preset.epochs,
        batch_size=preset.batch_size,
        lr=preset.lr,
        mixup_alpha=preset.mixup_alpha,
        patience=preset.patience,
        val_every=preset.val_every,
        device=config.device,
        workers=preset.workers,
        cache_dir=str(study.cache_dir),
        **split_fields(preset, unit, study.has_test),
    )
    recipe.update(preset.branch_recipe(model))
    recipe.update(overrides or {})
    train(TrainConfig(**recipe, **_prepare_run_dir(run_dir, restart)))
    study.mark_trained(run_dir, started)
    return True


def train_comb(
    study: Study,
    unit: Unit,
    seconds: float,
    branches_changed: bool,
    *,
    run_dir: Path | None = None,
    branch_runs: dict[str, Path] | None = None,
    overrides: dict | None = None,
) -> bool:
    """Train cnn-comb's head unless finished; from scratch when a branch was just retrained.

    Args:
        study, unit, seconds: which head of the grid.
        branches_changed: a branch was retrained (or the folder holds a head made with other
            settings): neither skip nor resume the head.
        run_dir: its run folder (default ``runs/<unit>/<length>/cnn-comb``).
        branch_runs: ``{"cnn-audio": RUN, "cnn-spec": RUN}`` (default: the length's own).
        overrides: CombineConfig fields that replace the preset's recipe (a levers study).

    Returns:
        True when the head was (re)trained now.
    """
    length_dir = study.length_dir(unit, seconds)
    run_dir = run_dir or length_dir / "cnn-comb"
    branch_runs = branch_runs or {model: length_dir / model for model in BRANCHES}
    key = study.run_key(run_dir)
    if branches_changed:
        # A head trained on the old branches is worthless: neither skip nor resume it.
        for stale in ("trained", "train_wall_s"):
            study.state.runs.get(key, {}).pop(stale, None)
        restart = _prepare_run_dir(run_dir, restart=True)
    elif _run_finished(run_dir):
        return False
    else:
        restart = _prepare_run_dir(run_dir)
    study.log(f"combine {study.run_key(run_dir)}")
    _drop_evaluations(run_dir)
    started = time.perf_counter()
    preset = study.preset
    # The head of the preset's size, stopped by the preset's patience, like its branches.
    head = COMB_SIZES[preset.size]
    recipe = dict(
        audio_run=str(branch_runs["cnn-audio"]),
        spec_run=str(branch_runs["cnn-spec"]),
        out=str(run_dir),
        epochs=preset.comb_epochs,
        hidden=head.hidden,
        dropout=head.dropout,
        patience=preset.patience,
        batch_size=preset.batch_size,
        lr=preset.lr,
        mixup_alpha=preset.mixup_alpha,
        device=study.config.device,
        workers=preset.workers,
        cache_dir=str(study.cache_dir),
    )
    recipe.update(preset.comb_recipe())
    recipe.update(overrides or {})
    combine(CombineConfig(**recipe, **restart))
    study.mark_trained(run_dir, started)
    return True


def _ablation_switches(ablation: str | None) -> dict[str, str | None]:
    """``"zero-audio"`` -> ``{"zero_input": "audio", "mean_input": None}``, as evaluate takes."""
    switches: dict[str, str | None] = {"zero_input": None, "mean_input": None}
    if ablation is not None:
        kind, branch = ablation.split("-")
        switches[f"{kind}_input"] = branch
    return switches


def evaluate_variant(study: Study, length_dir: Path, variant: Variant) -> dict:
    """The scores of one variant on the study's split (read back when already computed)."""
    run_dir = length_dir / variant.run
    switches = _ablation_switches(variant.ablation)
    path = run_dir / f"evaluation_{evaluation_name(study.split, **switches)}.json"
    if not path.is_file():
        study.log(f"evaluate {study.run_key(run_dir)} {variant.ablation or ''}".rstrip())
        evaluate_run(run_dir, split=study.split, device=study.config.device, **switches)
    result = read_study_json(path, what="evaluation")
    kept = {k: result[k] for k in _KEEP if k in result}
    kept.update(switches)
    kept["split"] = study.split
    return kept


def evaluate_seed_ensemble(study: Study, units: list[Unit], seconds: float, model: str) -> dict:
    """The seed ensemble of ``model`` at ``seconds``: the mean of its units' clip probabilities,
    scored on the study's test split (read back when computed from the same members).

    Each member chose its epochs on its own validation clips, none of them scored, and the
    members weigh equally, so nothing about the ensemble is chosen on the scored clips. Only
    for test-split data: on k-fold data every fold's models trained on the other folds.

    Returns:
        The scores (as :func:`evaluate_variant`) plus ``members``, the run keys.
    """
    runs = [study.length_dir(unit, seconds) / model for unit in units]
    members = [study.run_key(run) for run in runs]
    out_dir = study.out / "ensembles" / length_key(seconds) / model
    path = out_dir / f"evaluation_{evaluation_name(study.split)}.json"
    result = read_study_json(path, what="evaluation") if path.is_file() else None
    scored = [Path(m["run"]).resolve() for m in result["members"]] if result else None
    if scored != [run.resolve() for run in runs]:
        study.log(f"evaluate the {len(runs)}-seed ensemble of {model} at {length_key(seconds)}")
        evaluate_run(runs, split=study.split, device=study.config.device, out_dir=out_dir)
        result = read_study_json(path, what="evaluation")  # as every later reading sees it
    kept = {k: result[k] for k in _KEEP if k in result}
    kept["members"] = members
    return kept


def best_val_map3(run_dir: Path) -> float | None:
    """The validation MAP@3 that chose a finished run's best epoch (``finished.json``)."""
    finished = read_finished(run_dir) or {}
    value = finished.get("best_val_map3")
    return None if value is None else float(value)


def fit_baseline(study: Study, unit: Unit, feature_cache: dict) -> dict:
    """The MFCC + LR baseline of a unit (read back from ``baseline.json`` when present)."""
    unit_dir = study.out / "runs" / unit.key
    path = unit_dir / "baseline.json"
    if path.is_file():
        return read_study_json(path, what="study baseline")
    study.log(f"baseline {unit.key}")
    train_records, _ = study.split_records(unit)
    eval_records = study.scored_records(unit)
    started = time.perf_counter()
    # Trained on exactly the networks' training clips, scored on the networks' scored clips.
    result = run_baseline(
        train_records,
        eval_records,
        study.index.labels,
        sample_rate=study.preset.sample_rate,
        seed=unit.seed,
        feature_cache=feature_cache,
    )
    result.pop("probabilities")
    result.pop("clip_ids")
    result["wall_s"] = round(time.perf_counter() - started, 2)
    unit_dir.mkdir(parents=True, exist_ok=True)
    write_study_json(path, result)
    return result
