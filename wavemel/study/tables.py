"""The study's numbers: Table 1, the ablation rows, Figure 4's per-class means, the claims.

Pure functions of the per-run scores, ``evaluations = {unit: {length key: {variant: scores}}}``
(scores as written to ``evaluation_*.json``), so every cell of the report can be traced back to
those files.

Every claim is decided run by run (:func:`decide`): a difference is a win or a loss only when its
mean over the runs exceeds the runs' spread and most runs agree on its sign; otherwise it is a
tie, and the report says how many runs agree either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from wavemel.study.presets import (
    ABLATION_VARIANTS,
    BASELINE,
    TABLE_MODELS,
    VARIANTS,
    length_key,
)

__all__ = [
    "ablation_table",
    "claims",
    "decide",
    "metric_keys",
    "observations",
    "observations_per_run",
    "overall_map3",
    "per_class_means",
    "spread",
    "summary",
    "table1",
]

#: The variant names of each ablation: (audio branch removed, spectrogram branch removed).
_ABLATIONS = {
    "zero": ("cnn-comb audio_input=0", "cnn-comb spec_input=0"),
    "mean": ("cnn-comb audio=mean", "cnn-comb spec=mean"),
}


def summary(values: list[float]) -> dict:
    """Mean, sample standard deviation, count and the values themselves."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        # No run has this metric: None (JSON null, "n/a" in the report), never a NaN.
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {
        "mean": float(array.mean()),
        # Sample standard deviation over seeds/folds; 0 for a single run.
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "n": int(array.size),
        "values": [float(v) for v in array],
    }


def metric_keys(has_usage: bool) -> tuple[str, ...]:
    """The table columns: Public, Private and total MAP@3 when the data have them."""
    return ("map3_public", "map3_private", "map3") if has_usage else ("map3",)


def table1(
    evaluations: dict, baselines: dict, lengths: Sequence[float], has_usage: bool
) -> list[dict]:
    """Table 1: a row per model and input length, then the baseline's (whole clips).

    Args:
        evaluations: ``{unit: {length key: {variant: scores}}}``.
        baselines: ``{unit: baseline scores}``.
        lengths: input lengths in seconds.
        has_usage: whether there are Public / Private columns.

    Returns:
        ``[{"model", "input_seconds", metric: summary, ...}]``.
    """
    rows = []
    for model in TABLE_MODELS:
        for seconds in lengths:
            lk = length_key(seconds)
            row = {"model": model, "input_seconds": seconds}
            for metric in metric_keys(has_usage):
                values = [
                    ev[lk][model][metric] for ev in evaluations.values() if metric in ev[lk][model]
                ]
                row[metric] = summary(values)
            rows.append(row)
    row = {"model": BASELINE, "input_seconds": None}
    for metric in metric_keys(has_usage):
        row[metric] = summary([b[metric] for b in baselines.values() if metric in b])
    rows.append(row)
    return rows


def ablation_table(evaluations: dict, lengths: Sequence[float], has_usage: bool) -> list[dict]:
    """cnn-comb with one branch ablated (input zero, or features at their training mean): a row
    per variant and input length."""
    rows = []
    for name in ABLATION_VARIANTS:
        for seconds in lengths:
            lk = length_key(seconds)
            row = {"model": name, "input_seconds": seconds}
            for metric in metric_keys(has_usage):
                row[metric] = summary([ev[lk][name][metric] for ev in evaluations.values()])
            rows.append(row)
    return rows


def overall_map3(evaluations: dict, length: str) -> dict[str, float]:
    """{variant: mean MAP@3 over units} at one input length."""
    return {
        name: float(np.mean([ev[length][name]["map3"] for ev in evaluations.values()]))
        for name, _, _ in VARIANTS
    }


def per_class_means(evaluations: dict, length: str, labels: list[str]) -> dict[str, dict]:
    """{label: {variant: mean per-class MAP@3 over units}} for classes present in the scored set."""
    table: dict[str, dict] = {}
    for label in labels:
        row = {}
        for name, _, _ in VARIANTS:
            values = [
                ev[length][name]["per_class"][label]["map3"]
                for ev in evaluations.values()
                if label in ev[length][name].get("per_class", {})
            ]
            values = [v for v in values if v is not None and not math.isnan(v)]
            if values:
                row[name] = float(np.mean(values))
        if len(row) == len(VARIANTS):
            table[label] = row
    return table


