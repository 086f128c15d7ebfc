"""The study's numbers: Table 1, the zero-input rows, Figure 4's per-class means, observations.

Pure functions of the per-run scores, ``evaluations = {unit: {length key: {variant: scores}}}``
(scores as written to ``evaluation_*.json``), so every cell of the report can be traced back to
those files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from wavemel.study.presets import BASELINE, TABLE_MODELS, VARIANTS, ZERO_INPUT_VARIANTS, length_key

__all__ = [
    "metric_keys",
    "observations",
    "overall_map3",
    "per_class_means",
    "summary",
    "table1",
    "zero_input_table",
]


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


def zero_input_table(evaluations: dict, lengths: Sequence[float], has_usage: bool) -> list[dict]:
    """cnn-comb with one input set to zero: a row per variant and input length."""
    rows = []
    for name in ZERO_INPUT_VARIANTS:
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


def observations(per_class: dict[str, dict], overall: dict[str, float]) -> dict:
    """The poster's two observations and "comb is best", checked class by class."""
    audio_better = [c for c, r in per_class.items() if r["cnn-audio"] > r["cnn-spec"]]
    spec_better = [c for c, r in per_class.items() if r["cnn-spec"] > r["cnn-audio"]]
    spec0_wins = [
        c
        for c in audio_better
        if per_class[c]["cnn-comb spec_input=0"] > per_class[c]["cnn-comb audio_input=0"]
    ]
    audio0_wins = [
        c
        for c in spec_better
        if per_class[c]["cnn-comb audio_input=0"] > per_class[c]["cnn-comb spec_input=0"]
    ]
    comb_best = [
        c for c, r in per_class.items() if r["cnn-comb"] >= max(r["cnn-audio"], r["cnn-spec"])
    ]

    def fraction(part: list, whole: list) -> float | None:
        return len(part) / len(whole) if whole else None

    return {
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
