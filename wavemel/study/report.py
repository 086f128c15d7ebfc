"""``OUT/report.md``: the study's numbers as the reader sees them, one writer per section.

Every writer takes the ``results`` dict (the content of ``results.json``) and returns its lines,
so the report says nothing that ``results.json`` does not hold.
"""

from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path

import librosa
import numpy as np
import torch

import wavemel
from wavemel._device import cpu_has_bf16_units, resolve_device
from wavemel._io import atomic_write_text
from wavemel._threads import thread_summary
from wavemel.errors import DataError
from wavemel.study.presets import Preset, StudyConfig
from wavemel.study.tables import metric_keys

__all__ = ["data_note", "environment", "equivalent_command", "evaluation_note", "write_report"]

# The real FSDKaggle2018: 41 classes, 9,473 labelled training clips, 1,600 scored test clips.
_FSDK18_SIZES = (41, 9473, 1600)


def fmt(summary: dict | None) -> str:
    """A table cell: ``mean ± std``, the mean alone for one run, ``n/a`` for none."""
    if not summary or not summary.get("n"):
        return "n/a"
    if summary["n"] == 1:
        # A spread of one run would read as "no spread"; the Runs column says n = 1.
        return f"{summary['mean']:.3f}"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def environment(device: str) -> dict:
    """Versions and the device, for the report's provenance block."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        description = f"{resolved} ({torch.cuda.get_device_name(resolved)})"
    else:
        description = (
            f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
            f"torch threads {thread_summary() or torch.get_num_threads()}, bfloat16 units "
            f"{'yes' if cpu_has_bf16_units() else 'no'})"
        )
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "librosa": librosa.__version__,
        "wavemel": wavemel.__version__,
        "platform": platform.platform(),
        "device": description,
    }


def data_note(fmt: str, n_labels: int, n_train: int, n_test: int) -> str:
    """Whether the numbers can be set beside the poster's (FSDKaggle2018) or not."""
    if fmt.startswith("fsdkaggle2018") and (n_labels, n_train, n_test) == _FSDK18_SIZES:
        return (
            "These data have the size of FSDKaggle2018 (41 classes, 9,473 training and 1,600 "
            "scored test clips), so the numbers below can be compared with the poster's Table 1."
        )
    return (
        f"These data are **not FSDKaggle2018** ({n_labels} classes, {n_train} labelled training "
        "clips; FSDKaggle2018 has 41 and 9,473). The numbers below compare the networks with each "
        "other on these data; they are not FSDKaggle2018 results and must not be set beside the "
        "poster's (MAP@3 0.948 for cnn-comb at 2 s)."
    )


def evaluation_note(
    preset: Preset,
    *,
    n_test_clips: int | None,
    has_usage: bool,
    n_units: int,
    group_field: str | None,
    held_out: list[str],
) -> str:
    """What the networks were scored on, and what that means for the numbers.

    Args:
        preset: the resolved preset.
        n_test_clips: labelled test clips, or None for data scored by folds.
        has_usage: whether the test clips carry Public / Private.
        n_units: units run (seeds, or seeds x folds).
        group_field: the field whose groups stay in one fold, if any.
        held_out: ``"unit: groups"`` per unit when folds hold out groups.
    """
    if n_test_clips is not None:
        return (
            f"the dataset's labelled test split ({n_test_clips} clips"
            + (", Public / Private from its `usage` column" if has_usage else "")
            + f"); the networks chose their best epoch on a held-out 1/{preset.val_folds} of the "
            "training clips, and the baseline trained on the same clips."
        )
    group = f", whole `{group_field}` groups per fold" if group_field else ""
    note = (
        f"{preset.folds}-fold cross-validation of the training clips{group}, "
        f"{n_units // len(preset.seeds)} fold(s) run. Each run scores its held-out fold, which "
        "takes no part in model selection: the next fold chooses the best epoch, early stopping "
        f"and the cnn-comb head's epoch, and the other {preset.folds - 2} fold(s) train (the "
        "baseline trains on the same clips)."
    )
    if group_field:
        note += f" Held-out {group_field} per run: " + "; ".join(held_out) + "."
    return note


