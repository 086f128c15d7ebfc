"""Scoring a trained run on a split: MAP@3 (Public/Private), top-1, per-class, confusion matrix.

A multi-label run (sigmoid outputs) is also scored with the metrics of that field: macro mAP (as
FSD50K reports), lwlrap (FSDKaggle2019's metric) and micro/macro F1 of the tags at the per-class
thresholds stored in its checkpoint.

:func:`compute_evaluation` rebuilds the clips of the chosen split from the run's own
``config.json`` (one :class:`~wavemel.data.splits.SplitSpec`) and scores each clip whole through
:class:`wavemel.infer.Tagger`, the one scorer (input-length windows, probabilities averaged).
:func:`write_evaluation` writes the result next to the checkpoint as
``evaluation_<split>[_zero-<x>].json`` and ``confusion_<split>[_zero-<x>].png``;
:func:`evaluate_run` does both.

Counting is honest: a labelled clip whose file is missing or cannot be decoded has no answer and
counts as a miss (AP 0), as Kaggle scores a missing answer, and is listed by path in
``unscored``. On FSDKaggle2018's test split the Public/Private clip counts are checked against the
official 301 / 1,299.

Several runs (a fold or seed ensemble) are scored as one :class:`wavemel.infer.Ensemble`: the mean
of their clip probabilities, each member with its own windows and hop. Their split must be one:
for ``val`` and ``heldout`` every :data:`~wavemel.data.splits.SPLIT_FIELDS` setting of their
``config.json`` agrees (``heldout`` ignores the validation ``fold``, which does not move the
held-out fold, so the folds of one k-fold study ensemble), for ``test`` their recorded data roots
are one folder (or ``data`` names it). The report lists the ``members`` and goes to ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from wavemel._io import atomic_write_json
from wavemel.data.records import ClipRecord, DatasetIndex
from wavemel.data.splits import SPLIT_FIELDS, SplitSpec
from wavemel.errors import (
    CheckpointError,
    DataError,
    EmptyClipWarning,
    WavemelError,
    WavemelWarning,
)
from wavemel.figures import plot_confusion
from wavemel.infer import Ensemble, Tagger
from wavemel.metrics import (
    average_precision_per_class,
    confusion_matrix,
    f1_at_thresholds,
    lwlrap,
    lwlrap_per_class,
    map_at_k,
    mean_average_precision,
    per_class_map_at_k,
    top_k_accuracy,
)
from wavemel.train.config import load_config_file

__all__ = [
    "SPLITS",
    "compute_evaluation",
    "evaluate_run",
    "evaluation_name",
    "write_evaluation",
]

#: Splits ``evaluate_run`` understands: the dataset's labelled test clips, or the run's
#: validation fold (recomputed from ``RUN/config.json``).
#: "heldout" is the fold a k-fold run held out of training and validation (``test_fold``).
SPLITS = ("test", "val", "heldout")
_ZERO_INPUTS = ("audio", "spec")
#: FSDKaggle2018's scored test clips (Kaggle's Public and Private leaderboards).
FSDKAGGLE2018_USAGE = {"public": 301, "private": 1299}


def evaluation_name(
    split: str, zero_input: str | None = None, mean_input: str | None = None
) -> str:
    """The one naming scheme of evaluation files: ``evaluation_<name>.json`` and
    ``confusion_<name>.png`` with ``<name>`` = ``test``, ``val``, ``test_zero-audio``,
    ``heldout_mean-spec``, ..."""
    name = split + (f"_zero-{zero_input}" if zero_input else "")
    return name + (f"_mean-{mean_input}" if mean_input else "")


def _run_folder(run: Path) -> Path:
    return run if run.is_dir() else run.parent


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict (``{}`` for a bare checkpoint folder without one)."""
    path = run_dir / "config.json"
    # Field types are checked there, so a crafted config is one line naming the field.
    return load_config_file(path) if path.exists() else {}


