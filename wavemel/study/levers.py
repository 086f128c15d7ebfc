"""Which training changes help? A resumable study of *levers* against the preset's recipe.

A :class:`Lever` is a name, the networks it trains (one or both branches, or cnn-comb's head)
and the TrainConfig / CombineConfig fields it changes. For every seed (a unit of
:func:`~wavemel.study.presets.study_units`) the baseline (the preset's recipe) trains only the
networks some chosen lever is compared with, once, and the comb levers train a head on those
baseline branches; a branch lever with ``comb=True`` also trains a head on its own branch(es),
the other branch taken from the baseline. Every run is scored on the study's split (never used to
choose anything) and keeps its validation MAP@3 (the clips that chose its epochs).

Runs live in ``OUT/runs/<unit>/<length>/<lever>/<model>/``. ``state.json`` records, per run, the
settings it is made with (``fingerprint``) before it starts: a finished run with the same
settings is skipped, an interrupted one resumes, and a run made with other overrides (the
lever's entry was edited) is trained again from scratch; a head is retrained when a branch it
sits on was. Nothing else is touched, so editing one lever invalidates only that lever's runs.

A lever is *kept* by :data:`RULE`, decided on validation MAP@3 alone; the test numbers are
reported beside it, never used.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wavemel._fields import check_field_types
from wavemel._io import atomic_write_text
from wavemel.errors import DataError
from wavemel.study.grid import open_data_study
from wavemel.study.presets import BRANCHES, StudyConfig, Unit, Variant, length_key, study_units
from wavemel.study.report import environment, fmt
from wavemel.study.runs import Study, evaluate_variant, train_branch, train_comb
from wavemel.study.state import write_study_json
from wavemel.study.tables import decide, summary
from wavemel.train import CombineConfig, TrainConfig
from wavemel.train.run_folder import read_finished

__all__ = [
    "BASELINE",
    "COMB",
    "LEVERS",
    "RULE",
    "Lever",
    "check_lever",
    "lever_table",
    "run_levers",
    "select_levers",
]

COMB = "cnn-comb"
BASELINE = "baseline"
#: The decision rule, as the report states it.
RULE = (
    "A lever is KEPT only when its validation MAP@3 (the clips that choose the epochs) is above "
    "the baseline's on every seed, for the same model. A speed lever (marked so below) is KEPT "
    "when it trains faster and its validation MAP@3 is no lower: not a loss by the spread rule "
    "(mean difference below minus the larger seed-to-seed std, with most seeds lower). Test "
    "MAP@3 is shown, never used to decide."
)
#: Fields the study sets for every run (where it runs, which data and split, which network).
_MANAGED = frozenset(
    (
        "out data format label_pattern group_field val_split folds fold test_fold seed model "
        "device workers cache_dir force resume audio_run spec_run"
    ).split()
)


@dataclass(frozen=True)
class Lever:
    """One training change.

    Attributes:
        name: its name in ``--levers``, folders and tables.
        trains: the networks it trains: branches of :data:`~wavemel.study.presets.BRANCHES`, or
            ``("cnn-comb",)`` for a head trained on the seed's baseline branches.
        overrides: TrainConfig fields (branch levers) or CombineConfig fields (comb levers) that
            replace the preset's recipe.
        comb: a branch lever also trains and scores cnn-comb on its branch(es) (the other
            branch from the baseline), with the baseline's head recipe.
        note: one line for the report.
        speed: a speed lever: kept when it is faster and no lower on validation (:data:`RULE`).
    """

    name: str
    trains: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    comb: bool = False
    note: str = ""
    speed: bool = False

    @property
    def is_comb(self) -> bool:
        """Whether it changes only cnn-comb's head."""
        return self.trains == (COMB,)

    @property
    def models(self) -> tuple[str, ...]:
        """The networks it scores: what it trains, plus cnn-comb when ``comb`` asks for it."""
        return self.trains + ((COMB,) if self.comb and not self.is_comb else ())


def _registry(*levers: Lever) -> dict[str, Lever]:
    return {lever.name: lever for lever in levers}