def equivalent_command(config: StudyConfig) -> str:
    """The ``wavemel reproduce`` command line that runs ``config`` (for the report)."""
    words = ["wavemel", "reproduce", "--data", str(config.data), "--out", str(config.out)]
    words += ["--preset", config.preset]
    for option in (
        "format",
        "label_pattern",
        "group_field",
        "folds",
        "max_folds",
        "epochs",
        "comb_epochs",
        "val_every",
        "sample_rate",
        "cache_dir",
    ):
        value = getattr(config, option)
        if value is not None:
            words += ["--" + option.replace("_", "-"), str(value)]
    for option in ("seeds", "lengths"):
        values = getattr(config, option)
        if values:
            words += ["--" + option]
            words += [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    if config.no_recipe:
        words += ["--no-recipe"]
    if config.device != "auto":
        words += ["--device", config.device]
    return " ".join(shlex.quote(w) for w in words)


# ---------------------------------------------------------------------------------------------
# Sections


def _header_section(results: dict) -> list[str]:
    preset = results["preset"]
    return [
        "# Reproducing the poster: results",
        "",
        "Made by `wavemel reproduce` (command, versions and device at the end). "
        + results.get("data_note", ""),
        "",
        f"- Data: `{results['data']}` (format `{results['format']}`, {results['n_labels']} "
        f"classes, {results.get('n_train_clips', '?')} labelled training clips).",
        f"- Preset `{preset['name']}`: model size `{preset['size']}`, input lengths "
        + ", ".join(f"{s:g} s" for s in preset["lengths"])
        + f", {preset['epochs']} epoch{'s' if preset['epochs'] != 1 else ''} (cnn-comb head: "
        f"{preset['comb_epochs']}), batch "
        f"{preset['batch_size']}, learning rate {preset['lr']:g}, mixup alpha "
        f"{preset['mixup_alpha']:g}, clips resampled to {preset['sample_rate']} Hz"
        + _schedule_words(preset)
        + ".",
        f"- Seeds: {', '.join(map(str, preset['seeds']))}; runs (seed, and fold where there is "
        f"no test split): {', '.join(results['units'])}.",
        f"- Evaluated on: {results['evaluation_note']}",
        "- Scores are MAP@3 (mean average precision of the top 3 tags, as on the Kaggle "
        "leaderboard) on whole clips: each clip is cut into input-length windows whose "
        "probabilities are averaged.",
        "",
    ]


def _schedule_words(preset: dict) -> str:
    """How often the branches validate, and the preset's recipe, as a clause of the header."""
    every = preset.get("val_every", 1)
    words = ""
    if every != 1:
        words = f"; the branches validate every {every} epochs (and after the last)"
    recipe = preset.get("recipe") or {}
    settings = [
        f"{network}: " + ", ".join(f"`{k}={v!r}`" for k, v in fields.items())
        for network, fields in recipe.items()
        if fields
    ]
    if settings:
        words += "; recipe " + "; ".join(settings)
    return words


def _metric_headers(has_usage: bool) -> list[str]:
    names = {"map3_public": "Public", "map3_private": "Private", "map3": "Total"}
    if not has_usage:
        names["map3"] = "MAP@3"
    return [names[m] for m in metric_keys(has_usage)]


def _table1_section(results: dict) -> list[str]:
    metrics = metric_keys(results["has_usage"])
    headers = _metric_headers(results["has_usage"])
    lines = [
        "## Table 1: MAP@3 per model and input length",
        "",
        "Mean ± sample standard deviation (no spread shown for a single run) over "
        f"{len(results['units'])} run(s) ({', '.join(results['units'])}).",
        "",
        "| Model | Input length | " + " | ".join(headers) + " | Runs |",
        "|---|---|" + "---:|" * len(metrics) + "---:|",
    ]
    for row in results["table1"]:
        length = "whole clip" if row["input_seconds"] is None else f"{row['input_seconds']:g} s"
        cells = " | ".join(fmt(row[m]) for m in metrics)
        lines.append(f"| {row['model']} | {length} | {cells} | {row['map3']['n']} |")
    return lines


def _ablation_section(results: dict) -> list[str]:
    metrics = metric_keys(results["has_usage"])
    lines = [
        "",
        "cnn-comb with one branch ablated (same runs), two ways: `X_input=0` feeds that branch an "
        "all-zero input (the poster's ablation; out of distribution for the branch, whose input "
        "normalisation expects about -38 dB), `X=mean` replaces that branch's features by their "
        "mean over the training clips (in distribution, carrying nothing about the clip):",
        "",
        "| Model | Input length | " + " | ".join(_metric_headers(results["has_usage"])) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for row in results["ablation_table"]:
        cells = " | ".join(fmt(row[m]) for m in metrics)
        lines.append(f"| {row['model']} | {row['input_seconds']:g} s | {cells} |")
    return lines


def _fraction(entry: dict, key: str) -> str:
    if entry["fraction"] is None:
        return "no such classes"
    return f"{len(entry[key])} of {len(entry['classes'])} ({entry['fraction']:.0%})"


_ABLATION_WORDS = {
    "mean": ("features at their training mean", "audio=mean", "spec=mean"),
    "zero": ("input set to zero", "audio_input=0", "spec_input=0"),
}


def _observation_lines(obs: dict, per_run: dict) -> list[str]:
    """The two observations under one ablation, with how many runs they hold in."""
    what, no_audio, no_spec = _ABLATION_WORDS[obs["ablation"]]
    audio, spec = obs["audio_beats_spec"], obs["spec_beats_audio"]
    counts = per_run[obs["ablation"]]
    return [
        f"- Classes where cnn-audio beats cnn-spec: {len(audio['classes'])}; "
        f"among them cnn-comb with {no_spec} beats cnn-comb with {no_audio} in "
        f"{_fraction(audio, 'comb_spec0_beats_comb_audio0')} (holds, for most such classes, "
        f"in {counts['audio_beats_spec']} of {counts['n']} runs).",
        f"- Classes where cnn-spec beats cnn-audio: {len(spec['classes'])}; "
        f"among them cnn-comb with {no_audio} beats cnn-comb with {no_spec} in "
        f"{_fraction(spec, 'comb_audio0_beats_comb_spec0')} (holds in "
        f"{counts['spec_beats_audio']} of {counts['n']} runs).",
    ]


def _figure4_section(results: dict) -> list[str]:
    fig4 = results["figure4"]
    obs = fig4["observations"]
    per_run = fig4["observations_per_run"]
    overall = obs["overall_map3"]
    counts = per_run[obs["ablation"]]
    return [
        "",
        f"## Figure 4: per-category MAP@3 ({fig4['input_length'].replace('s', ' s')} input)",
        "",
        f"![Figure 4]({fig4['png']})",
        "",
        "The poster's observations, checked on these per-class scores (mean over runs, and run "
        f"by run). They use the mean-feature ablation ({_ABLATION_WORDS['mean'][0]}), which "
        "keeps the head's input in distribution:",
        "",
        *_observation_lines(obs, per_run),
        f"- cnn-comb is at least as good as both branches in "
        f"{len(obs['comb_at_least_both_per_class']['classes'])} of {obs['n_classes']} classes; "
        f"overall MAP@3 cnn-comb {overall['cnn-comb']:.3f} vs cnn-audio "
        f"{overall['cnn-audio']:.3f} and cnn-spec {overall['cnn-spec']:.3f}; cnn-comb beats "
        f"both in {counts['comb_beats_both']} of {counts['n']} runs.",
        "",
        "The same observations with the poster's zero-input ablation:",
        "",
        *_observation_lines(fig4["observations_zero_input"], per_run),
        "",
    ]


def _claims_section(results: dict) -> list[str]:
    spread = results["spread"]
    if spread["max_std"] is None:
        spread_line = (
            "One run per cell: no spread was measured, so each verdict below rests on a single "
            "run and a difference of a few hundredths may not survive another seed."
        )
    else:
        spread_line = (
            f"Over the {spread['n_runs']} runs the standard deviation of a Table 1 cell (total "
            f"MAP@3) is {spread['min_std']:.3f} to {spread['max_std']:.3f}: a difference smaller "
            "than the spread is called a tie."
        )
    lines = [
        "",
        "## Claims, run by run",
        "",
        spread_line,
        "",
        "| Claim | Input length | Verdict | Mean difference | Spread | Runs agreeing |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in results["claims"]:
        lines.append(
            f"| {row['claim']} | {row['input_seconds']:g} s | {row['verdict']} | "
            f"{row['mean_difference']:+.3f} | {row['spread']:.3f} | {row['agree']} of {row['n']} |"
        )
    above = results.get("comb_above_both")
    if above:
        n_runs = len(results["units"])
        per_length = "; ".join(
            f"{length.replace('s', ' s')}: {len(units)} of {n_runs}"
            for length, units in above["per_length"].items()
        )
        lines += [
            "",
            f"cnn-comb is above both of its branches in {above['n_above']} of "
            f"{above['n_cells']} (run, input length) pairs ({per_length}).",
        ]
    return lines


def _seed_ensemble_section(results: dict) -> list[str]:
    rows = results.get("seed_ensembles") or []
    if not rows:
        return []
    n = len(results["units"])
    lines = [
        "",
        "## Seed ensembles",
        "",
        f"Each network at each input length as the ensemble of its {n} seeds (the mean of their "
        "clip probabilities, equal weights), against the single seed that scored best on its own "
        "validation clips (never on the scored ones) and against the seeds' mean ± std. Total "
        "MAP@3 on the scored split; `wavemel evaluate RUN RUN ... --out-dir DIR` and `wavemel "
        "predict --ensemble RUN` use such ensembles.",
        "",
        "| Model | Input length | Ensemble | Best single on validation | Single seeds "
        "| Ensemble − best single | Seeds below the ensemble |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        best = row["best_single"]
        best_cell = "n/a" if best is None else f"{best['map3']:.3f} ({best['unit']})"
        gain = "n/a" if row["gain_over_best"] is None else f"{row['gain_over_best']:+.3f}"
        lines.append(
            f"| {row['model']} | {row['input_seconds']:g} s | {row['ensemble']['map3']:.3f} | "
            f"{best_cell} | {fmt(row['singles'])} | {gain} | {row['members_below']} of "
            f"{row['singles']['n']} |"
        )
    return lines


def _figure3_section(results: dict) -> list[str]:
    fig3 = results["figure3"]
    lines = ["## Figure 3: augmentations", ""]
    if not fig3.get("png"):
        return [*lines, f"Not drawn: {fig3.get('error')}"]
    return [
        *lines,
        f"![Figure 3]({fig3['png']})",
        "",
        f"Training clip `{Path(fig3['clip']).name}` (label {fig3['label']}); panels: "
        + "; ".join(fig3["panels"])
        + ".",
    ]


def _provenance_section(results: dict) -> list[str]:
    env = results["environment"]
    wall = results["wall_time"]
    seeds = ", ".join(map(str, results["preset"]["seeds"]))
    return [
        "",
        "## How these numbers were made",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"- Versions: Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, "
        f"librosa {env['librosa']}, wavemel {env['wavemel']} ({env['platform']}).",
        f"- Device: {env['device']}.",
        f"- Seeds: {seeds} (each seeds the split, the weights, the "
        "data order and the augmentations); units: " + ", ".join(results["units"]) + ".",
        "- To regenerate: run the command above with a new `--out` (the same command and `--out` "
        "resumes this study and only redoes what is missing). The same seeds give the same "
        "splits and baseline; the network scores also depend on the machine, thread count and "
        "torch version, by about the spread between seeds stated under the claims.",
        f"- Wall time: {wall['this_invocation_s'] / 60:.1f} min for this invocation; "
        f"{wall['all_invocations_s'] / 60:.1f} min over {wall['invocations']} finished "
        f"invocation(s); training time summed over runs {wall['training_s'] / 60:.1f} min"
        + (
            " (more than the invocations: some runs were trained by an invocation that was "
            "interrupted, which records no wall time)."
            if wall["training_s"] > wall["all_invocations_s"]
            else "."
        ),
        "- Every number above is in `results.json`; per-run evaluations are in "
        "`runs/<unit>/<length>/<model>/evaluation_*.json`.",
        "",
    ]


_SECTIONS = (
    _header_section,
    _table1_section,
    _ablation_section,
    _claims_section,
    _seed_ensemble_section,
    _figure4_section,
    _figure3_section,
    _provenance_section,
)


def write_report(out: Path, results: dict) -> Path:
    """Write ``out/report.md`` from ``results`` (atomically) and return its path."""
    lines = [line for section in _SECTIONS for line in section(results)]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines), error=DataError)
    return path