def observations(
    per_class: dict[str, dict], overall: dict[str, float], ablation: str = "mean"
) -> dict:
    """The poster's two observations and "comb is best", checked class by class.

    Args:
        per_class: ``{label: {variant: per-class MAP@3}}``.
        overall: ``{variant: MAP@3}``.
        ablation: which ablation removes a branch: ``"mean"`` (features at their training
            mean) or ``"zero"`` (the poster's zero input).

    The keys keep the poster's wording (``comb_spec0_...``: the comb without its spectrogram
    branch) whichever ablation removed it; ``ablation`` says which one.
    """
    no_audio, no_spec = _ABLATIONS[ablation]
    audio_better = [c for c, r in per_class.items() if r["cnn-audio"] > r["cnn-spec"]]
    spec_better = [c for c, r in per_class.items() if r["cnn-spec"] > r["cnn-audio"]]
    spec0_wins = [c for c in audio_better if per_class[c][no_spec] > per_class[c][no_audio]]
    audio0_wins = [c for c in spec_better if per_class[c][no_audio] > per_class[c][no_spec]]
    comb_best = [
        c for c, r in per_class.items() if r["cnn-comb"] >= max(r["cnn-audio"], r["cnn-spec"])
    ]

    def fraction(part: list, whole: list) -> float | None:
        return len(part) / len(whole) if whole else None

    return {
        "ablation": ablation,
        "n_classes": len(per_class),
        "audio_beats_spec": {
            "classes": audio_better,
            "comb_spec0_beats_comb_audio0": spec0_wins,
            "fraction": fraction(spec0_wins, audio_better),
        },
        "spec_beats_audio": {
            "classes": spec_better,
            "comb_audio0_beats_comb_spec0": audio0_wins,
            "fraction": fraction(audio0_wins, spec_better),
        },
        "comb_at_least_both_per_class": {
            "classes": comb_best,
            "fraction": fraction(comb_best, list(per_class)),
        },
        "comb_beats_both_overall": overall["cnn-comb"]
        > max(overall["cnn-audio"], overall["cnn-spec"]),
        "overall_map3": overall,
    }


def decide(a: Sequence[float], b: Sequence[float]) -> dict:
    """Whether ``a`` beats ``b``, decided run by run (the two lists are paired by run).

    ``"win"`` when the mean difference exceeds the spread (the larger sample standard deviation
    of the two over the runs) and more than half the runs favour ``a``; ``"loss"`` the other way
    round; else ``"tie"``. With one run there is no spread: its sign decides, and the count
    (1 of 1) says how little that is.

    Returns:
        ``{"verdict", "mean_difference", "spread", "n", "agree"}`` where ``agree`` counts the
        runs on the verdict's side (for a tie, the larger side).
    """
    a_values, b_values = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_values.shape != b_values.shape or a_values.size == 0:
        raise ValueError(f"decide needs two equally long, non-empty lists, got {a!r} and {b!r}")
    differences = a_values - b_values
    n = int(differences.size)
    spread = max(_std(a_values), _std(b_values))
    mean = float(differences.mean())
    wins, losses = int((differences > 0).sum()), int((differences < 0).sum())
    if mean > spread and wins * 2 > n:
        verdict, agree = "win", wins
    elif mean < -spread and losses * 2 > n:
        verdict, agree = "loss", losses
    else:
        verdict, agree = "tie", max(wins, losses)
    return {"verdict": verdict, "mean_difference": mean, "spread": spread, "n": n, "agree": agree}


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def claims(evaluations: dict, lengths: Sequence[float]) -> list[dict]:
    """cnn-comb against each branch at every input length, decided run by run (total MAP@3)."""
    rows = []
    for seconds in lengths:
        lk = length_key(seconds)
        comb = [ev[lk]["cnn-comb"]["map3"] for ev in evaluations.values()]
        for branch in ("cnn-spec", "cnn-audio"):
            other = [ev[lk][branch]["map3"] for ev in evaluations.values()]
            rows.append(
                {"claim": f"cnn-comb beats {branch}", "input_seconds": seconds}
                | decide(comb, other)
            )
    return rows