def _split_records(
    run_dir: Path,
    config: dict[str, Any],
    data: str | os.PathLike | None,
    split: str,
    overrides: dict[str, Any],
) -> tuple[DatasetIndex, list[ClipRecord]]:
    """The labelled clips of ``split``, rebuilt from the run's split settings."""
    settings = dict(config)
    if data is not None and not settings.get("data"):
        settings["data"] = os.fspath(data)
    if not settings.get("data"):
        raise DataError(f"{run_dir}: no data root in config.json; pass data (--data ROOT)")
    spec = dataclasses.replace(SplitSpec.from_settings(settings).with_data(data), **overrides)
    if split == "heldout" or (split == "test" and spec.test_fold is not None):
        # The trainer's own index (missing files left out), so the folds are the trainer's folds.
        index = spec.load_index()
        return index, spec.heldout(index)
    if split == "test":
        # Listed test files that are missing stay in: they count as misses, not as absent.
        index = spec.load_index(check_files=False)
        records = [r for r in index.split("test") if r.labels]
        if not records:
            raise DataError(f"{index.root}: the dataset has no labelled 'test' clips")
        return index, records
    if not config:
        raise CheckpointError(f"{run_dir}: no config.json, so the validation split is unknown")
    # The trainer's own index (missing files left out), so the folds are the trainer's folds.
    index = spec.load_index()
    return index, spec.split(index)[1]


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _check_request(
    split: str, zero_input: str | None, mean_input: str | None, overrides: dict[str, Any]
) -> None:
    if split not in SPLITS:
        raise WavemelError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if zero_input is not None and zero_input not in _ZERO_INPUTS:
        raise WavemelError(f"--zero-input must be audio or spec, got {zero_input!r}")
    if mean_input is not None and mean_input not in _ZERO_INPUTS:
        raise WavemelError(f"--mean-input must be audio or spec, got {mean_input!r}")
    if zero_input is not None and mean_input is not None:
        raise WavemelError("--zero-input and --mean-input are two ablations: choose one")
    unknown = sorted(set(overrides) - set(SPLIT_FIELDS) - {"data"})
    if unknown:
        raise TypeError(f"evaluate_run() got unexpected keyword(s) {', '.join(unknown)}")


def _score(
    tagger: Tagger | Ensemble,
    records: list[ClipRecord],
    ablation: dict[str, str | None],
    progress: bool,
) -> tuple[np.ndarray, dict[str, str], list[str]]:
    """``(N, C)`` probabilities (all-NaN rows for clips without an answer), reasons, empty clips."""
    scores = np.full((len(records), len(tagger.labels)), np.nan)
    unscored: dict[str, str] = {}
    # ``{"zero_input": ..., "mean_input": ...}``: cnn-comb's ablation switches, restored after.
    switches = {name: value for name, value in ablation.items() if value is not None}
    model = tagger.model if switches else None  # an ensemble is never ablated
    previous = {name: getattr(model, name) for name in switches}
    for name, value in switches.items():
        setattr(model, name, value)
    bar = tqdm(total=len(records), desc="evaluate", unit="clip", leave=False, disable=not progress)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            answers = tagger.predict_many([r.path for r in records])
            for row, (_, probabilities, error) in enumerate(answers):
                if error is None:
                    scores[row] = probabilities
                else:
                    unscored[str(records[row].path)] = error
                bar.update(1)
    finally:
        bar.close()
        for name, value in previous.items():
            setattr(model, name, value)
    empty = []
    for warning in caught:
        if isinstance(warning.message, EmptyClipWarning):
            empty.append(warning.message.path)
        else:
            warnings.warn(warning.message, warning.category, stacklevel=3)
    return scores, unscored, empty


def _usage_scores(
    result: dict[str, Any], records: list[ClipRecord], scores: np.ndarray, targets: np.ndarray
) -> None:
    usages = np.array([(record.usage or "").lower() for record in records])
    if not usages.any():
        return
    for part in ("public", "private"):
        rows = usages == part
        result[f"map3_{part}"] = map_at_k(scores[rows], targets[rows]) if rows.any() else None
        result[f"n_{part}"] = int(rows.sum())