#: Every lever by name; a new one is one entry.
LEVERS: dict[str, Lever] = _registry(
    Lever(BASELINE, BRANCHES, {}, comb=True, note="the preset's recipe"),
    # A speed lever (issue 12's study in minutes): three quarters of the epochs, validated every
    # other one; kept only if validation MAP@3 does not drop.
    Lever(
        "schedule-18",
        BRANCHES,
        {"epochs": 18, "val_every": 2},
        comb=True,
        note="18 epochs, validation every 2nd",
        speed=True,
    ),
    # A speed lever: bfloat16 training steps on the CPU (oneDNN; this machine has AMX).
    Lever(
        "cpu-bf16",
        BRANCHES,
        {"cpu_amp": True},
        comb=True,
        note="bfloat16 CPU training steps",
        speed=True,
    ),
    Lever(
        "comb-warm",
        (COMB,),
        {"head_init": "branches"},
        note="head started from the branches' dense layers (logit sum)",
    ),
    # The decay warms up as (1 + step) / (10 + step): over the cpu preset's ~800 steps it averages
    # roughly the last 100 of them.
    Lever("ema", BRANCHES, {"ema_decay": 0.999}, comb=True, note="weight EMA, both branches"),
    Lever(
        "specaug",
        ("cnn-spec",),
        {"spec_freq_masks": 2, "spec_time_masks": 2},
        comb=True,
        note="2+2 log-mel masks",
    ),
    # After the poster's frozen head: 4 epochs end to end at a seventh of the branches' peak
    # rate; the best epoch over both stages is kept, so a fine-tune that hurts validation is
    # dropped.
    Lever(
        "comb-finetune",
        (COMB,),
        {"finetune_epochs": 4, "finetune_lr": 3e-4},
        note="end-to-end fine-tune after the head",
    ),
    Lever("mixup-0.3", ("cnn-spec",), {"mixup_alpha": 0.3}, note="milder mixup"),
    Lever("mixup-spec", ("cnn-spec",), {"mixup_on": "spec"}, note="mixup of log-mels"),
    # fsdk18-mini relabels 7.9% of its unverified clips: drop the 10% the model fits worst, from
    # a third of the way in (before that the model disagrees with many correct labels too).
    Lever(
        "noisy-drop",
        ("cnn-spec",),
        {"noisy_drop": 0.1, "noisy_after": 8},
        note="drop the worst-fitting tenth of unverified clips",
    ),
    # Validation and test already score every window of a whole clip (infer.predict_waveforms,
    # windows of the training length, no overlap), so 4 s crops are scored on whole clips in
    # 4 s windows (shorter clips filled to 4 s as in training); no new option is needed.
    Lever("long-crops", ("cnn-spec",), {"input_seconds": 4.0}, note="4 s training crops"),
)


def check_lever(lever: Lever) -> None:
    """Reject a registry entry that cannot run, with one line naming the lever.

    Raises:
        DataError: it trains no or unknown networks, or an override is unknown, set by the study
            itself, or of the wrong type; the message lists the valid fields.
    """
    if not lever.trains or not (lever.is_comb or set(lever.trains) <= set(BRANCHES)):
        raise DataError(
            f"lever {lever.name!r}: trains must be some of {', '.join(BRANCHES)}, or {COMB} alone;"
            f" got {', '.join(lever.trains) or 'nothing'}"
        )
    config = CombineConfig if lever.is_comb else TrainConfig
    valid = sorted({f.name for f in dataclasses.fields(config)} - _MANAGED)
    unknown = sorted(set(lever.overrides) - set(valid))
    if unknown:
        raise DataError(
            f"lever {lever.name!r}: unknown {config.__name__} field(s) {', '.join(unknown)}; "
            f"valid: {', '.join(valid)}"
        )
    check_field_types(config, dict(lever.overrides), error=DataError, source=f"lever {lever.name}")
    if (
        lever.comb
        and len(lever.trains) == 1
        and {"input_seconds", "sample_rate"} & set(lever.overrides)
    ):
        # combine() needs two branches of one length and rate; the baseline's other is not.
        raise DataError(
            f"lever {lever.name!r}: comb=True needs both branches when it changes input_seconds "
            "or sample_rate"
        )


def select_levers(names: Sequence[str] | None) -> list[Lever]:
    """The baseline and the named levers (default: all), each checked.

    Raises:
        DataError: an unknown name (the message lists the registry), or a bad entry.
    """
    names = list(names) if names else list(LEVERS)
    unknown = [name for name in names if name not in LEVERS]
    if unknown:
        raise DataError(
            f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(sorted(LEVERS))}"
        )
    chosen = [LEVERS[BASELINE]] + [LEVERS[n] for n in dict.fromkeys(names) if n != BASELINE]
    for lever in chosen:
        check_lever(lever)
    return chosen


