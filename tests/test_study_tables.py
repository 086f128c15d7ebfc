"""The study's numbers on hand-worked per-run scores: summaries, Table 1, observations, cells."""

from __future__ import annotations

import math

import pytest

from wavemel.study.presets import VARIANTS
from wavemel.study.report import fmt
from wavemel.study.tables import (
    claims,
    decide,
    observations,
    observations_per_run,
    per_class_means,
    spread,
    summary,
    table1,
)


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
    obs = observations(per_class, overall, ablation="zero")
    assert obs["ablation"] == "zero"
    assert obs["audio_beats_spec"]["classes"] == ["dog", "cat"]
    assert obs["audio_beats_spec"]["comb_spec0_beats_comb_audio0"] == ["dog"]
    assert obs["audio_beats_spec"]["fraction"] == 0.5
    assert obs["spec_beats_audio"]["comb_audio0_beats_comb_spec0"] == ["rain"]
    assert obs["comb_at_least_both_per_class"]["classes"] == ["dog"]
    assert obs["comb_beats_both_overall"] is True and obs["n_classes"] == 3


def test_observations_use_the_chosen_ablation():
    # The zero-input and the mean-feature ablations can disagree; each is read from its columns.
    per_class = {
        "dog": {
            "cnn-audio": 0.9,
            "cnn-spec": 0.5,
            "cnn-comb audio_input=0": 0.4,
            "cnn-comb spec_input=0": 0.8,
            "cnn-comb audio=mean": 0.8,
            "cnn-comb spec=mean": 0.6,
            "cnn-comb": 0.9,
        }
    }
    overall = {"cnn-audio": 0.6, "cnn-spec": 0.55, "cnn-comb": 0.65}
    assert observations(per_class, overall, ablation="zero")["audio_beats_spec"]["fraction"] == 1
    assert observations(per_class, overall, ablation="mean")["audio_beats_spec"]["fraction"] == 0


def test_decide_win_tie_and_loss_with_the_runs_that_agree():
    # A clear win: every run better, the mean gap (0.05) above the spread (0.01).
    win = decide([0.90, 0.91, 0.92], [0.85, 0.86, 0.87])
    assert win["verdict"] == "win" and win["agree"] == 3 and win["n"] == 3
    assert win["mean_difference"] == pytest.approx(0.05)
    assert win["spread"] == pytest.approx(0.01)
    # Every run better but by less than the spread: a tie, "3 of 3" still reported.
    tie = decide([0.90, 0.95, 1.00], [0.89, 0.94, 0.99])
    assert tie["verdict"] == "tie" and tie["agree"] == 3
    # Mean gap above the spread but only one run of three agrees: a tie.
    split = decide([0.99, 0.80, 0.80], [0.70, 0.81, 0.81])
    assert split["verdict"] == "tie" and split["agree"] == 2
    loss = decide([0.80, 0.81], [0.90, 0.92])
    assert loss["verdict"] == "loss" and loss["agree"] == 2
    single = decide([0.9], [0.8])
    assert single["verdict"] == "win" and single["spread"] == 0.0 and single["agree"] == 1
    with pytest.raises(ValueError):
        decide([0.9, 0.8], [0.8])


def _unit(comb: float, spec: float, audio: float, classes: dict[str, tuple]) -> dict:
    """One run's scores at 2 s; ``classes`` maps label -> per-class values of VARIANTS."""
    per_variant = {}
    for i, (name, _, _) in enumerate(VARIANTS):
        overall = {"cnn-comb": comb, "cnn-spec": spec, "cnn-audio": audio}.get(name, 0.5)
        per_variant[name] = _scores(overall, {c: values[i] for c, values in classes.items()})
    return {"2s": per_variant}


def test_claims_and_per_run_observations_count_agreeing_runs():
    # VARIANTS order: audio, spec, audio_input=0, spec_input=0, audio=mean, spec=mean, comb.
    holds = {"dog": (0.9, 0.5, 0.4, 0.8, 0.3, 0.7, 0.9)}
    fails = {"dog": (0.9, 0.5, 0.8, 0.4, 0.7, 0.3, 0.9)}
    evaluations = {
        "seed0": _unit(0.95, 0.90, 0.80, holds),
        "seed1": _unit(0.96, 0.91, 0.82, holds),
        "seed2": _unit(0.94, 0.92, 0.81, fails),
    }
    rows = claims(evaluations, [2.0])
    assert [r["claim"] for r in rows] == ["cnn-comb beats cnn-spec", "cnn-comb beats cnn-audio"]
    assert rows[0]["verdict"] == "win" and rows[0]["agree"] == 3
    assert rows[1]["verdict"] == "win"
    counts = observations_per_run(evaluations, "2s", ["dog"])
    assert counts["mean"]["audio_beats_spec"] == 2 and counts["mean"]["n"] == 3
    assert counts["zero"]["audio_beats_spec"] == 2
    assert counts["mean"]["spec_beats_audio"] == 0  # no class favours cnn-spec
    assert counts["mean"]["comb_beats_both"] == 3
    measured = spread(evaluations, [2.0])
    assert measured["n_runs"] == 3 and measured["max_std"] == pytest.approx(0.01)
    assert spread({"seed0": evaluations["seed0"]}, [2.0])["max_std"] is None


def test_comb_above_both_counts_each_run_and_length_against_the_better_branch():
    from wavemel.study.tables import comb_above_both

    def cell(audio, spec, comb):
        return {
            "cnn-audio": {"map3": audio},
            "cnn-spec": {"map3": spec},
            "cnn-comb": {"map3": comb},
        }

    evaluations = {
        # above both / above audio only / equal to the better branch (not above)
        "seed0": {"1s": cell(0.80, 0.90, 0.91), "2s": cell(0.80, 0.90, 0.85)},
        "seed1": {"1s": cell(0.90, 0.80, 0.90), "2s": cell(0.70, 0.75, 0.95)},
    }
    above = comb_above_both(evaluations, (1.0, 2.0))
    assert above["per_length"] == {"1s": ["seed0"], "2s": ["seed1"]}
    assert (above["n_above"], above["n_cells"]) == (2, 4)
