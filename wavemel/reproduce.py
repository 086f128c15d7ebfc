"""The poster's experiment grid, end to end: train, combine, evaluate, baseline, report.

For every input length (1, 2, 3 s) and every *unit* (a seed, or a seed and a fold) the study trains
cnn-audio and cnn-spec (:func:`wavemel.train.train`), builds cnn-comb from the two branches of
the same length and unit (:func:`wavemel.train.combine`), and scores all three, plus cnn-comb with
its audio input and with its spectrogram input set to zero
(:func:`wavemel.evaluate.evaluate_run`). The MFCC + logistic-regression baseline
(:mod:`wavemel.baseline`) is fitted on the same training clips of each unit.

Evaluation split:

* Data with a labelled ``test`` split (FSDKaggle2018 and its stand-in): the networks train on the
  ``train`` split, pick their best epoch on a held-out 1/``val_folds`` of it, and are scored on
  ``test`` (Public / Private / total when the records carry ``usage``). Units are seeds.
* Data without one (FSDD, the synthetic set): k folds of the training clips (whole groups per
  fold with ``group_field``, e.g. one FSDD speaker per fold). The held-out fold is both the
  trainer's validation set (best-epoch choice) and the scored set, so these numbers are slightly
  optimistic; the report says so. Units are seed x fold.

Everything lands in ``OUT``: ``runs/<unit>/<length>/<model>/`` (run folders), ``state.json``
(what is finished), ``results.json`` (every number), ``report.md`` and the figures. A run counts
as finished when ``state.json`` marks it trained, its best checkpoint exists and its evaluation
JSON exists, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wavemel.errors import DataError

__all__ = ["PRESETS", "Preset", "StudyConfig", "reproduce", "VARIANTS"]

BRANCHES = ("cnn-audio", "cnn-spec")
#: Scored variants: (name in tables, run folder, zero_input given to evaluate_run).
VARIANTS: tuple[tuple[str, str, str | None], ...] = (
    ("cnn-audio", "cnn-audio", None),
    ("cnn-spec", "cnn-spec", None),
    ("cnn-comb audio_input=0", "cnn-comb", "audio"),
    ("cnn-comb spec_input=0", "cnn-comb", "spec"),
    ("cnn-comb", "cnn-comb", None),
)
TABLE_MODELS = ("cnn-audio", "cnn-spec", "cnn-comb")
BASELINE = "baseline (MFCC + LR)"
STATE_VERSION = 1
# Files and folders a study writes into OUT; --force removes exactly these.
_STUDY_ENTRIES = ("runs", "state.json", "results.json", "report.md", "figures", "cache")


@dataclass(frozen=True)
class Preset:
    """Sizes and schedules of a study.

    Attributes:
        name: preset name.
        size: model size for cnn-audio and cnn-spec (``tiny``, ``small``, ``paper``).
        lengths: input lengths in seconds.
        seeds: seeds (units on test-split data; multiplied with folds otherwise).
        epochs: branch training epochs.
        comb_epochs: cnn-comb head epochs.
        batch_size: batch size of all trainings.
        lr: peak learning rate of the branches (the head uses the same).
        sample_rate: model sample rate in Hz (clips are resampled once into the cache).
        folds: k for data without a labelled test split.
        max_folds: run only the first this-many folds (None: all k).
        val_folds: on test-split data, 1/val_folds of the training clips choose the best epoch.
        patience: early stopping patience in epochs (0: never stop early).
        workers: data-loader worker processes.
        mixup_alpha: mixup of the branch trainings (the poster uses mixup).
    """

    name: str
    size: str
    lengths: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    comb_epochs: int
    batch_size: int
    lr: float
    sample_rate: int
    folds: int
    max_folds: int | None
    val_folds: int
    patience: int
    workers: int
    mixup_alpha: float = 0.4


PRESETS: dict[str, Preset] = {
    # Tests: seconds per run on the synthetic data; the report code path is the full one.
    "tiny": Preset(
        name="tiny",
        size="tiny",
        lengths=(1.0, 2.0),
        seeds=(0,),
        epochs=1,
        comb_epochs=1,
        batch_size=16,
        lr=1e-3,
        sample_rate=8000,
        folds=2,
        max_folds=2,
        val_folds=4,
        patience=0,
        workers=0,
    ),
    # Two CPU cores, fsdk18-mini (1,173 train / 420 test clips): 6 branch runs + 3 heads, one
    # seed. Measured on 2 cores at 16 kHz, one epoch (with validation) of a small branch costs
    # about 6 s (cnn-audio) and 3 s (cnn-spec) per second of input length, so an epoch of all six
    # branch runs is ~54 s: 24 epochs ~22 min, plus ~4 min for the heads, the evaluations, the
    # baseline and the clip cache. About 26 min on idle cores; under an hour even at half speed.
    "cpu": Preset(
        name="cpu",
        size="small",
        lengths=(1.0, 2.0, 3.0),
        seeds=(0,),
        epochs=24,
        comb_epochs=6,
        batch_size=32,
        lr=2e-3,
        sample_rate=16000,
        folds=5,
        max_folds=None,
        val_folds=10,
        patience=0,
        workers=0,
    ),
    # A GPU and FSDKaggle2018: paper-scale (VGG-like) networks, three seeds.
    "paper": Preset(
        name="paper",
        size="paper",
        lengths=(1.0, 2.0, 3.0),
        seeds=(0, 1, 2),
        epochs=80,
        comb_epochs=15,
        batch_size=64,
        lr=1e-3,
        sample_rate=22050,
        folds=5,
        max_folds=None,
        val_folds=10,
        patience=20,
        workers=6,
    ),
}


@dataclass
class StudyConfig:
    """One ``wavemel reproduce`` invocation; ``None`` fields take the preset's value.

    Attributes:
        data: dataset root (or CSV manifest).
        out: study folder.
        preset: key of :data:`PRESETS`.
        format, label_pattern, group_field: how to read the data (see ``load_dataset``).
        seeds, lengths, folds, max_folds, epochs, comb_epochs, sample_rate: preset overrides.
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: clip cache (default ``OUT/cache``).
        force: discard a previous study in ``out`` (or one made with other settings).
        progress: progress bars and per-run lines on stderr.
    """

    data: str
    out: str
    preset: str = "cpu"
    format: str | None = None
    label_pattern: str | None = None
    group_field: str | None = None
    seeds: tuple[int, ...] | None = None
    lengths: tuple[float, ...] | None = None
    folds: int | None = None
    max_folds: int | None = None
    epochs: int | None = None
    comb_epochs: int | None = None
    sample_rate: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    force: bool = False
    progress: bool = True

    def resolved_preset(self) -> Preset:
        """The preset with this invocation's overrides applied."""
        if self.preset not in PRESETS:
            raise DataError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        base = PRESETS[self.preset]
        overrides = {
            "seeds": tuple(self.seeds) if self.seeds else None,
            "lengths": tuple(float(x) for x in self.lengths) if self.lengths else None,
            "folds": self.folds,
            "max_folds": self.max_folds,
            "epochs": self.epochs,
            "comb_epochs": self.comb_epochs,
            "sample_rate": self.sample_rate,
        }
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Unit:
    """One repetition of the grid: a seed, and a fold for fold-based evaluation."""

    seed: int
    fold: int | None = None

    @property
    def key(self) -> str:
        return f"seed{self.seed}" if self.fold is None else f"seed{self.seed}-fold{self.fold}"