def _check_fsdkaggle2018_counts(index: DatasetIndex, split: str, result: dict[str, Any]) -> None:
    if not index.format.startswith("fsdkaggle2018") or split != "test":
        return
    found = {part: result.get(f"n_{part}", 0) for part in FSDKAGGLE2018_USAGE}
    if found != FSDKAGGLE2018_USAGE:
        warnings.warn(
            f"{index.root}: FSDKaggle2018's scored test set has 301 Public / 1,299 Private clips, "
            f"this one {found['public']} / {found['private']}: the score is not comparable with "
            "the Kaggle leaderboard",
            stacklevel=3,
        )


def compute_evaluation(
    run: str | os.PathLike | Sequence[str | os.PathLike],
    data: str | os.PathLike | None = None,
    *,
    split: str = "test",
    zero_input: str | None = None,
    mean_input: str | None = None,
    device: str = "auto",
    hop_seconds: float | None = None,
    aggregate: str = "mean",
    batch_size: int = 64,
    decode_workers: int | None = None,
    progress: bool = False,
    **data_overrides: Any,
) -> dict[str, Any]:
    """Score a run's checkpoint on the whole clips of a split (writes nothing).

    Args: as :func:`evaluate_run`, without ``out_dir``.

    Returns:
        A JSON-able dict with ``map3``, ``top1``, ``n_clips`` (every labelled clip of the split the
        model knows the labels of, answered or not), ``n_unscored`` and ``unscored`` (path ->
        reason for clips without an answer, counted as misses), ``per_class`` (``{label:
        {"map3", "ap", "n"}}``; ``None`` where undefined), ``map3_public``/``map3_private`` (and
        their clip counts) when the records carry ``usage``, ``excluded`` (clips whose labels the
        model does not know), ``empty`` (clips without samples, answered with the training
        prior), ``clips`` (per clip: path, true labels, ``top3`` pairs; ``None`` when
        unanswered) and ``confusion_matrix``. A multi-label run adds ``multi_label: true``,
        ``map`` (macro mAP), ``lwlrap``, ``micro_f1``, ``macro_f1``, ``micro_precision``,
        ``micro_recall`` (tags at the checkpoint's thresholds), per class ``lwlrap`` and
        ``threshold``, and per clip its ``tags`` (every label at or above its threshold).

    Raises:
        CheckpointError: Missing/corrupt checkpoint, or ``zero_input`` on a non-cnn-comb model.
        DataError: The dataset or the split cannot be rebuilt, or no clip could be scored.
    """
    _check_request(split, zero_input, mean_input, data_overrides)
    runs = _as_runs(run)
    if len(runs) > 1 and (zero_input is not None or mean_input is not None):
        raise WavemelError("--zero-input and --mean-input ablate one cnn-comb run, not an ensemble")
    run, run_dir = runs[0], _run_folder(runs[0])
    configs = [_read_run_config(_run_folder(member)) for member in runs]
    config = configs[0]
    _check_one_split(runs, configs, data, split)
    members = [
        Tagger.from_checkpoint(
            member,
            device=device,
            # Each member's own hop unless one is given: its windows are its own.
            hop_seconds=member_config.get("hop_seconds") if hop_seconds is None else hop_seconds,
            aggregate=aggregate,
            batch_size=batch_size,
            decode_workers=decode_workers,
        )
        for member, member_config in zip(runs, configs)
    ]
    tagger = members[0] if len(members) == 1 else Ensemble(members, names=list(map(str, runs)))
    if zero_input is not None and not hasattr(tagger.model, "zero_input"):
        raise CheckpointError(
            f"{run}: --zero-input needs a cnn-comb checkpoint, this one is {tagger.model.name!r}"
        )
    if mean_input is not None and not getattr(tagger.model, "has_feature_means", False):
        raise CheckpointError(
            f"{run}: --mean-input needs a cnn-comb checkpoint with its training feature means "
            f"(combine it again with this version), this one is {tagger.model.name!r}"
        )
    index, records = _split_records(run_dir, config, data, split, data_overrides)
    label_index = {label: i for i, label in enumerate(tagger.labels)}
    excluded: dict[str, str] = {}
    kept = []
    for record in records:
        unknown = [label for label in record.labels if label not in label_index]
        if unknown:
            excluded[str(record.path)] = (
                f"{record.path}: label(s) unknown to the model: {', '.join(unknown)}"
            )
        else:
            kept.append(record)
    ablation = {"zero_input": zero_input, "mean_input": mean_input}
    scores, unscored, empty = _score(tagger, kept, ablation, progress)
    for path in empty:
        warnings.warn(
            WavemelWarning(f"{path}: empty clip (0 samples); scored with the training prior"),
            stacklevel=2,
        )
    for reason in excluded.values():
        warnings.warn(WavemelWarning(f"excluded from evaluation: {reason}"), stacklevel=2)
    for reason in unscored.values():
        warnings.warn(WavemelWarning(f"no answer, counted as a miss: {reason}"), stacklevel=2)
    if len(unscored) == len(kept):
        raise DataError(f"{index.root}: no clip of split {split!r} could be scored")
    result = _metrics(tagger, kept, scores, label_index)
    result.update(_source_fields(runs, members))
    result.update(
        split=split,
        zero_input=zero_input,
        mean_input=mean_input,
        data=str(index.root),
        aggregate=aggregate,
        empty=empty,
        excluded=excluded,
        unscored=unscored,
        n_unscored=len(unscored),
    )
    _check_fsdkaggle2018_counts(index, split, result)
    return result


