"""The levers study: registry checks, the table and decision from fixed numbers, and a tiny
resumable run on the built-in synthetic data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from wavemel.cli import main as cli_main
from wavemel.errors import DataError
from wavemel.study import levers as lv
from wavemel.study.levers import BASELINE, LEVERS, Lever, check_lever, lever_table, select_levers
from wavemel.study.presets import StudyConfig

SEEDS = ("seed0", "seed1", "seed2")


def _per_seed(val, test, train_s=(10.0, 10.0, 10.0)) -> dict:
    return {
        unit: {"val_map3": v, "test_map3": t, "train_s": s}
        for unit, v, t, s in zip(SEEDS, val, test, train_s, strict=True)
    }


@pytest.fixture
def runs() -> dict:
    """Baseline and three levers whose validation and test numbers disagree on purpose."""
    return {
        BASELINE: {"cnn-spec": _per_seed((0.50, 0.60, 0.70), (0.55, 0.65, 0.75))},
        # Better on validation every seed, worse on test every seed: kept (val decides).
        "val-up": {
            "cnn-spec": _per_seed((0.51, 0.62, 0.73), (0.50, 0.60, 0.70), (20.0, 20.0, 20.0))
        },
        # Much better on test, worse on validation: dropped.
        "test-up": {"cnn-spec": _per_seed((0.49, 0.59, 0.69), (0.90, 0.90, 0.90))},
        # Better on validation on average and on two seeds, not on all three: dropped.
        "two-of-three": {"cnn-spec": _per_seed((0.60, 0.70, 0.70), (0.55, 0.65, 0.75))},
    }


def test_table_has_one_row_per_lever_with_means_from_the_seeds(runs):
    rows = {row["lever"]: row for row in lever_table(runs)}
    assert list(rows) == [BASELINE, "val-up", "test-up", "two-of-three"]
    row = rows["val-up"]
    assert row["model"] == "cnn-spec"
    assert row["val_map3"]["mean"] == pytest.approx(np.mean([0.51, 0.62, 0.73]))
    assert row["val_map3"]["std"] == pytest.approx(np.std([0.51, 0.62, 0.73], ddof=1))
    assert row["test_map3"]["mean"] == pytest.approx(0.60)
    assert row["test_map3"]["std"] == pytest.approx(0.10)
    assert row["test_delta"] == pytest.approx([-0.05, -0.05, -0.05])
    assert row["val_delta"] == pytest.approx([0.01, 0.02, 0.03])
    assert (row["val_wins"], row["val_ties"], row["val_losses"]) == (3, 0, 0)
    assert row["cost"] == pytest.approx(2.0)
    assert rows["two-of-three"]["val_wins"] == 2 and rows["two-of-three"]["val_ties"] == 1
    assert rows[BASELINE]["kept"] is None and rows[BASELINE]["test_delta"] == [0.0] * 3


def test_decision_uses_validation_only(runs):
    kept = {row["lever"]: row["kept"] for row in lever_table(runs)}
    assert kept == {BASELINE: None, "val-up": True, "test-up": False, "two-of-three": False}
    # Other test numbers (val-up now best on test, test-up worst) decide nothing.
    for lever, test_map3 in (("val-up", 0.95), ("test-up", 0.0)):
        for record in runs[lever]["cnn-spec"].values():
            record["test_map3"] = test_map3
    assert {row["lever"]: row["kept"] for row in lever_table(runs)} == kept


def test_a_model_without_baseline_is_an_error(runs):
    runs["val-up"]["cnn-audio"] = runs["val-up"]["cnn-spec"]
    with pytest.raises(DataError, match="no baseline cnn-audio run"):
        lever_table(runs)


def test_every_registered_lever_is_valid():
    for lever in LEVERS.values():
        check_lever(lever)
    assert select_levers(None)[0].name == BASELINE


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_lever_is_a_one_line_error_listing_the_registry():
    with pytest.raises(DataError) as exc:
        select_levers(["mixup-0.3", "no-such-lever"])
    message = _one_line(exc)
    assert "no-such-lever" in message and "mixup-spec" in message and "long-crops" in message


@pytest.mark.parametrize(
    ("lever", "expected"),
    [
        (Lever("typo", ("cnn-spec",), {"mixup_alpah": 0.3}), r"unknown TrainConfig field.*valid:"),
        (Lever("split", ("cnn-spec",), {"seed": 3}), r"unknown TrainConfig field\(s\) seed"),
        (Lever("head", ("cnn-comb",), {"size": "tiny"}), r"unknown CombineConfig field"),
        (Lever("type", ("cnn-spec",), {"mixup_alpha": "0.3"}), r"mixup_alpha"),
        (Lever("none", ("cnn-14",), {}), r"trains must be"),
        (Lever("len", ("cnn-spec",), {"input_seconds": 4.0}, comb=True), r"both branches"),
    ],
)
def test_bad_entries_are_one_line_errors(lever, expected):
    with pytest.raises(DataError) as exc:
        check_lever(lever)
    assert re.search(expected, _one_line(exc))
    assert lever.name in str(exc.value)


def test_cli_unknown_lever_exits_2_with_one_line(tmp_path, capsys):
    argv = ["levers", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--levers", "nope"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wavemel: error: unknown lever(s) nope") and "\n" not in err


def test_baseline_trains_only_what_the_levers_compare_with():
    spec_only = select_levers(["mixup-0.3", "mixup-spec"])
    assert lv._baseline_models(spec_only) == ("cnn-spec",)
    with_comb = [*spec_only, Lever("c", ("cnn-spec",), {}, comb=True)]
    assert lv._baseline_models(with_comb) == ("cnn-audio", "cnn-spec", "cnn-comb")


# ---------------------------------------------------------------------------------------------
# A tiny study end to end


def _mtimes(out) -> dict[str, int]:
    """Every run's weights by folder: a retrained run rewrites them."""
    return {
        str(p.parent.relative_to(out)): p.stat().st_mtime_ns
        for p in sorted(out.glob("runs/*/*/*/*/best.safetensors"))
    }


