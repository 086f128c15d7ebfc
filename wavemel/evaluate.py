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
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
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
from wavemel.infer import Tagger
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
    tagger: Tagger,
    records: list[ClipRecord],
    ablation: dict[str, str | None],
    progress: bool,
) -> tuple[np.ndarray, dict[str, str], list[str]]:
    """``(N, C)`` probabilities (all-NaN rows for clips without an answer), reasons, empty clips."""
    model = tagger.model
    scores = np.full((len(records), len(tagger.labels)), np.nan)
    unscored: dict[str, str] = {}
    # ``{"zero_input": ..., "mean_input": ...}``: cnn-comb's ablation switches, restored after.
    switches = {name: value for name, value in ablation.items() if value is not None}
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
    run: str | os.PathLike,
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
    run = Path(run)
    run_dir = _run_folder(run)
    config = _read_run_config(run_dir)
    if hop_seconds is None:
        hop_seconds = config.get("hop_seconds")
    tagger = Tagger.from_checkpoint(
        run,
        device=device,
        hop_seconds=hop_seconds,
        aggregate=aggregate,
        batch_size=batch_size,
        decode_workers=decode_workers,
    )
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
    result.update(
        run=str(run_dir),
        checkpoint=str(run),
        model=tagger.model.name,
        split=split,
        zero_input=zero_input,
        mean_input=mean_input,
        data=str(index.root),
        hop_seconds=tagger.hop_samples / tagger.sample_rate,
        aggregate=aggregate,
        empty=empty,
        excluded=excluded,
        unscored=unscored,
        n_unscored=len(unscored),
    )
    _check_fsdkaggle2018_counts(index, split, result)
    return result


def _metrics(
    tagger: Tagger, records: list[ClipRecord], scores: np.ndarray, label_index: dict[str, int]
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
    tagger: Tagger,
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
    title = f"{Path(result['run']).name} ({result['model']}) on {name}: {score}"
    labels = list(result["per_class"])
    plot_confusion(np.asarray(result["confusion_matrix"]), labels, title, png)
    result = {**result, "confusion_png": str(png), "json_path": str(json_path)}
    atomic_write_json(json_path, result)
    return result


def evaluate_run(
    run: str | os.PathLike,
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
        run: Run folder (its ``best`` checkpoint) or a checkpoint file inside one.
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
        hop_seconds: Window hop for whole-clip scoring; default the run's, else the input length.
        aggregate: ``"mean"`` or ``"geometric"`` aggregation of window probabilities.
        batch_size: Windows per forward pass.
        decode_workers: Threads decoding the next clips while the model scores (``0``: none);
            default :func:`wavemel.infer.default_decode_workers` of the device.
        progress: Show a progress bar on stderr.
        **data_overrides: Replace recorded dataset/split settings (``format``, ``label_pattern``,
            ``group_field``, ``folds``, ``fold``, ``seed``, ``val_split``).

    Returns:
        :func:`compute_evaluation`'s result plus ``json_path`` and ``confusion_png``.
    """
    result = compute_evaluation(
        run,
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
    out = Path(out_dir) if out_dir is not None else _run_folder(Path(run))
    return write_evaluation(result, out)