def _as_runs(run: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One run, or the members of an ensemble, as paths."""
    if isinstance(run, (str, os.PathLike)):
        return [Path(run)]
    runs = [Path(member) for member in run]
    if not runs:
        raise WavemelError("evaluate: no run given")
    return runs


def _check_one_split(
    runs: list[Path], configs: list[dict[str, Any]], data: str | os.PathLike | None, split: str
) -> None:
    """An ensemble's members must describe one set of clips for ``split`` (see the module doc).

    Raises:
        WavemelError: Two members' split settings (or, for ``test``, data roots) differ.
    """
    if len(runs) == 1:
        return
    held_out = split == "heldout" or (
        split == "test" and any(c.get("test_fold") is not None for c in configs)
    )
    if split == "test" and not held_out:
        fields = () if data is not None else ("data",)
    else:
        # The validation fold does not move the held-out fold: k-fold members share it.
        ignored = {"fold"} if held_out else set()
        ignored |= {"data"} if data is not None else set()
        fields = tuple(f for f in SPLIT_FIELDS if f not in ignored)
    first = configs[0]
    for member, config in zip(runs[1:], configs[1:]):
        for field in fields:
            mine, theirs = first.get(field), config.get(field)
            if field == "data" and mine and theirs:
                mine, theirs = os.path.realpath(mine), os.path.realpath(theirs)
            if mine != theirs:
                raise WavemelError(
                    f"ensemble of {runs[0]} and {member}: --split {split} needs one split, but "
                    f"their {field} differs ({first.get(field)!r} vs {config.get(field)!r})"
                )


def _source_fields(runs: list[Path], members: list[Tagger]) -> dict[str, Any]:
    """What was scored: ``run``, ``checkpoint``, ``model``, ``hop_seconds`` (an ensemble:
    its runs joined by " + ", its models, one hop or ``None``, and each member in ``members``)."""
    fields = [
        {
            "run": str(_run_folder(run)),
            "checkpoint": str(run),
            "model": tagger.model.name,
            "hop_seconds": tagger.hop_samples / tagger.sample_rate,
        }
        for run, tagger in zip(runs, members)
    ]
    if len(fields) == 1:
        return fields[0]
    hops = {member["hop_seconds"] for member in fields}
    return {
        "run": " + ".join(member["run"] for member in fields),
        "checkpoint": " + ".join(member["checkpoint"] for member in fields),
        "model": "ensemble of " + ", ".join(member["model"] for member in fields),
        "hop_seconds": hops.pop() if len(hops) == 1 else None,
        "members": fields,
    }


def _metrics(
    tagger: Tagger | Ensemble,
    records: list[ClipRecord],
    scores: np.ndarray,
    label_index: dict[str, int],
) -> dict[str, Any]:
    num_classes = len(tagger.labels)
    targets = np.zeros((len(records), num_classes), dtype=bool)
    for row, record in enumerate(records):
        targets[row, [label_index[label] for label in record.labels]] = True
    per_class_map = per_class_map_at_k(scores, targets, k=3)
    per_class_ap = average_precision_per_class(scores, targets)
    counts = targets.sum(axis=0)
    result: dict[str, Any] = {
        "n_clips": len(records),
        "map3": map_at_k(scores, targets, k=3),
        "top1": top_k_accuracy(scores, targets, k=1),
    }
    _usage_scores(result, records, scores, targets)
    if tagger.multi_label:
        _multi_label_metrics(result, tagger, records, scores, targets)
        return result
    result["per_class"] = {
        label: {
            "map3": _nan_to_none(per_class_map[i]),
            "ap": _nan_to_none(per_class_ap[i]),
            "n": int(counts[i]),
        }
        for i, label in enumerate(tagger.labels)
    }
    # Per-clip answers for error analysis: true labels and the three best (label, probability).
    result["clips"] = [
        {
            "path": str(record.path),
            "labels": list(record.labels),
            "top3": None
            if np.isnan(scores[row]).all()
            else [[label, round(p, 6)] for label, p in tagger.top_k(scores[row], 3)],
        }
        for row, record in enumerate(records)
    ]
    first_label = np.array([label_index[record.labels[0]] for record in records])
    matrix = confusion_matrix(first_label, scores, num_classes=num_classes)
    result["confusion_matrix"] = matrix.tolist()
    return result


def _multi_label_metrics(
    result: dict[str, Any],
    tagger: Tagger | Ensemble,
    records: list[ClipRecord],
    scores: np.ndarray,
    targets: np.ndarray,
) -> None:
    """The multi-label part of :func:`_metrics`: mAP, lwlrap, F1 at the thresholds, tags."""
    thresholds = tagger.thresholds
    per_class_ap = average_precision_per_class(scores, targets)
    per_class_map = per_class_map_at_k(scores, targets, k=3)
    per_class_lwlrap, _ = lwlrap_per_class(scores, targets)
    counts = targets.sum(axis=0)
    result.update(
        multi_label=True,
        map=mean_average_precision(scores, targets),
        lwlrap=lwlrap(scores, targets),
        **f1_at_thresholds(scores, targets, thresholds),
    )
    result["per_class"] = {
        label: {
            "map3": _nan_to_none(per_class_map[i]),
            "ap": _nan_to_none(per_class_ap[i]),
            "lwlrap": _nan_to_none(per_class_lwlrap[i]),
            "threshold": float(thresholds[i]),
            "n": int(counts[i]),
        }
        for i, label in enumerate(tagger.labels)
    }
    result["clips"] = []
    for row, record in enumerate(records):
        answered = not np.isnan(scores[row]).all()
        result["clips"].append(
            {
                "path": str(record.path),
                "labels": list(record.labels),
                "tags": [[label, round(p, 6)] for label, p in tagger.above_threshold(scores[row])]
                if answered
                else None,
                "top3": [[label, round(p, 6)] for label, p in tagger.top_k(scores[row], 3)]
                if answered
                else None,
            }
        )
    # Each clip's first label against its best-scored label: a rough picture of the confusions.
    first_label = np.array([int(np.flatnonzero(row)[0]) for row in targets])
    result["confusion_matrix"] = confusion_matrix(first_label, scores, len(tagger.labels)).tolist()


def write_evaluation(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``evaluation_<name>.json`` and ``confusion_<name>.png`` (see :func:`evaluation_name`).

    Returns:
        ``result`` with ``json_path`` and ``confusion_png`` added.
    """
    out = Path(out_dir)
    name = evaluation_name(result["split"], result.get("zero_input"), result.get("mean_input"))
    png = out / f"confusion_{name}.png"
    json_path = out / f"evaluation_{name}.json"
    score = f"lwlrap {result['lwlrap']:.3f}" if result.get("multi_label") else "MAP@3"
    if not result.get("multi_label"):
        score += f" {result['map3']:.3f}"
    source = Path(result["run"]).name
    if result.get("members"):
        source = f"ensemble of {len(result['members'])} runs"
    title = f"{source} ({result['model']}) on {name}: {score}"
    labels = list(result["per_class"])
    plot_confusion(np.asarray(result["confusion_matrix"]), labels, title, png)
    result = {**result, "confusion_png": str(png), "json_path": str(json_path)}
    atomic_write_json(json_path, result)
    return result


def evaluate_run(
    run: str | os.PathLike | Sequence[str | os.PathLike],
    data: str | os.PathLike | None = None,
    *,
    split: str = "test",
    zero_input: str | None = None,
    mean_input: str | None = None,
    device: str = "auto",
    out_dir: str | os.PathLike | None = None,
    hop_seconds: float | None = None,
    aggregate: str = "mean",
    batch_size: int = 64,
    decode_workers: int | None = None,
    progress: bool = False,
    **data_overrides: Any,
) -> dict[str, Any]:
    """Score a run's checkpoint on whole clips of a split and write the report files.

    Args:
        run: Run folder (its ``best`` checkpoint) or a checkpoint file inside one; or a list
            of them, scored as one :class:`~wavemel.infer.Ensemble` (see the module doc): the
            result adds ``members`` (each one's ``run``, ``checkpoint``, ``model`` and
            ``hop_seconds``) and needs ``out_dir``.
        data: Dataset root; default the ``data`` recorded in ``RUN/config.json``.
        split: ``"test"`` (the dataset's labelled test clips; for a run with a ``test_fold``,
            that held-out fold), ``"val"`` (the run's validation fold, recomputed from
            ``RUN/config.json``) or ``"heldout"`` (the run's ``test_fold``).
        zero_input: For cnn-comb only: ``"audio"`` or ``"spec"`` zeroes that branch's *input*
            (the poster's literal ablation; out of distribution for the branch).
        mean_input: For cnn-comb only: ``"audio"`` or ``"spec"`` replaces that branch's
            *features* by their mean over the training clips (the in-distribution ablation).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        out_dir: Where the JSON and PNG go; default the run folder.
        hop_seconds: Window hop for whole-clip scoring; default the run's (each member's own),
            else the input length.
        aggregate: ``"mean"`` or ``"geometric"`` aggregation of window probabilities.
        batch_size: Windows per forward pass.
        decode_workers: Threads decoding the next clips while the model scores (``0``: none);
            default :func:`wavemel.infer.default_decode_workers` of the device.
        progress: Show a progress bar on stderr.
        **data_overrides: Replace recorded dataset/split settings (``format``, ``label_pattern``,
            ``group_field``, ``folds``, ``fold``, ``seed``, ``val_split``).

    Returns:
        :func:`compute_evaluation`'s result plus ``json_path`` and ``confusion_png``.

    Raises:
        WavemelError: Several runs without ``out_dir``, or runs that cannot form an ensemble.
    """
    runs = _as_runs(run)
    if out_dir is None and len(runs) > 1:
        # Written into one member's folder it would replace that run's own evaluation.
        raise WavemelError(
            f"evaluate: an ensemble of {len(runs)} runs needs --out-dir DIR "
            "(its report belongs to no single run folder)"
        )
    result = compute_evaluation(
        runs,
        data,
        split=split,
        zero_input=zero_input,
        mean_input=mean_input,
        device=device,
        hop_seconds=hop_seconds,
        aggregate=aggregate,
        batch_size=batch_size,
        decode_workers=decode_workers,
        progress=progress,
        **data_overrides,
    )
    out = Path(out_dir) if out_dir is not None else _run_folder(runs[0])
    return write_evaluation(result, out)
