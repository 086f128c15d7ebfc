"""The poster's experiment grid, end to end: train, combine, evaluate, baseline, report.

For every input length (1, 2, 3 s) and every *unit* (a seed, or a seed and a fold) the study trains
cnn-audio and cnn-spec (:func:`wavemel.train.train`), builds cnn-comb from the two branches of
the same length and unit (:func:`wavemel.train.combine`), and scores all three, plus cnn-comb with
each branch ablated two ways: its input set to zero (the poster's) and its features replaced by
their mean over the training clips (:func:`wavemel.evaluate.evaluate_run`). The MFCC +
logistic-regression baseline (:mod:`wavemel.study.baseline`) is fitted on the same training clips
of each unit and scored on the same clips.

Evaluation split:

* Data with a labelled ``test`` split (FSDKaggle2018 and its stand-in): the networks train on the
  ``train`` split, pick their best epoch on a held-out 1/``val_folds`` of it, and are scored on
  ``test`` (Public / Private / total when the records carry ``usage``). Units are seeds.
* Data without one (FSDD, the synthetic set): k folds of the training clips (whole groups per
  fold with ``group_field``, e.g. one FSDD speaker per fold). Each unit holds one fold out
  (``test_fold``) and scores it (split ``"heldout"``); the next fold chooses the epochs (best
  epoch, early stopping, the head's epoch) and the remaining k - 2 train, so no scored clip
  ever takes part in model selection. Units are seed x fold, every fold by default.

Everything lands in ``OUT``: ``runs/<unit>/<length>/<model>/`` (run folders), ``state.json``
(what is finished), ``results.json`` (every number), ``report.md`` and the figures. A run counts
as finished when ``state.json`` marks it trained, its best checkpoint exists and its evaluation
JSON exists, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from wavemel.audio import audio_info
from wavemel.data import load_dataset
from wavemel.data.records import ClipRecord, DatasetIndex
from wavemel.errors import DataError
from wavemel.figures import plot_per_class_map3, render_augmentation_figure
from wavemel.study import tables
from wavemel.study.presets import (
    BRANCHES,
    TABLE_MODELS,
    VARIANTS,
    Preset,
    StudyConfig,
    Unit,
    length_key,
    study_units,
)
from wavemel.study.report import (
    data_note,
    environment,
    equivalent_command,
    evaluation_note,
    write_report,
)
from wavemel.study.runs import (
    Study,
    best_val_map3,
    evaluate_seed_ensemble,
    evaluate_variant,
    fit_baseline,
    train_branch,
    train_comb,
)
from wavemel.study.state import StudyState, open_study, write_study_json

__all__ = ["open_data_study", "reproduce"]

_FIGURE4 = "figures/figure4_per_class.png"
_FIGURE3 = "figures/figure3_augmentation.png"


def reproduce(config: StudyConfig, *, command: str | None = None) -> Path:
    """Run (or resume) the study and write ``OUT/report.md`` and ``OUT/results.json``.

    Args:
        config: what to run; see :class:`~wavemel.study.presets.StudyConfig`.
        command: the command line to print in the report (default: the equivalent
            ``wavemel reproduce`` command of ``config``).

    Returns:
        Path of ``report.md``.

    Raises:
        DataError: unreadable data, no labelled clips, or ``out`` holding something else.
    """
    started = time.perf_counter()
    study = open_data_study(config)
    units = study_units(study.preset, study.has_test)
    command = command or equivalent_command(config)
    evaluations, baselines = _run_grid(study, units)
    results = _results(study, units, evaluations, baselines)
    results["seed_ensembles"] = _seed_ensembles(study, units, evaluations)
    results["figure4"] = _figure4(study, evaluations)
    results["figure3"] = _figure3(study, units[0])
    this_wall = time.perf_counter() - started
    _record_invocation(study.state, command, this_wall)
    results["environment"] = environment(config.device)
    results["command"] = command
    results["wall_time"] = _wall_time(study.state, this_wall)
    write_study_json(study.out / "results.json", results)
    return write_report(study.out, results)


def open_data_study(config: StudyConfig, kind: str | None = None) -> Study:
    """Read the data and open (or resume) the study folder.

    Args:
        config: the invocation.
        kind: another study's name (``"levers"``), kept in its settings so that the two kinds
            never share a folder; ``None`` for the poster's grid.
    """
    preset = config.resolved_preset()
    out = Path(config.out)
    index = load_dataset(
        config.data,
        config.format,
        label_pattern=config.label_pattern,
        group_field=config.group_field,
    )
    test_records = [r for r in index.split("test") if r.labels]
    has_test = bool(test_records)
    has_usage = any((r.usage or "").lower() in ("public", "private") for r in test_records)
    if not has_test and preset.folds < 3:
        # One fold is scored, one chooses the epochs, at least one trains.
        raise DataError(f"{config.data}: no labelled test split, so --folds must be at least 3")
    settings = _settings(config, preset, index)
    if kind is not None:
        settings["study"] = kind
    state = open_study(out, settings, config.force)
    cache_dir = Path(config.cache_dir) if config.cache_dir else out / "cache"
    return Study(config, preset, state, index, has_test, has_usage, cache_dir, kind or "reproduce")


def _settings(config: StudyConfig, preset: Preset, index: DatasetIndex) -> dict:
    """What must not change between invocations that share the study's runs."""
    settings = {
        "data": str(Path(config.data).absolute()),
        "format": index.format,
        "label_pattern": config.label_pattern,
        "group_field": config.group_field,
        # Seeds, lengths and max_folds only add or drop units, whose runs are independent, so a
        # study can be extended (say, two more seeds) without redoing the finished runs.
        "preset": {
            k: v for k, v in asdict(preset).items() if k not in ("seeds", "lengths", "max_folds")
        },
    }
    if not preset.recipe:
        # No recipe trains exactly as before presets had one: studies started then continue.
        del settings["preset"]["recipe"]
    # Through JSON once so that tuples compare equal to the lists read back from state.json.
    return json.loads(json.dumps(settings))