@pytest.mark.slow
def test_tiny_study_resumes_and_invalidates_one_lever(tmp_path, monkeypatch):
    from wavemel.data.synthetic import generate

    data = generate(tmp_path / "data", clips_per_class=6, seed=1, sample_rate=8000)
    out = tmp_path / "levers"
    registry = dict(LEVERS)
    registry["spec-comb"] = Lever("spec-comb", ("cnn-spec",), {"lr": 2e-3}, comb=True)
    registry["head"] = Lever("head", ("cnn-comb",), {"mixup_alpha": 0.0})
    monkeypatch.setattr(lv, "LEVERS", registry)
    config = StudyConfig(
        data=str(data), out=str(out), preset="tiny", lengths=(2.0,), max_folds=1, progress=False
    )
    names = ["mixup-spec", "spec-comb", "head"]
    lv.run_levers(config, names, command="test")

    results = json.loads((out / "results.json").read_text())
    rows = [(r["lever"], r["model"]) for r in results["table"]]
    assert rows == [
        (BASELINE, "cnn-audio"),
        (BASELINE, "cnn-spec"),
        (BASELINE, "cnn-comb"),
        ("mixup-spec", "cnn-spec"),
        ("spec-comb", "cnn-spec"),
        ("spec-comb", "cnn-comb"),
        ("head", "cnn-comb"),
    ]
    for row in results["table"]:
        per_seed = results["runs"][row["lever"]][row["model"]]
        assert row["test_map3"]["mean"] == pytest.approx(
            np.mean([r["test_map3"] for r in per_seed.values()])
        )
    report = (out / "report.md").read_text()
    assert lv.RULE in report and "| spec-comb | cnn-comb |" in report
    # The comb flag: the head sits on the lever's cnn-spec and the baseline's cnn-audio.
    unit = results["units"][0]
    comb_config = json.loads(
        (out / "runs" / unit / "2s" / "spec-comb" / "cnn-comb" / "config.json").read_text()
    )
    assert comb_config["spec_run"].endswith(f"{unit}/2s/spec-comb/cnn-spec")
    assert comb_config["audio_run"].endswith(f"{unit}/2s/baseline/cnn-audio")
    assert comb_config["mixup_alpha"] == 0.4
    head_config = json.loads(
        (out / "runs" / unit / "2s" / "head" / "cnn-comb" / "config.json").read_text()
    )
    assert head_config["mixup_alpha"] == 0.0
    assert head_config["spec_run"].endswith(f"{unit}/2s/baseline/cnn-spec")

    # Resume: nothing is retrained.
    first = _mtimes(out)
    assert len(first) == 7
    lv.run_levers(config, names, command="test")
    assert _mtimes(out) == first

    # An interrupted run resumes (its epoch log is kept) instead of starting over.
    interrupted = out / "runs" / unit / "2s" / "mixup-spec" / "cnn-spec"
    log = (interrupted / "metrics.jsonl").read_text()
    (interrupted / "finished.json").unlink()
    lv.run_levers(config, names, command="test")
    assert (interrupted / "finished.json").is_file()
    assert (interrupted / "metrics.jsonl").read_text() == log
    assert {k: v for k, v in _mtimes(out).items() if "mixup-spec" not in k} == {
        k: v for k, v in first.items() if "mixup-spec" not in k
    }

    # Editing one lever retrains that lever's runs (its head too) and nothing else.
    before = _mtimes(out)
    registry["spec-comb"] = Lever("spec-comb", ("cnn-spec",), {"lr": 3e-3}, comb=True)
    lv.run_levers(config, names, command="test")
    after = _mtimes(out)
    changed = sorted(k for k in after if after[k] != before[k])
    assert changed == [f"runs/{unit}/2s/spec-comb/cnn-comb", f"runs/{unit}/2s/spec-comb/cnn-spec"]
    lr = json.loads((out / changed[1] / "config.json").read_text())["lr"]
    assert lr == pytest.approx(3e-3)