def _baseline_models(levers: Sequence[Lever]) -> tuple[str, ...]:
    """The baseline networks some lever is compared with or trains on: the fewest trainings."""
    needed = {model for lever in levers if lever.name != BASELINE for model in lever.models}
    if COMB in needed or any(lever.is_comb for lever in levers):
        needed |= {COMB, *BRANCHES}
    needed |= {m for lever in levers if lever.comb for m in BRANCHES if m not in lever.trains}
    # A study of the baseline alone still shows it.
    return tuple(m for m in (*BRANCHES, COMB) if m in needed) or LEVERS[BASELINE].models


# ---------------------------------------------------------------------------------------------
# Runs


def _normalised(value: Any) -> Any:
    # Through JSON once, so that tuples compare equal to the lists read back from state.json.
    return json.loads(json.dumps(value, sort_keys=True))


def _claim(study: Study, run_dir: Path, fingerprint: dict) -> bool:
    """Record the settings a run is made with; True when its folder holds another run's."""
    key = study.run_key(run_dir)
    fingerprint = _normalised(fingerprint)
    entry = study.state.runs.get(key)
    stale = run_dir.exists() and (entry is None or entry.get("fingerprint") != fingerprint)
    if entry is None or entry.get("fingerprint") != fingerprint:
        study.state.runs[key] = {"fingerprint": fingerprint}
        study.state.save()
    return stale


def _trained(study: Study, run_dir: Path) -> None:
    # A fresh token per training: heads compare it with the one they were trained on.
    study.state.runs[study.run_key(run_dir)]["generation"] = uuid.uuid4().hex
    study.state.save()


def _generation(study: Study, run_dir: Path) -> str | None:
    return study.state.runs.get(study.run_key(run_dir), {}).get("generation")


def _train_lever(
    study: Study, unit: Unit, seconds: float, lever: Lever, models: Sequence[str]
) -> None:
    """Train (or skip, or resume) ``models`` of one lever and seed; heads after branches."""
    length_dir = study.length_dir(unit, seconds)
    lever_dir = length_dir / lever.name
    branch_overrides = {} if lever.is_comb else dict(lever.overrides)
    for model in (m for m in models if m != COMB):
        run_dir = lever_dir / model
        restart = _claim(study, run_dir, {"overrides": branch_overrides})
        if train_branch(
            study,
            unit,
            seconds,
            model,
            run_dir=run_dir,
            overrides=branch_overrides,
            restart=restart,
        ):
            _trained(study, run_dir)
    if COMB not in models:
        return
    base_dir = length_dir / BASELINE
    branch_runs = {m: (lever_dir if m in lever.trains else base_dir) / m for m in BRANCHES}
    head_overrides = dict(lever.overrides) if lever.is_comb else {}
    run_dir = lever_dir / COMB
    fingerprint = {
        "overrides": head_overrides,
        "branches": {m: [study.run_key(d), _generation(study, d)] for m, d in branch_runs.items()},
    }
    restart = _claim(study, run_dir, fingerprint)
    if train_comb(
        study,
        unit,
        seconds,
        restart,
        run_dir=run_dir,
        branch_runs=branch_runs,
        overrides=head_overrides,
    ):
        _trained(study, run_dir)