def _run_grid(study: Study, units: list[Unit]) -> tuple[dict, dict]:
    """Train and score every unit and length: ``({unit: {length: {variant: scores}}}, {unit:
    baseline scores})``."""
    evaluations: dict[str, dict] = {}
    baselines: dict[str, dict] = {}
    # MFCC features are per clip, so every unit's baseline reuses them.
    feature_cache: dict = {}
    for unit in units:
        evaluations[unit.key] = {
            length_key(seconds): _length_scores(study, unit, seconds)
            for seconds in study.preset.lengths
        }
        baselines[unit.key] = fit_baseline(study, unit, feature_cache)
    return evaluations, baselines


def _length_scores(study: Study, unit: Unit, seconds: float) -> dict[str, dict]:
    """Train (or skip) both branches and the head of one unit and length; score each variant."""
    changed = False
    for model in BRANCHES:
        changed |= train_branch(study, unit, seconds, model)
    train_comb(study, unit, seconds, changed)
    length_dir = study.length_dir(unit, seconds)
    return {variant.name: evaluate_variant(study, length_dir, variant) for variant in VARIANTS}


def _results(study: Study, units: list[Unit], evaluations: dict, baselines: dict) -> dict:
    """The numbers of ``results.json`` (figures, environment and wall time are added after)."""
    index, preset = study.index, study.preset
    n_train = sum(1 for r in index.split("train") if r.labels)
    n_test = len(study.test_records)
    return {
        "data": study.state.settings["data"],
        "format": index.format,
        "data_note": data_note(index.format, len(index.labels), n_train, n_test),
        "n_train_clips": n_train,
        "n_labels": len(index.labels),
        "labels": index.labels,
        "preset": asdict(preset),
        "evaluation_split": study.split,
        "evaluation_note": evaluation_note(
            preset,
            n_test_clips=n_test if study.has_test else None,
            has_usage=study.has_usage,
            n_units=len(units),
            group_field=study.config.group_field,
            held_out=_held_out_groups(study, units),
        ),
        "has_usage": study.has_usage,
        "units": [u.key for u in units],
        "table1": tables.table1(evaluations, baselines, preset.lengths, study.has_usage),
        "ablation_table": tables.ablation_table(evaluations, preset.lengths, study.has_usage),
        "claims": tables.claims(evaluations, preset.lengths),
        "spread": tables.spread(evaluations, preset.lengths),
        "comb_above_both": tables.comb_above_both(evaluations, preset.lengths),
        "runs": evaluations,
        "baseline": baselines,
    }