def test_cli_list_needs_no_data_and_missing_data_is_one_line(capsys):
    assert cli_main(["levers", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in LEVERS)
    assert cli_main(["levers", "--levers", "mixup-spec"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "wavemel: error: wavemel levers needs --data and --out (or --list)"


def test_every_preset_recipe_names_real_fields():
    from wavemel.study.presets import PRESETS

    for preset in PRESETS.values():
        unknown = set(preset.recipe) - {"branches", "cnn-audio", "cnn-spec", "cnn-comb"}
        assert not unknown, f"{preset.name}: {unknown}"
        for model in ("cnn-audio", "cnn-spec"):
            check_lever(Lever(f"{preset.name}-{model}", (model,), preset.branch_recipe(model)))
        check_lever(Lever(f"{preset.name}-comb", (lv.COMB,), preset.comb_recipe()))


def test_a_preset_recipe_reaches_the_trainings_and_a_lever_overrides_it(tmp_path, monkeypatch):
    from dataclasses import replace

    from wavemel.study import runs as study_runs
    from wavemel.study.presets import PRESETS, Unit

    seen = {}
    monkeypatch.setattr(study_runs, "train", lambda config: seen.setdefault("train", config))
    monkeypatch.setattr(study_runs, "combine", lambda config: seen.setdefault("comb", config))
    preset = replace(
        PRESETS["tiny"],
        recipe={
            "branches": {"ema_decay": 0.9, "mixup_alpha": 0.2},
            "cnn-spec": {"spec_freq_masks": 1},
            "cnn-comb": {"head_init": "branches"},
        },
    )

    class FakeStudy:
        config = StudyConfig(data=str(tmp_path), out=str(tmp_path / "out"))
        cache_dir = tmp_path / "cache"
        has_test = True
        state = type("S", (), {"runs": {}})()

        def __init__(self):
            self.preset = preset

        def length_dir(self, unit, seconds):
            return tmp_path / "runs" / unit.key / f"{seconds:g}s"

        def log(self, message):
            pass

        def run_key(self, run_dir):
            return str(run_dir)

        def mark_trained(self, run_dir, started):
            pass

    study = FakeStudy()
    study_runs.train_branch(study, Unit(0), 1.0, "cnn-spec", overrides={"mixup_alpha": 0.3})
    config = seen["train"]
    assert (config.ema_decay, config.spec_freq_masks, config.mixup_alpha) == (0.9, 1, 0.3)
    study_runs.train_comb(study, Unit(0), 1.0, branches_changed=False)
    assert seen["comb"].head_init == "branches"


def test_study_overrides_reach_the_preset_and_the_recorded_command(tmp_path):
    from wavemel.study.report import equivalent_command

    config = StudyConfig(
        data=str(tmp_path), out=str(tmp_path / "o"), epochs=7, val_every=3, seeds=(0,)
    )
    preset = config.resolved_preset()
    assert (preset.epochs, preset.val_every, preset.seeds) == (7, 3, (0,))
    command = equivalent_command(config)
    assert "--epochs 7" in command and "--val-every 3" in command
    from wavemel.study.presets import PRESETS

    assert StudyConfig(data="d", out="o").resolved_preset().val_every == PRESETS["cpu"].val_every


def test_no_recipe_keeps_the_schedule_drops_the_recipe_and_is_recorded(tmp_path):
    from wavemel.cli import build_parser
    from wavemel.study.presets import PRESETS
    from wavemel.study.report import equivalent_command

    cpu = PRESETS["cpu"]
    assert cpu.branch_recipe("cnn-spec"), "the cpu preset adopted a recipe; this test needs one"
    config = StudyConfig(data=str(tmp_path), out=str(tmp_path / "o"), no_recipe=True)
    bare = config.resolved_preset()
    assert bare.recipe == {} and bare.branch_recipe("cnn-audio") == {}
    assert (bare.epochs, bare.val_every, bare.lr) == (cpu.epochs, cpu.val_every, cpu.lr)
    assert StudyConfig(data="d", out="o").resolved_preset().recipe == cpu.recipe
    assert "--no-recipe" in equivalent_command(config)
    assert "--no-recipe" not in equivalent_command(StudyConfig(data="d", out="o"))
    for command in ("reproduce", "levers"):
        args = build_parser().parse_args([command, "--data", "d", "--out", "o", "--no-recipe"])
        assert args.no_recipe is True


def test_the_report_header_states_the_validation_schedule_and_the_recipe():
    from wavemel.study.report import _schedule_words

    assert _schedule_words({"val_every": 1, "recipe": {}}) == ""
    words = _schedule_words({"val_every": 2, "recipe": {"branches": {"cpu_amp": True}}})
    assert "every 2 epochs" in words and "branches: `cpu_amp=True`" in words


def test_a_speed_lever_is_kept_when_faster_and_no_lower_and_dropped_when_it_loses(runs):
    base = runs[BASELINE]["cnn-spec"]
    # Faster, validation a little lower on two seeds and higher on one: a tie, so kept.
    runs["fast-tie"] = {"cnn-spec": _per_seed((0.49, 0.61, 0.69), (0.5,) * 3, (5.0,) * 3)}
    # Faster but clearly lower on every seed (beyond the 0.1 spread): dropped.
    runs["fast-loss"] = {"cnn-spec": _per_seed((0.30, 0.40, 0.50), (0.5,) * 3, (5.0,) * 3)}
    # The tie's numbers, but slower: dropped.
    runs["slow-tie"] = {"cnn-spec": _per_seed((0.49, 0.61, 0.69), (0.5,) * 3, (20.0,) * 3)}
    assert base["seed0"]["train_s"] == 10.0
    rows = {row["lever"]: row for row in lever_table(runs, {"fast-tie", "fast-loss", "slow-tie"})}
    assert rows["fast-tie"]["kept"] is True and rows["fast-tie"]["val_decision"]["verdict"] == "tie"
    assert rows["fast-loss"]["kept"] is False
    assert rows["fast-loss"]["val_decision"]["verdict"] == "loss"
    assert rows["slow-tie"]["kept"] is False
    # Judged as a quality lever, the same tie is dropped (not above on every seed).
    assert {r["lever"]: r["kept"] for r in lever_table(runs)}["fast-tie"] is False


def test_a_speed_levers_head_row_is_judged_on_its_branches_time(runs):
    runs[BASELINE]["cnn-comb"] = _per_seed((0.6, 0.7, 0.8), (0.6,) * 3, (3.0,) * 3)
    runs = {BASELINE: runs[BASELINE]}
    # Branch steps twice as fast; the head on them happened to take longer (a busy machine).
    runs["bf16"] = {
        "cnn-spec": _per_seed((0.50, 0.61, 0.69), (0.5,) * 3, (5.0,) * 3),
        "cnn-comb": _per_seed((0.61, 0.69, 0.80), (0.6,) * 3, (4.0,) * 3),
    }
    rows = {(r["lever"], r["model"]): r for r in lever_table(runs, {"bf16"})}
    assert rows[("bf16", "cnn-comb")]["cost"] > 1.0
    assert rows[("bf16", "cnn-comb")]["kept"] is True and rows[("bf16", "cnn-spec")]["kept"]
    # Slower branches: no row of the lever is kept, whatever its head's time.
    for record in runs["bf16"]["cnn-spec"].values():
        record["train_s"] = 12.0
    assert not any(r["kept"] for r in lever_table(runs, {"bf16"}) if r["lever"] == "bf16")