def _length_key(seconds: float) -> str:
    return f"{seconds:g}s"


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class _State:
    path: Path
    settings: dict
    runs: dict[str, dict] = field(default_factory=dict)
    invocations: list[dict] = field(default_factory=list)

    def save(self) -> None:
        payload = {
            "format_version": STATE_VERSION,
            "settings": self.settings,
            "runs": self.runs,
            "invocations": self.invocations,
        }
        _write_json(self.path, payload)


def _write_json(path: Path, payload: Any) -> None:
    # Atomic: an interrupted study never leaves a half-written state or result file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _open_study(out: Path, settings: dict, force: bool) -> _State:
    state_path = out / "state.json"
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if state_path.exists():
        try:
            previous = json.loads(state_path.read_text())
        except ValueError:
            raise DataError(f"{state_path}: not valid JSON; pass --force to start over") from None
        if force:
            _clear_study(out)
        elif previous.get("settings") != settings:
            changed = sorted(
                k
                for k in set(settings) | set(previous.get("settings", {}))
                if settings.get(k) != previous.get("settings", {}).get(k)
            )
            raise DataError(
                f"{out}: holds a study made with other settings ({', '.join(changed)}); "
                "pass --force to discard it or choose another --out"
            )
        else:
            return _State(
                path=state_path,
                settings=settings,
                runs=previous.get("runs", {}),
                invocations=previous.get("invocations", []),
            )
    elif out.exists() and any(out.iterdir()):
        if not force:
            raise DataError(
                f"{out}: exists, is not empty and holds no study (state.json); choose another --out"
                " or pass --force"
            )
        _clear_study(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(path=state_path, settings=settings)
    state.save()
    return state


def _clear_study(out: Path) -> None:
    for name in _STUDY_ENTRIES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


# ---------------------------------------------------------------------------------------------
# The grid


def _log(config: StudyConfig, message: str) -> None:
    if config.progress:
        print(f"[reproduce] {message}", file=sys.stderr, flush=True)


def _units(preset: Preset, has_test: bool) -> list[Unit]:
    if has_test:
        return [Unit(seed) for seed in preset.seeds]
    n_folds = preset.folds if preset.max_folds is None else min(preset.folds, preset.max_folds)
    return [Unit(seed, fold) for seed in preset.seeds for fold in range(n_folds)]


def _split_fields(preset: Preset, unit: Unit, has_test: bool) -> dict:
    """The TrainConfig split settings of a unit (the trainer re-derives the split from them)."""
    if has_test:
        # Fold 0 of val_folds validates (best epoch); the test split is scored afterwards.
        return {"folds": preset.val_folds, "fold": 0, "seed": unit.seed}
    return {"folds": preset.folds, "fold": unit.fold, "seed": unit.seed}


def _run_finished(state: _State, key: str, run_dir: Path) -> bool:
    return (
        bool(state.runs.get(key, {}).get("trained"))
        and (run_dir / "best.json").is_file()
        and (run_dir / "best.safetensors").is_file()
    )


def _prepare_run_dir(run_dir: Path) -> dict:
    """Resume an interrupted run when it left resume state, else start it afresh."""
    if (run_dir / "state").is_dir():
        return {"resume": True, "force": False}
    if run_dir.exists():
        return {"resume": False, "force": True}
    return {"resume": False, "force": False}


def _train_branch(
    config: StudyConfig,
    preset: Preset,
    state: _State,
    unit: Unit,
    seconds: float,
    model: str,
    run_dir: Path,
    has_test: bool,
    cache_dir: Path,
) -> bool:
    """Train one branch unless it is finished; True when it was (re)trained now."""
    from wavemel.train import TrainConfig, train

    key = str(run_dir.relative_to(state.path.parent))
    if _run_finished(state, key, run_dir):
        return False
    _log(config, f"train {model} {_length_key(seconds)} {unit.key}")
    _drop_evaluations(run_dir)
    started = time.perf_counter()
    train_config = TrainConfig(
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
        device=config.device,
        workers=preset.workers,
        cache_dir=str(cache_dir),
        **_split_fields(preset, unit, has_test),
        **_prepare_run_dir(run_dir),
    )
    train(train_config)
    state.runs[key] = {"trained": True, "train_wall_s": round(time.perf_counter() - started, 2)}
    state.save()
    return True


def _drop_evaluations(run_dir: Path) -> None:
    # Scores of an earlier model in this folder must not survive its retraining.
    for stale in run_dir.glob("study-eval-*.json"):
        stale.unlink()


def _train_comb(
    config: StudyConfig,
    preset: Preset,
    state: _State,
    unit: Unit,
    seconds: float,
    length_dir: Path,
    cache_dir: Path,
    branches_changed: bool,
) -> None:
    """Train cnn-comb's head unless finished; from scratch when a branch was just retrained."""
    from wavemel.train import CombineConfig, combine

    run_dir = length_dir / "cnn-comb"
    key = str(run_dir.relative_to(state.path.parent))
    if branches_changed:
        # A head trained on the old branches is worthless: neither skip nor resume it.
        state.runs.pop(key, None)
        restart = {"resume": False, "force": run_dir.exists()}
    elif _run_finished(state, key, run_dir):
        return
    else:
        restart = _prepare_run_dir(run_dir)
    _log(config, f"combine {_length_key(seconds)} {unit.key}")
    _drop_evaluations(run_dir)
    started = time.perf_counter()
    combine(
        CombineConfig(
            audio_run=str(length_dir / "cnn-audio"),
            spec_run=str(length_dir / "cnn-spec"),
            out=str(run_dir),
            epochs=preset.comb_epochs,
            batch_size=preset.batch_size,
            lr=preset.lr,
            mixup_alpha=preset.mixup_alpha,
            device=config.device,
            workers=preset.workers,
            cache_dir=str(cache_dir),
            **restart,
        )
    )
    state.runs[key] = {"trained": True, "train_wall_s": round(time.perf_counter() - started, 2)}
    state.save()


def _evaluation_path(run_dir: Path, split: str, zero_input: str | None) -> Path:
    suffix = f"-zero_{zero_input}" if zero_input else ""
    return run_dir / f"study-eval-{split}{suffix}.json"


_KEEP = ("map3", "map3_public", "map3_private", "top1", "n_clips", "per_class")


def _evaluate(config: StudyConfig, run_dir: Path, split: str, zero_input: str | None) -> dict:
    path = _evaluation_path(run_dir, split, zero_input)
    if path.is_file():
        return json.loads(path.read_text())
    from wavemel.evaluate import evaluate_run

    _log(config, f"evaluate {run_dir.relative_to(Path(config.out))} zero_input={zero_input}")
    started = time.perf_counter()
    result = evaluate_run(run_dir, split=split, zero_input=zero_input, device=config.device)
    kept = {k: result[k] for k in _KEEP if k in result}
    kept["zero_input"] = zero_input
    kept["split"] = split
    kept["wall_s"] = round(time.perf_counter() - started, 2)
    _write_json(path, kept)
    return kept


def _baseline(
    config: StudyConfig,
    preset: Preset,
    index,
    unit: Unit,
    has_test: bool,
    unit_dir: Path,
    feature_cache: dict,
) -> dict:
    path = unit_dir / "baseline.json"
    if path.is_file():
        return json.loads(path.read_text())
    from wavemel.baseline import run_baseline
    from wavemel.data.splits import train_val_split

    _log(config, f"baseline {unit.key}")
    fields = _split_fields(preset, unit, has_test)
    train_records, val_records = train_val_split(
        index,
        folds=fields["folds"],
        fold=fields["fold"],
        seed=fields["seed"],
        group_field=config.group_field,
    )
    eval_records = [r for r in index.split("test") if r.labels] if has_test else val_records
    started = time.perf_counter()
    # Trained on all training clips but the validation part, exactly the networks' clips.
    result = run_baseline(
        train_records,
        eval_records,
        index.labels,
        sample_rate=preset.sample_rate,
        seed=unit.seed,
        feature_cache=feature_cache,
    )
    result.pop("probabilities")
    result.pop("clip_ids")
    result["wall_s"] = round(time.perf_counter() - started, 2)
    unit_dir.mkdir(parents=True, exist_ok=True)
    _write_json(path, result)
    return result


# ---------------------------------------------------------------------------------------------
# Aggregation


def _summary(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        # Sample standard deviation over seeds/folds; 0 for a single run.
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "n": int(array.size),
        "values": [float(v) for v in array],
    }


def _metric_keys(has_usage: bool) -> tuple[str, ...]:
    return ("map3_public", "map3_private", "map3") if has_usage else ("map3",)


def _table1(evaluations: dict, baselines: dict, lengths, has_usage: bool) -> list[dict]:
    rows = []
    for model in TABLE_MODELS:
        for seconds in lengths:
            lk = _length_key(seconds)
            row = {"model": model, "input_seconds": seconds}
            for metric in _metric_keys(has_usage):
                values = [
                    ev[lk][model][metric] for ev in evaluations.values() if metric in ev[lk][model]
                ]
                row[metric] = _summary(values)
            rows.append(row)
    row = {"model": BASELINE, "input_seconds": None}
    for metric in _metric_keys(has_usage):
        row[metric] = _summary([b[metric] for b in baselines.values() if metric in b])
    rows.append(row)
    return rows


def _per_class_means(evaluations: dict, length: str, labels: list[str]) -> dict[str, dict]:
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


def _observations(per_class: dict[str, dict], overall: dict[str, float]) -> dict:
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


# ---------------------------------------------------------------------------------------------
# Figures and report


def _figure4(per_class: dict[str, dict], length: str, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(per_class)
    names = [name for name, _, _ in VARIANTS]
    width = 0.8 / len(names)
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(classes) + 2), 4.5))
    for i, name in enumerate(names):
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            [per_class[c][name] for c in classes],
            width,
            label=name,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("Category")
    ax.set_ylabel("MAP@3 (mean over runs)")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.yaxis.grid(True, linewidth=0.5, alpha=0.5)
    ax.set_axisbelow(True)
    ax.set_title(f"Per-category MAP@3, input length {length.replace('s', ' s')}")
    ax.legend(fontsize=8, ncol=len(names), loc="lower center", bbox_to_anchor=(0.5, 1.08))
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def _figure3(index, train_records, preset: Preset, out_png: Path, seed: int) -> dict:
    from wavemel.audio import audio_info
    from wavemel.figures import render_augmentation_figure

    # A clip a little shorter than the 2 s input shows padding and replication; fall back to the
    # longest of the first few.
    chosen, longest = None, (None, -1.0)
    for record in train_records[:200]:
        try:
            duration = audio_info(record.path).duration
        except Exception:  # noqa: BLE001 - any unreadable clip is simply not chosen
            continue
        if 0.8 <= duration <= 1.8:
            chosen = record
            break
        if duration > longest[1]:
            longest = (record, duration)
    chosen = chosen or longest[0]
    if chosen is None:
        raise DataError(f"{index.root}: no readable training clip for the augmentation figure")
    titles = render_augmentation_figure(
        chosen.path, out_png, sample_rate=preset.sample_rate, input_seconds=2.0, seed=seed
    )
    return {"clip": str(chosen.path), "label": chosen.label, "panels": titles}