def _seed_ensembles(study: Study, units: list[Unit], evaluations: dict) -> list[dict]:
    """Every Table 1 network at every length as the ensemble of its seeds, against its best
    single seed (chosen on validation). Test-split data with several seeds only."""
    if not study.has_test or len(units) < 2:
        return []
    rows = []
    for seconds in study.preset.lengths:
        lk = length_key(seconds)
        for model in TABLE_MODELS:
            ensemble = evaluate_seed_ensemble(study, units, seconds, model)
            singles = {u.key: evaluations[u.key][lk][model]["map3"] for u in units}
            val = {u.key: best_val_map3(study.length_dir(u, seconds) / model) for u in units}
            chosen = {k: v for k, v in val.items() if v is not None}
            rows.append(tables.seed_ensemble_row(model, seconds, ensemble, singles, chosen))
    return rows


def _held_out_groups(study: Study, units: list[Unit]) -> list[str]:
    """``"unit: groups"`` of every fold that holds out whole groups (else nothing)."""
    if study.has_test or not study.config.group_field:
        return []
    held_out = []
    for unit in units:
        _, val_records = study.split_records(unit)
        scored = sorted({str(r.group) for r in study.scored_records(unit)})
        chooser = sorted({str(r.group) for r in val_records})
        held_out.append(f"{unit.key}: {', '.join(scored)} (epochs chosen on {', '.join(chooser)})")
    return held_out


def _figure4(study: Study, evaluations: dict) -> dict:
    """Per-class MAP@3 of every variant, at 2 s (the poster's best length) when it was run."""
    lengths = [length_key(s) for s in study.preset.lengths]
    fig_length = "2s" if "2s" in lengths else lengths[0]
    per_class = tables.per_class_means(evaluations, fig_length, study.index.labels)
    overall = tables.overall_map3(evaluations, fig_length)
    title = f"Per-category MAP@3, input length {fig_length.replace('s', ' s')}"
    plot_per_class_map3(per_class, [name for name, _, _ in VARIANTS], title, study.out / _FIGURE4)
    return {
        "input_length": fig_length,
        "png": _FIGURE4,
        "per_class": per_class,
        # The observations use the mean-feature ablation (in distribution); the zero-input
        # versions are kept beside them because they are the poster's.
        "observations": tables.observations(per_class, overall, ablation="mean"),
        "observations_zero_input": tables.observations(per_class, overall, ablation="zero"),
        "observations_per_run": tables.observations_per_run(
            evaluations, fig_length, study.index.labels
        ),
    }


def _figure3_clip(train_records: list[ClipRecord]) -> ClipRecord | None:
    """A clip a little shorter than the 2 s input (it shows padding and replication), else the
    longest of the first few."""
    longest, longest_seconds = None, -1.0
    for record in train_records[:200]:
        try:
            duration = audio_info(record.path).duration
        except Exception:  # noqa: BLE001 - any unreadable clip is simply not chosen
            continue
        if 0.8 <= duration <= 1.8:
            return record
        if duration > longest_seconds:
            longest, longest_seconds = record, duration
    return longest


def _figure3(study: Study, unit: Unit) -> dict:
    """The augmentations of a training clip of ``unit``; a failure is reported, not raised."""
    figure3: dict = {"png": None}
    train_records, _ = study.split_records(unit)
    try:
        chosen = _figure3_clip(train_records)
        if chosen is None:
            root = study.index.root
            raise DataError(f"{root}: no readable training clip for the augmentation figure")
        titles = render_augmentation_figure(
            chosen.path,
            study.out / _FIGURE3,
            sample_rate=study.preset.sample_rate,
            input_seconds=2.0,
            seed=unit.seed,
        )
    except (ImportError, DataError, OSError) as exc:
        figure3["error"] = f"{type(exc).__name__}: {exc}"
        return figure3
    return {"png": _FIGURE3, "clip": str(chosen.path), "label": chosen.label, "panels": titles}


def _record_invocation(state: StudyState, command: str, wall_s: float) -> None:
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - wall_s))
    state.invocations.append(
        {"command": command, "started_at": started_at, "wall_s": round(wall_s, 2)}
    )
    state.save()


def _wall_time(state: StudyState, this_wall: float) -> dict:
    return {
        "this_invocation_s": round(this_wall, 2),
        "all_invocations_s": round(sum(i["wall_s"] for i in state.invocations), 2),
        "invocations": len(state.invocations),
        "training_s": round(sum(r.get("train_wall_s", 0.0) for r in state.runs.values()), 2),
    }