def _epoch_seconds(run_dir: Path) -> float:
    """The run's training time: its epochs (training and validation) from ``metrics.jsonl``.

    Summed over epochs, so that a resumed run counts every epoch once and the clip cache that
    its first run builds (and the scoring afterwards) is not part of its cost.
    """
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
        return float(sum(json.loads(line)["seconds"] for line in lines if line.strip()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable epoch log ({type(exc).__name__})") from None


def _record(study: Study, run_dir: Path, model: str) -> dict:
    """What a finished run adds to the table: validation and test MAP@3, training time."""
    finished = read_finished(run_dir)
    if finished is None:
        raise DataError(f"{run_dir}: run did not finish")
    scores = evaluate_variant(study, run_dir.parent, Variant(model, model))
    entry = study.state.runs.get(study.run_key(run_dir), {})
    return {
        "val_map3": float(finished["best_val_map3"]),
        "test_map3": float(scores["map3"]),
        "train_s": round(_epoch_seconds(run_dir), 2),
        # The last invocation's wall time of the step (clip cache included on the first run).
        "train_wall_s": entry.get("train_wall_s"),
        "run": study.run_key(run_dir),
    }


def _run_all(study: Study, units: list[Unit], seconds: float, levers: list[Lever]) -> dict:
    """``{lever: {model: {unit: record}}}``: baseline first (every other run depends on it)."""
    runs: dict[str, dict] = {}
    for unit in units:
        for lever in levers:
            models = _baseline_models(levers) if lever.name == BASELINE else lever.models
            _train_lever(study, unit, seconds, lever, models)
            lever_dir = study.length_dir(unit, seconds) / lever.name
            for model in models:
                record = _record(study, lever_dir / model, model)
                runs.setdefault(lever.name, {}).setdefault(model, {})[unit.key] = record
    return runs


# ---------------------------------------------------------------------------------------------
# Table


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _row(
    lever: str, model: str, runs: dict, base: dict, speed: bool = False, faster: bool = False
) -> dict:
    """One table row: a lever's model against the baseline's same model, seed by seed."""
    units = [u for u in runs if u in base]
    val = [runs[u]["val_map3"] for u in units]
    test = [runs[u]["test_map3"] for u in units]
    base_val = [base[u]["val_map3"] for u in units]
    base_test = [base[u]["test_map3"] for u in units]
    val_delta = [a - b for a, b in zip(val, base_val, strict=True)]
    lever_time = _mean([runs[u]["train_s"] for u in units])
    base_time = _mean([base[u]["train_s"] for u in units])
    is_baseline = lever == BASELINE
    val_decision = None if is_baseline or not units else decide(val, base_val)
    cost = lever_time / base_time if lever_time is not None and base_time else None
    if is_baseline:
        kept = None
    elif speed:
        kept = bool(units) and faster and val_decision["verdict"] != "loss"
    else:
        kept = bool(units) and all(d > 0 for d in val_delta)
    return {
        "lever": lever,
        "model": model,
        "units": units,
        "val_map3": summary(val),
        "test_map3": summary(test),
        "val_delta": val_delta,
        "test_delta": [a - b for a, b in zip(test, base_test, strict=True)],
        "val_wins": sum(d > 0 for d in val_delta),
        "val_ties": sum(d == 0 for d in val_delta),
        "val_losses": sum(d < 0 for d in val_delta),
        "cost": cost,
        "speed": speed,
        # The spread rule's verdict; KEPT follows RULE (it decides only speed levers).
        "val_decision": val_decision,
        "kept": kept,
    }


def lever_table(runs: dict, speed: Collection[str] = ()) -> list[dict]:
    """A row per lever and scored model, compared with the baseline on the seeds both have.

    Args:
        runs: ``{lever: {model: {unit: {"val_map3", "test_map3", "train_s"}}}}``, the
            baseline under :data:`BASELINE`.
        speed: the names of the speed levers (:attr:`Lever.speed`): kept when their branches
            (or, for a head lever, the head) train in less time in total and a row's
            validation MAP@3 is not a loss.

    Returns:
        Rows in ``runs`` order: means and sample standard deviations over the seeds, per-seed
        deltas (lever minus baseline), validation wins / ties / losses, the training time ratio
        (``cost``) and ``kept`` (:data:`RULE`; ``None`` for the baseline's own rows).

    Raises:
        DataError: a lever scores a model the baseline did not train.
    """
    base = runs.get(BASELINE, {})
    rows = []
    for lever, models in runs.items():
        for model in models:
            if model not in base:
                raise DataError(f"lever {lever!r}: no baseline {model} run to compare with")
        faster = lever in speed and _faster(models, base)
        for model, per_unit in models.items():
            rows.append(_row(lever, model, per_unit, base[model], lever in speed, faster))
    return rows


def _faster(models: dict, base: dict) -> bool:
    """Whether a lever trains in less time than the baseline, summed over the networks it
    changes: its branches (the head on them trains as the baseline's does), else its head."""
    changed = [m for m in models if m != COMB] or list(models)
    lever_s = base_s = 0.0
    for model in changed:
        units = [u for u in models[model] if u in base[model]]
        lever_s += sum(models[model][u]["train_s"] or 0.0 for u in units)
        base_s += sum(base[model][u]["train_s"] or 0.0 for u in units)
    return base_s > 0 and lever_s < base_s


# ---------------------------------------------------------------------------------------------
# Report


def _signed(values: list[float]) -> str:
    # A difference that rounds to zero reads +0.000, never -0.000.
    return " ".join(f"{v if abs(v) >= 5e-4 else 0.0:+.3f}" for v in values) or "n/a"


def _table_lines(results: dict) -> list[str]:
    lines = [
        "| Lever | Model | Val MAP@3 | Test MAP@3 | Test Δ per seed | Val W/T/L | Cost | Kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["table"]:
        cost = "n/a" if row["cost"] is None else f"{row['cost']:.2f}x"
        kept = {None: "(reference)", True: "**KEPT**", False: "dropped"}[row["kept"]]
        wtl = f"{row['val_wins']}/{row['val_ties']}/{row['val_losses']}"
        lines.append(
            f"| {row['lever']} | {row['model']} | {fmt(row['val_map3'])} | "
            f"{fmt(row['test_map3'])} | {_signed(row['test_delta'])} | {wtl} | {cost} | {kept} |"
        )
    return lines


def _report(results: dict) -> str:
    lines = [
        "# Levers: which training changes help?",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Data: {results['data']} (scored split: {results['evaluation_split']}); preset "
        f"{results['preset']['name']}, input {results['input_seconds']:g} s, seeds "
        f"{', '.join(results['units'])}.",
        "",
        "## Decision rule",
        "",
        RULE,
        "",
        "## Results",
        "",
        *_table_lines(results),
        "",
        "Val / Test MAP@3: mean ± sample std over seeds. Test Δ: lever minus baseline, seed by "
        "seed. Val W/T/L: seeds where validation MAP@3 is above / equal to / below the "
        "baseline's. Cost: mean training time (the epochs, with their validation) over the "
        "baseline's, same model.",
        "",
        "## Levers",
        "",
    ]
    for name, lever in results["levers"].items():
        overrides = ", ".join(f"{k}={v!r}" for k, v in lever["overrides"].items()) or "none"
        comb = " (+ cnn-comb on its branches)" if lever["comb"] and name != BASELINE else ""
        comb += " (speed lever)" if lever.get("speed") else ""
        lines.append(
            f"- **{name}**: trains {', '.join(lever['trains'])}{comb}; {overrides}. {lever['note']}"
        )
    wall = results["wall_time"]
    lines += [
        "",
        "## Environment",
        "",
        *(f"- {k}: {v}" for k, v in results["environment"].items()),
        f"- wall time: this invocation {wall['this_invocation_s']:.0f} s, training (all "
        f"invocations) {wall['training_s']:.0f} s",
        "",
    ]
    return "\n".join(lines)


def _lever_dict(lever: Lever) -> dict:
    return {
        "trains": list(lever.trains),
        "overrides": dict(lever.overrides),
        "comb": lever.comb,
        "note": lever.note,
        "speed": lever.speed,
    }


def run_levers(
    config: StudyConfig, levers: Sequence[str] | None = None, *, command: str = ""
) -> Path:
    """Run (or resume) the levers study and write ``OUT/results.json`` and ``OUT/report.md``.

    Args:
        config: data, folder, preset and seeds; ``lengths`` holds the one input length.
        levers: names in :data:`LEVERS` (default: all); the baseline always runs.
        command: the command line shown in the report.

    Returns:
        Path of ``report.md``.

    Raises:
        DataError: an unknown lever or field, unreadable data, or ``out`` holding something
            else.
    """
    chosen = select_levers(levers)
    if not config.lengths or len(config.lengths) != 1:
        raise DataError("a levers study runs one input length (--length S)")
    started = time.perf_counter()
    study = open_data_study(config, kind="levers")
    seconds = float(config.lengths[0])
    units = study_units(study.preset, study.has_test)
    runs = _run_all(study, units, seconds, chosen)
    this_wall = time.perf_counter() - started
    study.state.invocations.append({"command": command, "wall_s": round(this_wall, 2)})
    study.state.save()
    results = {
        "data": study.state.settings["data"],
        "evaluation_split": study.split,
        "preset": dataclasses.asdict(study.preset),
        "input_seconds": seconds,
        "length": length_key(seconds),
        "units": [u.key for u in units],
        "rule": RULE,
        "levers": {lever.name: _lever_dict(lever) for lever in chosen},
        "table": lever_table(runs, {lever.name for lever in chosen if lever.speed}),
        "runs": runs,
        "command": command,
        "environment": environment(config.device),
        "wall_time": {
            "this_invocation_s": round(this_wall, 2),
            "training_s": round(
                sum(r.get("train_wall_s") or 0.0 for r in study.state.runs.values()), 2
            ),
        },
    }
    write_study_json(study.out / "results.json", results)
    path = study.out / "report.md"
    atomic_write_text(path, _report(results), error=DataError)
    return path