def _fmt(summary: dict | None) -> str:
    if not summary or not summary.get("n"):
        return "n/a"
    if summary["n"] == 1:
        # A spread of one run would read as "no spread"; the Runs column says n = 1.
        return f"{summary['mean']:.3f}"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def _environment(device: str) -> dict:
    import librosa
    import torch

    resolved = device
    if device == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    if resolved.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(resolved))
        description = f"{resolved} ({name})"
    else:
        description = (
            f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
            f"torch threads {torch.get_num_threads()})"
        )
    import wavemel

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "librosa": librosa.__version__,
        "wavemel": wavemel.__version__,
        "platform": platform.platform(),
        "device": description,
    }


# The real FSDKaggle2018: 41 classes, 9,473 labelled training clips, 1,600 scored test clips.
_FSDK18_SIZES = (41, 9473, 1600)


def _data_note(fmt: str, n_labels: int, n_train: int, n_test: int) -> str:
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


def equivalent_command(config: StudyConfig) -> str:
    """The ``wavemel reproduce`` command line that runs ``config`` (for the report)."""
    import shlex

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
    if config.device != "auto":
        words += ["--device", config.device]
    return " ".join(shlex.quote(w) for w in words)


def _write_report(out: Path, results: dict) -> Path:
    has_usage = results["has_usage"]
    preset = results["preset"]
    lines = [
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
        f"{preset['mixup_alpha']:g}, clips resampled to {preset['sample_rate']} Hz.",
        f"- Seeds: {', '.join(map(str, preset['seeds']))}; runs (seed, and fold where there is "
        f"no test split): {', '.join(results['units'])}.",
        f"- Evaluated on: {results['evaluation_note']}",
        "- Scores are MAP@3 (mean average precision of the top 3 tags, as on the Kaggle "
        "leaderboard) on whole clips: each clip is cut into input-length windows whose "
        "probabilities are averaged.",
        "",
        "## Table 1: MAP@3 per model and input length",
        "",
        "Mean ± sample standard deviation (no spread shown for a single run) over "
        f"{len(results['units'])} run(s) ({', '.join(results['units'])}).",
        "",
    ]
    metrics = _metric_keys(has_usage)
    headers = {"map3_public": "Public", "map3_private": "Private", "map3": "Total"}
    if not has_usage:
        headers["map3"] = "MAP@3"
    lines.append(
        "| Model | Input length | " + " | ".join(headers[m] for m in metrics) + " | Runs |"
    )
    lines.append("|---|---|" + "---:|" * len(metrics) + "---:|")
    for row in results["table1"]:
        length = "whole clip" if row["input_seconds"] is None else f"{row['input_seconds']:g} s"
        cells = " | ".join(_fmt(row[m]) for m in metrics)
        lines.append(f"| {row['model']} | {length} | {cells} | {row['map3']['n']} |")
    lines += [
        "",
        "cnn-comb with one input set to zero (same runs):",
        "",
        "| Model | Input length | " + " | ".join(headers[m] for m in metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for row in results["zero_input_table"]:
        cells = " | ".join(_fmt(row[m]) for m in metrics)
        lines.append(f"| {row['model']} | {row['input_seconds']:g} s | {cells} |")

    fig4 = results["figure4"]
    obs = fig4["observations"]

    def frac(entry: dict, key: str) -> str:
        if entry["fraction"] is None:
            return "no such classes"
        return f"{len(entry[key])} of {len(entry['classes'])} ({entry['fraction']:.0%})"

    overall = obs["overall_map3"]
    lines += [
        "",
        f"## Figure 4: per-category MAP@3 ({fig4['input_length'].replace('s', ' s')} input)",
        "",
        f"![Figure 4]({fig4['png']})",
        "",
        "The poster's observations, checked on these per-class scores (mean over runs):",
        "",
        f"- Classes where cnn-audio beats cnn-spec: {len(obs['audio_beats_spec']['classes'])}; "
        "among them cnn-comb with spec_input=0 beats cnn-comb with audio_input=0 in "
        f"{frac(obs['audio_beats_spec'], 'comb_spec0_beats_comb_audio0')}.",
        f"- Classes where cnn-spec beats cnn-audio: {len(obs['spec_beats_audio']['classes'])}; "
        "among them cnn-comb with audio_input=0 beats cnn-comb with spec_input=0 in "
        f"{frac(obs['spec_beats_audio'], 'comb_audio0_beats_comb_spec0')}.",
        f"- cnn-comb is at least as good as both branches in "
        f"{len(obs['comb_at_least_both_per_class']['classes'])} of {obs['n_classes']} classes; "
        "overall MAP@3 "
        f"cnn-comb {overall['cnn-comb']:.3f} vs cnn-audio {overall['cnn-audio']:.3f} and "
        f"cnn-spec {overall['cnn-spec']:.3f}: cnn-comb "
        f"{'beats' if obs['comb_beats_both_overall'] else 'does not beat'} both.",
        "",
    ]
    fig3 = results["figure3"]
    lines += ["## Figure 3: augmentations", ""]
    if fig3.get("png"):
        lines += [
            f"![Figure 3]({fig3['png']})",
            "",
            f"Training clip `{Path(fig3['clip']).name}` (label {fig3['label']}); panels: "
            + "; ".join(fig3["panels"])
            + ".",
        ]
    else:
        lines.append(f"Not drawn: {fig3.get('error')}")
    env = results["environment"]
    wall = results["wall_time"]
    lines += [
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
        f"- Seeds: {', '.join(map(str, preset['seeds']))} (each seeds the split, the weights, the "
        "data order and the augmentations); units: " + ", ".join(results["units"]) + ".",
        "- To regenerate: run the command above with a new `--out` (the same command and `--out` "
        "resumes this study and only redoes what is missing). The same seeds give the same "
        "splits and baseline; the network scores can differ in the last digits on another "
        "machine, thread count or torch version.",
        f"- Wall time: {wall['this_invocation_s'] / 60:.1f} min for this invocation; "
        f"{wall['all_invocations_s'] / 60:.1f} min over {wall['invocations']} invocation(s); "
        f"training time summed over runs {wall['training_s'] / 60:.1f} min.",
        "- Every number above is in `results.json`; per-run evaluations are in "
        "`runs/<unit>/<length>/<model>/study-eval-*.json`.",
        "",
    ]
    path = out / "report.md"
    tmp = path.with_name("report.md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# Entry point


def reproduce(config: StudyConfig, *, command: str | None = None) -> Path:
    """Run (or resume) the study and write ``OUT/report.md`` and ``OUT/results.json``.

    Args:
        config: what to run; see :class:`StudyConfig`.
        command: the command line to print in the report (default: this process's argv).

    Returns:
        Path of ``report.md``.

    Raises:
        DataError: unreadable data, no labelled clips, or ``out`` holding something else.
    """
    from wavemel.data import load_dataset

    started = time.perf_counter()
    preset = config.resolved_preset()
    out = Path(config.out)
    index = load_dataset(
        config.data,
        config.format,
        label_pattern=config.label_pattern,
        group_field=config.group_field,
    )
    has_test = any(r.labels for r in index.split("test"))
    eval_records = [r for r in index.split("test") if r.labels]
    has_usage = has_test and any(
        (r.usage or "").lower() in ("public", "private") for r in eval_records
    )
    if not has_test and preset.folds < 2:
        raise DataError(f"{config.data}: no labelled test split, so --folds must be at least 2")
    split = "test" if has_test else "val"
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
    # Through JSON once so that tuples compare equal to the lists read back from state.json.
    settings = json.loads(json.dumps(settings))
    state = _open_study(out, settings, config.force)
    cache_dir = Path(config.cache_dir) if config.cache_dir else out / "cache"
    units = _units(preset, has_test)
    command = command or equivalent_command(config)

    evaluations: dict[str, dict] = {}
    baselines: dict[str, dict] = {}
    feature_cache: dict = {}
    for unit in units:
        unit_dir = out / "runs" / unit.key
        evaluations[unit.key] = {}
        for seconds in preset.lengths:
            length_dir = unit_dir / _length_key(seconds)
            changed = False
            for model in BRANCHES:
                changed |= _train_branch(
                    config,
                    preset,
                    state,
                    unit,
                    seconds,
                    model,
                    length_dir / model,
                    has_test,
                    cache_dir,
                )
            _train_comb(config, preset, state, unit, seconds, length_dir, cache_dir, changed)
            scores = {}
            for name, run_name, zero_input in VARIANTS:
                scores[name] = _evaluate(config, length_dir / run_name, split, zero_input)
            evaluations[unit.key][_length_key(seconds)] = scores
        baselines[unit.key] = _baseline(
            config, preset, index, unit, has_test, unit_dir, feature_cache
        )

    lengths = [_length_key(s) for s in preset.lengths]
    table1 = _table1(evaluations, baselines, preset.lengths, has_usage)
    zero_rows = []
    for name in ("cnn-comb audio_input=0", "cnn-comb spec_input=0"):
        for seconds in preset.lengths:
            lk = _length_key(seconds)
            row = {"model": name, "input_seconds": seconds}
            for metric in _metric_keys(has_usage):
                row[metric] = _summary([ev[lk][name][metric] for ev in evaluations.values()])
            zero_rows.append(row)

    # Figure 4 at 2 s (the poster's best length) when it was run, else the first length.
    fig_length = "2s" if "2s" in lengths else lengths[0]
    per_class = _per_class_means(evaluations, fig_length, index.labels)
    overall = {
        name: float(np.mean([ev[fig_length][name]["map3"] for ev in evaluations.values()]))
        for name, _, _ in VARIANTS
    }
    figures = out / "figures"
    _figure4(per_class, fig_length, figures / "figure4_per_class.png")
    observations = _observations(per_class, overall)

    figure3: dict = {"png": None}
    fig3_png = figures / "figure3_augmentation.png"
    first = units[0]
    fields = _split_fields(preset, first, has_test)
    from wavemel.data.splits import train_val_split

    train_records, _ = train_val_split(
        index,
        folds=fields["folds"],
        fold=fields["fold"],
        seed=fields["seed"],
        group_field=config.group_field,
    )
    try:
        figure3.update(_figure3(index, train_records, preset, fig3_png, first.seed))
        figure3["png"] = str(fig3_png.relative_to(out))
    except (ImportError, DataError, OSError) as exc:
        figure3["error"] = f"{type(exc).__name__}: {exc}"

    this_wall = time.perf_counter() - started
    state.invocations.append(
        {
            "command": command,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - this_wall)),
            "wall_s": round(this_wall, 2),
        }
    )
    state.save()
    if has_test:
        evaluation_note = (
            f"the dataset's labelled test split ({len(eval_records)} clips"
            + (", Public / Private from its `usage` column" if has_usage else "")
            + f"); the networks chose their best epoch on a held-out 1/{preset.val_folds} of the "
            "training clips, and the baseline trained on the same clips."
        )
    else:
        group = f", whole `{config.group_field}` groups per fold" if config.group_field else ""
        evaluation_note = (
            f"{preset.folds}-fold cross-validation of the training clips{group}, "
            f"{len(units) // len(preset.seeds)} fold(s) run. The held-out fold is also the "
            "trainer's validation set (it picks the best epoch on it), so the network scores "
            "are slightly optimistic; the baseline has no epochs to pick."
        )
        if config.group_field:
            held_out = []
            for unit in units:
                fields = _split_fields(preset, unit, has_test)
                _, val_records = train_val_split(
                    index,
                    folds=fields["folds"],
                    fold=fields["fold"],
                    seed=fields["seed"],
                    group_field=config.group_field,
                )
                groups = sorted({str(r.group) for r in val_records})
                held_out.append(f"{unit.key}: {', '.join(groups)}")
            evaluation_note += f" Held-out {config.group_field} per run: " + "; ".join(held_out)
            evaluation_note += "."
    n_train = sum(1 for r in index.split("train") if r.labels)
    results = {
        "data": settings["data"],
        "format": index.format,
        "data_note": _data_note(index.format, len(index.labels), n_train, len(eval_records)),
        "n_train_clips": n_train,
        "n_labels": len(index.labels),
        "labels": index.labels,
        "preset": asdict(preset),
        "evaluation_split": split,
        "evaluation_note": evaluation_note,
        "has_usage": has_usage,
        "units": [u.key for u in units],
        "table1": table1,
        "zero_input_table": zero_rows,
        "figure4": {
            "input_length": fig_length,
            "png": str((figures / "figure4_per_class.png").relative_to(out)),
            "per_class": per_class,
            "observations": observations,
        },
        "figure3": figure3,
        "runs": evaluations,
        "baseline": baselines,
        "environment": _environment(config.device),
        "command": command,
        "wall_time": {
            "this_invocation_s": round(this_wall, 2),
            "all_invocations_s": round(sum(i["wall_s"] for i in state.invocations), 2),
            "invocations": len(state.invocations),
            "training_s": round(sum(r.get("train_wall_s", 0.0) for r in state.runs.values()), 2),
        },
    }
    _write_json(out / "results.json", results)
    return _write_report(out, results)
