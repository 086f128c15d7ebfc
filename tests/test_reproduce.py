"""``wavemel reproduce`` end to end with the tiny preset on the built-in synthetic data."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wavemel.cli import main as cli_main
from wavemel.data.splits import SplitSpec
from wavemel.models.cnn_comb import SIZES as COMB_SIZES
from wavemel.study import PRESETS, VARIANTS, StudyConfig, reproduce

pytestmark = pytest.mark.slow

# "mean ± std" (several runs) or "mean" (one run).
_CELL = re.compile(r"^(\d\.\d{3})(?: ± (\d\.\d{3}))?$")
# Cells have 3 decimals; a value exactly halfway (0.1875 -> "0.188") is off by 5e-4.
_HALF_ULP = 5e-4 + 1e-9


def _table_rows(report: str, heading: str) -> dict[tuple[str, str], list[str]]:
    """{(model, input length): [cells]} of the first Markdown table after ``heading``."""
    section = report[report.index(heading) :]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| Model"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(cells[0], cells[1])] = cells[2:]
        elif rows and not line.startswith("|"):
            break
    return rows


def _assert_selection_never_sees_scored_clips(out, results) -> None:
    """For every run: the clips that chose its epochs and the clips it was scored on are
    disjoint, and it was scored on exactly the clips the protocol says (rebuilt from config.json
    with SplitSpec, compared by path)."""
    runs = sorted(out.glob("runs/*/*/*/config.json"))
    assert len(runs) == 3 * len(results["units"]) * len(results["preset"]["lengths"])
    for config_path in runs:
        run = config_path.parent
        spec = SplitSpec.from_settings(json.loads(config_path.read_text()))
        index = spec.load_index()
        train, val = spec.split(index)
        if results["evaluation_split"] == "test":
            scored = [r for r in index.split("test") if r.labels]
        else:
            scored = spec.heldout(index)
        val_paths = {str(r.path) for r in val}
        scored_paths = {str(r.path) for r in scored}
        train_paths = {str(r.path) for r in train}
        assert scored_paths and val_paths, run
        assert not val_paths & scored_paths, run
        assert not train_paths & scored_paths, run
        evaluation = json.loads(
            (run / f"evaluation_{results['evaluation_split']}.json").read_text()
        )
        assert {c["path"] for c in evaluation["clips"]} == scored_paths, run
        if spec.group_field:  # whole groups: no speaker both scored and selecting
            assert not {r.group for r in val} & {r.group for r in scored}, run


def test_tiny_study_report_matches_runs_and_resumes(tmp_path):
    from wavemel.data.synthetic import generate

    data = generate(tmp_path / "data", clips_per_class=6, seed=1, sample_rate=8000)
    out = tmp_path / "study"
    argv = ["reproduce", "--data", str(data), "--out", str(out), "--preset", "tiny", "--quiet"]
    assert cli_main(argv) == 0

    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    preset = PRESETS["tiny"]
    units = results["units"]
    assert units == ["seed0-fold0", "seed0-fold1", "seed0-fold2"]  # no test split: every fold
    assert results["evaluation_split"] == "heldout" and not results["has_usage"]
    _assert_selection_never_sees_scored_clips(out, results)
    # The comb head has the preset size's width and dropout and stops by the preset's patience.
    head = json.loads((out / "runs" / units[0] / "1s" / "cnn-comb" / "config.json").read_text())
    size = COMB_SIZES[preset.size]
    assert (head["hidden"], head["dropout"], head["patience"]) == (
        size.hidden,
        size.dropout,
        preset.patience,
    )

    # Table 1: every cell is a number that equals the mean/std of the per-run evaluation JSONs.
    rows = _table_rows(report, "## Table 1")
    assert len(rows) == 3 * len(preset.lengths) + 1
    for model in ("cnn-audio", "cnn-spec", "cnn-comb"):
        for seconds in preset.lengths:
            cells = rows[(model, f"{seconds:g} s")]
            match = _CELL.match(cells[0])
            assert match, cells
            values = [
                json.loads(
                    (
                        out / "runs" / u / f"{seconds:g}s" / model / "evaluation_heldout.json"
                    ).read_text()
                )["map3"]
                for u in units
            ]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert float(match.group(1)) == pytest.approx(np.mean(values), abs=_HALF_ULP)
            assert float(match.group(2)) == pytest.approx(np.std(values, ddof=1), abs=_HALF_ULP)
            assert cells[1] == str(len(units))
    baseline_cells = rows[("baseline (MFCC + LR)", "whole clip")]
    baseline_values = [
        json.loads((out / "runs" / u / "baseline.json").read_text())["map3"] for u in units
    ]
    assert float(_CELL.match(baseline_cells[0]).group(1)) == pytest.approx(
        np.mean(baseline_values), abs=_HALF_ULP
    )
    # The synthetic classes are easy for MFCCs: the floor is well above chance (~0.23).
    assert np.mean(baseline_values) > 0.4

    # The evaluation JSONs agree with what evaluate_run wrote into the run folder.
    run = out / "runs" / units[0] / "2s" / "cnn-comb"
    ours = json.loads((run / "evaluation_heldout_zero-spec.json").read_text())
    assert ours["zero_input"] == "spec"
    assert results["runs"][units[0]]["2s"]["cnn-comb spec_input=0"]["map3"] == ours["map3"]
    mean = json.loads((run / "evaluation_heldout_mean-audio.json").read_text())
    assert mean["mean_input"] == "audio"
    assert results["runs"][units[0]]["2s"]["cnn-comb audio=mean"]["map3"] == mean["map3"]
    ablation_rows = _table_rows(report, "cnn-comb with one branch ablated")
    assert float(
        _CELL.match(ablation_rows[("cnn-comb audio=mean", "2 s")][0]).group(1)
    ) == pytest.approx(
        np.mean([results["runs"][u]["2s"]["cnn-comb audio=mean"]["map3"] for u in units]),
        abs=_HALF_ULP,
    )
    # The claims are decided run by run and say how many runs agree.
    claims = _table_rows(report, "## Claims")
    verdict = claims[("cnn-comb beats cnn-spec", "2 s")]
    assert verdict[0] in ("win", "tie", "loss") and verdict[-1].endswith(f"of {len(units)}")
    assert "last digits" not in report and "standard deviation of a Table 1 cell" in report

    # Figure 4: the per-class means and the observations come from the runs' per-class scores.
    fig4 = results["figure4"]
    assert (out / fig4["png"]).stat().st_size > 5000
    label = next(iter(fig4["per_class"]))
    for name, _, _ in VARIANTS:
        expected = np.mean(
            [
                results["runs"][u][fig4["input_length"]][name]["per_class"][label]["map3"]
                for u in units
            ]
        )
        assert fig4["per_class"][label][name] == pytest.approx(expected)
    obs = fig4["observations"]
    audio_better = obs["audio_beats_spec"]["classes"]
    assert audio_better == [
        c for c, r in fig4["per_class"].items() if r["cnn-audio"] > r["cnn-spec"]
    ]
    assert f"Classes where cnn-audio beats cnn-spec: {len(audio_better)}" in report
    # Figure 3 and the provenance block.
    assert results["figure3"]["png"] and (out / results["figure3"]["png"]).stat().st_size > 5000
    assert "![Figure 3](figures/figure3_augmentation.png)" in report
    assert f"wavemel reproduce --data {data} --out {out} --preset tiny" in report
    for package in ("torch", "numpy", "librosa"):
        assert f"{package} {results['environment'][package]}" in report
    # The reader is told what the data are (not FSDKaggle2018), the seeds and how to regenerate.
    assert "not FSDKaggle2018" in report and "48 labelled training clips" in report
    assert "- Seeds: 0;" in report and "To regenerate" in report
    assert "They use the mean-feature ablation" in report

    # A second invocation finds every run finished: nothing is retrained or re-scored.
    best = out / "runs" / units[1] / "1s" / "cnn-audio" / "best.safetensors"
    stamp = best.stat().st_mtime_ns
    started = time.perf_counter()
    assert cli_main(argv) == 0
    assert time.perf_counter() - started < 20
    assert best.stat().st_mtime_ns == stamp
    again = json.loads((out / "results.json").read_text())
    assert again["table1"] == results["table1"]
    assert again["wall_time"]["invocations"] == 2

    # An interrupted study: one evaluation missing and one run never marked finished. Only
    # those are redone.
    (run / "evaluation_heldout.json").unlink()
    key = f"runs/{units[1]}/2s/cnn-spec"
    (out / key / "finished.json").unlink()
    other = out / "runs" / units[0] / "1s" / "cnn-spec" / "best.safetensors"
    other_stamp = other.stat().st_mtime_ns
    comb = out / "runs" / units[1] / "2s" / "cnn-comb"
    comb_stamp = (comb / "best.safetensors").stat().st_mtime_ns
    reproduce(StudyConfig(data=str(data), out=str(out), preset="tiny", progress=False))
    assert (run / "evaluation_heldout.json").is_file()
    assert json.loads((out / "state.json").read_text())["runs"][key]["trained"] is True
    assert other.stat().st_mtime_ns == other_stamp
    # The head on top of a retrained branch is trained again and re-scored.
    assert (comb / "best.safetensors").stat().st_mtime_ns != comb_stamp
    assert (comb / "evaluation_heldout.json").is_file()
    # Called from Python, the report states the equivalent command, not this process's argv.
    assert (
        f"wavemel reproduce --data {data} --out {out} --preset tiny\n"
        in (out / "report.md").read_text()
    )


def _fsdk18_layout(tmp_path):
    """The synthetic clips in the FSDKaggle2018 Zenodo layout: 4 clips per class train, 2 test
    (one Public, one Private), so that the test-split and Public/Private code paths run."""
    import shutil

    from wavemel.data.synthetic import generate

    source = generate(tmp_path / "synthetic", clips_per_class=6, seed=2, sample_rate=8000)
    root = tmp_path / "fsdk18"
    train_dir, test_dir, meta = (
        root / "FSDKaggle2018.audio_train",
        root / "FSDKaggle2018.audio_test",
        root / "FSDKaggle2018.meta",
    )
    for folder in (train_dir, test_dir, meta):
        folder.mkdir(parents=True)
    train_rows = ["fname,label,manually_verified,freesound_id,license"]
    test_rows = ["fname,label,usage,freesound_id,license"]
    for label_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        for i, wav in enumerate(sorted(label_dir.glob("*.wav"))):
            name = f"{label_dir.name}{i}.wav"
            if i < 4:
                shutil.copy(wav, train_dir / name)
                train_rows.append(f"{name},{label_dir.name},1,{i},CC0")
            else:
                shutil.copy(wav, test_dir / name)
                usage = "Public" if i == 4 else "Private"
                test_rows.append(f"{name},{label_dir.name},{usage},{i},CC0")
    (meta / "train_post_competition.csv").write_text("\n".join(train_rows) + "\n")
    (meta / "test_post_competition_scoring_clips.csv").write_text("\n".join(test_rows) + "\n")
    return root


def test_test_split_study_reports_public_private_and_total(tmp_path):
    data = _fsdk18_layout(tmp_path)
    out = tmp_path / "study"
    report_path = reproduce(
        StudyConfig(data=str(data), out=str(out), preset="tiny", lengths=(1.0,), progress=False)
    )
    report = report_path.read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation_split"] == "test" and results["has_usage"]
    assert results["units"] == ["seed0"]  # a test split: seeds are the units, no folds
    _assert_selection_never_sees_scored_clips(out, results)
    assert "| Model | Input length | Public | Private | Total | Runs |" in report
    rows = _table_rows(report, "## Table 1")
    for model in ("cnn-audio", "cnn-spec", "cnn-comb"):
        cells = rows[(model, "1 s")]
        scored = json.loads(
            (out / "runs" / "seed0" / "1s" / model / "evaluation_test.json").read_text()
        )
        assert scored["n_clips"] == 16
        for cell, key in zip(cells[:3], ("map3_public", "map3_private", "map3")):
            assert _CELL.match(cell), cells
            assert float(cell) == pytest.approx(scored[key], abs=_HALF_ULP)
        assert cells[3] == "1"
    # Total is the mean over all 16 clips, so it lies between the Public and Private scores.
    public, private, total = (float(c) for c in rows[("cnn-comb", "1 s")][:3])
    assert min(public, private) - 2 * _HALF_ULP <= total <= max(public, private) + 2 * _HALF_ULP
    assert rows[("baseline (MFCC + LR)", "whole clip")][2] != "n/a"
    assert "labelled test split (16 clips, Public / Private" in report
    assert "not FSDKaggle2018" in report


def test_two_seeds_give_seed_ensembles_against_the_single_seed_best_on_validation(tmp_path):
    data = _fsdk18_layout(tmp_path)
    out = tmp_path / "study"
    config = StudyConfig(
        data=str(data), out=str(out), preset="tiny", lengths=(1.0,), seeds=(0, 1), progress=False
    )
    report = reproduce(config).read_text()
    results = json.loads((out / "results.json").read_text())
    rows = {row["model"]: row for row in results["seed_ensembles"]}
    assert set(rows) == {"cnn-audio", "cnn-spec", "cnn-comb"}
    for model, row in rows.items():
        path = out / "ensembles" / "1s" / model / "evaluation_test.json"
        scored = json.loads(path.read_text())
        members = [Path(m["run"]).resolve() for m in scored["members"]]
        assert members == [(out / "runs" / u / "1s" / model).resolve() for u in ("seed0", "seed1")]
        assert scored["n_clips"] == 16 and row["ensemble"]["map3"] == scored["map3"]
        val = {
            u: json.loads((out / "runs" / u / "1s" / model / "finished.json").read_text())[
                "best_val_map3"
            ]
            for u in ("seed0", "seed1")
        }
        chosen = row["best_single"]["unit"]
        assert val[chosen] == max(val.values())
        single = results["runs"][chosen]["1s"][model]["map3"]
        assert row["best_single"]["map3"] == single
        assert row["gain_over_best"] == pytest.approx(scored["map3"] - single)
    assert "## Seed ensembles" in report and "| cnn-comb | 1 s |" in report
    above = results["comb_above_both"]
    expected = [
        u
        for u in ("seed0", "seed1")
        if results["runs"][u]["1s"]["cnn-comb"]["map3"]
        > max(results["runs"][u]["1s"][b]["map3"] for b in ("cnn-audio", "cnn-spec"))
    ]
    assert above["per_length"]["1s"] == expected
    assert f"above both of its branches in {len(expected)} of 2 (run, input length)" in report
    # Resuming reads the ensembles back instead of scoring them again.
    path = out / "ensembles" / "1s" / "cnn-comb" / "evaluation_test.json"
    before = path.stat().st_mtime_ns
    reproduce(config)
    assert path.stat().st_mtime_ns == before
    # One seed: nothing to ensemble, and the report says nothing about it.
    single = tmp_path / "one"
    text = reproduce(replace(config, out=str(single), seeds=(0,))).read_text()
    assert "## Seed ensembles" not in text
    assert json.loads((single / "results.json").read_text())["seed_ensembles"] == []
