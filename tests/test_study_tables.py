"""The study's numbers on hand-worked per-run scores: summaries, Table 1, observations, cells."""

from __future__ import annotations

import math

import pytest

from wavemel.study.presets import VARIANTS
from wavemel.study.report import fmt
from wavemel.study.tables import observations, per_class_means, summary, table1


def test_summary_uses_the_sample_standard_deviation():
    two = summary([0.5, 0.7])
    assert two["mean"] == pytest.approx(0.6) and two["n"] == 2
    assert two["std"] == pytest.approx(math.sqrt(0.02))  # ddof=1: ((0.1)^2 * 2) / 1
    assert summary([0.3])["std"] == 0.0
    assert fmt(two) == "0.600 ± 0.141" and fmt(summary([0.3])) == "0.300"
    # No values (a metric no run has): null in results.json, not NaN (invalid JSON).
    assert summary([]) == {"mean": None, "std": None, "n": 0, "values": []}
    assert fmt(summary([])) == "n/a" and fmt(None) == "n/a"


def _scores(map3: float, per_class: dict[str, float]) -> dict:
    return {"map3": map3, "per_class": {c: {"map3": v} for c, v in per_class.items()}}


def test_table1_and_per_class_means_average_over_units():
    def unit(offset: float) -> dict:
        return {"1s": {name: _scores(0.5 + offset, {"a": 0.4 + offset}) for name, _, _ in VARIANTS}}

    evaluations = {"seed0-fold0": unit(0.0), "seed0-fold1": unit(0.2)}
    baselines = {"seed0-fold0": {"map3": 0.3}, "seed0-fold1": {"map3": 0.5}}
    rows = table1(evaluations, baselines, [1.0], has_usage=False)
    models = [r["model"] for r in rows]
    assert models == ["cnn-audio", "cnn-spec", "cnn-comb", "baseline (MFCC + LR)"]
    assert rows[0]["map3"]["mean"] == pytest.approx(0.6) and rows[0]["map3"]["n"] == 2
    assert rows[-1]["input_seconds"] is None and rows[-1]["map3"]["mean"] == pytest.approx(0.4)
    means = per_class_means(evaluations, "1s", ["a", "b"])
    # "b" has no scores: a class missing from the scored set gets no row.
    assert list(means) == ["a"] and means["a"]["cnn-comb"] == pytest.approx(0.5)


def test_observations_count_the_posters_claims_class_by_class():
    names = ("cnn-audio", "cnn-spec", "cnn-comb audio_input=0", "cnn-comb spec_input=0", "cnn-comb")

    def row(*values: float) -> dict:
        return dict(zip(names, values))

    per_class = {
        # audio > spec and spec_input=0 (the audio half) beats audio_input=0: claim holds.
        "dog": row(0.9, 0.5, 0.4, 0.8, 0.9),
        # audio > spec but the spec half wins: claim fails.
        "cat": row(0.8, 0.6, 0.7, 0.5, 0.7),
        # spec > audio and the spec half wins: claim holds; comb below the best branch.
        "rain": row(0.3, 0.7, 0.6, 0.2, 0.6),
    }
    overall = {"cnn-audio": 0.6, "cnn-spec": 0.55, "cnn-comb": 0.65}
    obs = observations(per_class, overall)
    assert obs["audio_beats_spec"]["classes"] == ["dog", "cat"]
    assert obs["audio_beats_spec"]["comb_spec0_beats_comb_audio0"] == ["dog"]
    assert obs["audio_beats_spec"]["fraction"] == 0.5
    assert obs["spec_beats_audio"]["comb_audio0_beats_comb_spec0"] == ["rain"]
    assert obs["comb_at_least_both_per_class"]["classes"] == ["dog"]
    assert obs["comb_beats_both_overall"] is True and obs["n_classes"] == 3