def comb_above_both(evaluations: dict, lengths: Sequence[float]) -> dict:
    """The runs in which cnn-comb's total MAP@3 is above both branches', per input length.

    Returns:
        ``{"per_length": {length key: [units]}, "n_above": k, "n_cells": n}`` over every
        (run, length) pair.
    """
    per_length = {
        length_key(seconds): [
            unit
            for unit, ev in evaluations.items()
            if ev[length_key(seconds)]["cnn-comb"]["map3"]
            > max(ev[length_key(seconds)][b]["map3"] for b in ("cnn-audio", "cnn-spec"))
        ]
        for seconds in lengths
    }
    return {
        "per_length": per_length,
        "n_above": sum(len(units) for units in per_length.values()),
        "n_cells": len(evaluations) * len(lengths),
    }


def spread(evaluations: dict, lengths: Sequence[float]) -> dict:
    """The smallest and largest standard deviation over runs of a Table 1 cell (total MAP@3)."""
    stds = []
    for seconds in lengths:
        lk = length_key(seconds)
        for model in TABLE_MODELS:
            values = np.asarray([ev[lk][model]["map3"] for ev in evaluations.values()])
            if values.size > 1:
                stds.append(_std(values))
    if not stds:
        return {"n_runs": len(evaluations), "min_std": None, "max_std": None}
    return {"n_runs": len(evaluations), "min_std": min(stds), "max_std": max(stds)}


def observations_per_run(evaluations: dict, length: str, labels: list[str]) -> dict:
    """In how many runs each of the poster's observations holds (more than half its classes).

    Each run's own per-class scores decide it; both ablations are counted.

    Returns:
        ``{ablation: {"audio_beats_spec": k, "spec_beats_audio": k, "comb_beats_both": k,
        "n": n}}`` (a run where no class favours a branch does not count for that claim).
    """
    counts = {}
    for ablation in _ABLATIONS:
        tally = {"audio_beats_spec": 0, "spec_beats_audio": 0, "comb_beats_both": 0}
        for unit, ev in evaluations.items():
            one = {unit: ev}
            obs = observations(
                per_class_means(one, length, labels), overall_map3(one, length), ablation=ablation
            )
            for claim in ("audio_beats_spec", "spec_beats_audio"):
                fraction = obs[claim]["fraction"]
                tally[claim] += int(fraction is not None and fraction > 0.5)
            tally["comb_beats_both"] += int(obs["comb_beats_both_overall"])
        counts[ablation] = {**tally, "n": len(evaluations)}
    return counts


def seed_ensemble_row(
    model: str, seconds: float, ensemble: dict, singles: dict[str, float], val: dict[str, float]
) -> dict:
    """A seed ensemble against its members: their mean, and the one best on validation.

    Args:
        model, seconds: what the ensemble is (a Table 1 model at one input length).
        ensemble: its scores (``map3`` ...).
        singles: ``{unit: total MAP@3}`` of the member runs on the same clips.
        val: ``{unit: validation MAP@3}`` that chose each member's epoch; the best single run is
            chosen by it, never by the scored clips.

    Returns:
        ``{"model", "input_seconds", "ensemble", "singles", "best_single": {"unit", "val_map3",
        "map3"}, "gain_over_best", "members_below"}``; ``members_below`` counts the members
        that score below the ensemble.
    """
    chosen = max(val, key=lambda unit: val[unit]) if val else None
    best = (
        None
        if chosen is None
        else {"unit": chosen, "val_map3": val[chosen], "map3": singles[chosen]}
    )
    return {
        "model": model,
        "input_seconds": seconds,
        "ensemble": {
            k: ensemble[k] for k in ("map3", "map3_public", "map3_private") if k in ensemble
        },
        "singles": summary(list(singles.values())),
        "best_single": best,
        "gain_over_best": None if best is None else ensemble["map3"] - best["map3"],
        "members_below": sum(v < ensemble["map3"] for v in singles.values()),
    }
