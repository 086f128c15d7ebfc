"""Scoring a trained run on a split: MAP@3 (Public/Private), top-1, per-class, confusion matrix.

The clips of the chosen split are rebuilt from the run's own ``config.json`` (the same data root,
format and split settings the trainer used), each clip is scored whole with
:func:`wavemel.infer.predict_waveforms` (input-length windows, probabilities averaged), and the
results are written next to the checkpoint as ``evaluation_<split>[_zero-<x>].json`` and
``confusion_<split>[_zero-<x>].png``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from wavemel.errors import AudioError, CheckpointError, DataError, WavemelError

__all__ = ["evaluate_run", "SPLITS"]

#: Splits ``evaluate_run`` understands: the dataset's labelled test clips, or the run's
#: validation fold (recomputed from ``RUN/config.json``).
SPLITS = ("test", "val")
_ZERO_INPUTS = ("audio", "spec")
# Clips decoded per inference call: bounds memory on large test sets while keeping batches full.
_CHUNK_CLIPS = 256


def _run_folder(run: Path) -> Path:
    return run if run.is_dir() else run.parent


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict (``{}`` for a bare checkpoint folder without one)."""
    from wavemel.train.config import load_config_file

    path = run_dir / "config.json"
    return load_config_file(path) if path.exists() else {}


def _select_records(
    run_dir: Path,
    config: dict[str, Any],
    data: str | os.PathLike | None,
    split: str,
    overrides: dict[str, Any],
):
    from wavemel.data import load_dataset, train_val_split

    root = data if data is not None else config.get("data")
    if not root:
        raise DataError(f"{run_dir}: no data root in config.json; pass data (--data ROOT)")
    # A different root may be a different layout: then detect it unless told.
    same_root = data is None or str(data) == str(config.get("data"))
    fmt = overrides.get("format", config.get("format") if same_root else None)
    label_pattern = overrides.get("label_pattern", config.get("label_pattern"))
    group_field = overrides.get("group_field", config.get("group_field"))
    index = load_dataset(root, fmt, label_pattern=label_pattern, group_field=group_field)
    if split == "test":
        records = [r for r in index.split("test") if r.labels]
        if not records:
            raise DataError(f"{index.root}: the dataset has no labelled 'test' clips")
        return index, records
    if not config:
        raise CheckpointError(f"{run_dir}: no config.json, so the validation split is unknown")
    settings = {"folds": 5, "fold": 0, "seed": 0, "val_split": None}
    settings.update({k: config[k] for k in settings if k in config})
    settings.update({k: overrides[k] for k in settings if k in overrides})
    # folds=None is meaningful (the dataset's own fold column); fold/seed None are not.
    _, records = train_val_split(
        index,
        folds=settings["folds"],
        fold=settings["fold"] if settings["fold"] is not None else 0,
        seed=settings["seed"] if settings["seed"] is not None else 0,
        group_field=group_field,
        val_split=settings["val_split"],
    )
    return index, records


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _plot_confusion(matrix: np.ndarray, labels: list[str], title: str, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = max(5.0, 0.32 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    # Colour by row-normalised recall so rare classes are as visible as common ones.
    totals = matrix.sum(axis=1, keepdims=True)
    shown = np.divide(matrix, np.maximum(totals, 1), dtype=np.float64)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    font = 8 if n <= 25 else 6
    ax.set_xticklabels(labels, rotation=90, fontsize=font)
    ax.set_yticklabels(labels, fontsize=font)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title, fontsize=10)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if shown[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=font - 1,
                        color=colour,
                    )
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def evaluate_run(
    run: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    split: str = "test",
    zero_input: str | None = None,
    device: str = "auto",
    out_dir: str | os.PathLike | None = None,
    hop_seconds: float | None = None,
    aggregate: str = "mean",
    batch_size: int = 64,
    progress: bool = False,
    **data_overrides: Any,
) -> dict[str, Any]:
    """Score a run's checkpoint on whole clips of a split and write the report files.

    Args:
        run: Run folder (its ``best`` checkpoint) or a checkpoint file inside one.
        data: Dataset root; default the ``data`` recorded in ``RUN/config.json``.
        split: ``"test"`` (the dataset's labelled test clips) or ``"val"`` (the run's validation
            fold, recomputed from ``RUN/config.json``).
        zero_input: For cnn-comb only: ``"audio"`` or ``"spec"`` zeroes that branch's features
            (the poster's ablation).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        out_dir: Where the JSON and PNG go; default the run folder.
        hop_seconds: Window hop for whole-clip scoring; default the training input length.
        aggregate: ``"mean"`` or ``"geometric"`` aggregation of window probabilities.
        batch_size: Windows per forward pass.
        progress: Show a progress bar on stderr.
        **data_overrides: Replace recorded dataset/split settings (``format``, ``label_pattern``,
            ``group_field``, ``folds``, ``fold``, ``seed``, ``val_split``).

    Returns:
        A JSON-able dict with ``map3``, ``top1``, ``n_clips``, ``per_class`` (``{label: {"map3",
        "ap", "n"}}``; ``None`` where undefined), ``map3_public``/``map3_private`` (and their
        clip counts) when the records carry ``usage``, ``excluded`` (files that failed to decode
        or carry labels the model does not know, with reasons), ``empty`` (clips without
        samples, answered with the uniform/prior distribution), ``clips`` (per clip: path, true
        labels, ``top3`` ``[label, probability]`` pairs), and the output paths
        ``json_path`` and ``confusion_png``.

    Raises:
        CheckpointError: Missing/corrupt checkpoint, or ``zero_input`` on a non-cnn-comb model.
        DataError: The dataset or the split cannot be rebuilt, or no clip could be scored.
    """
    from wavemel.audio import load_audio
    from wavemel.infer import Tagger, predict_waveforms
    from wavemel.metrics import (
        average_precision_per_class,
        confusion_matrix,
        map_at_k,
        per_class_map_at_k,
        top_k_accuracy,
    )

    if split not in SPLITS:
        raise WavemelError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unknown = sorted(
        set(data_overrides)
        - {"format", "label_pattern", "group_field", "folds", "fold", "seed", "val_split"}
    )
    if unknown:
        raise TypeError(f"evaluate_run() got unexpected keyword(s) {', '.join(unknown)}")
    run = Path(run)
    run_dir = _run_folder(run)
    config = _read_run_config(run_dir)
    if hop_seconds is None:
        hop_seconds = config.get("hop_seconds")
    tagger = Tagger.from_checkpoint(
        run, device=device, hop_seconds=hop_seconds, aggregate=aggregate, batch_size=batch_size
    )
    model = tagger.model
    if zero_input is not None:
        if zero_input not in _ZERO_INPUTS:
            raise WavemelError(f"--zero-input must be audio or spec, got {zero_input!r}")
        if not hasattr(model, "zero_input"):
            raise CheckpointError(
                f"{run}: --zero-input needs a cnn-comb checkpoint, this one is {model.name!r}"
            )
    index, records = _select_records(run_dir, config, data, split, data_overrides)

    label_index = {label: i for i, label in enumerate(tagger.labels)}
    excluded: dict[str, str] = {}
    kept = []
    for record in records:
        unknown_labels = [label for label in record.labels if label not in label_index]
        if unknown_labels:
            excluded[str(record.path)] = (
                f"{record.path}: label(s) unknown to the model: {', '.join(unknown_labels)}"
            )
        else:
            kept.append(record)

    scored_records = []
    empty: list[str] = []
    chunks: list[np.ndarray] = []
    previous_zero = getattr(model, "zero_input", None)
    if zero_input is not None:
        model.zero_input = zero_input
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(kept), desc=f"evaluate {split}", unit="clip", leave=False)
    try:
        for begin in range(0, len(kept), _CHUNK_CLIPS):
            waveforms, chunk_records = [], []
            for record in kept[begin : begin + _CHUNK_CLIPS]:
                try:
                    waveform = load_audio(record.path, tagger.sample_rate)
                except AudioError as exc:
                    excluded[str(record.path)] = str(exc)
                    continue
                if waveform.shape[0] == 0:
                    empty.append(str(record.path))
                waveforms.append(waveform)
                chunk_records.append(record)
            if waveforms:
                chunks.append(
                    predict_waveforms(
                        model,
                        waveforms,
                        input_samples=tagger.input_samples,
                        hop_samples=tagger.hop_samples,
                        batch_size=batch_size,
                        device=tagger.device,
                        aggregate=aggregate,
                        fill=tagger.fill,
                        empty_distribution=tagger.empty_distribution,
                    )
                )
                scored_records += chunk_records
            if bar is not None:
                bar.update(min(_CHUNK_CLIPS, len(kept) - begin))
    finally:
        if bar is not None:
            bar.close()
        if zero_input is not None:
            model.zero_input = previous_zero
    for path in empty:
        warnings.warn(
            f"{path}: empty clip (0 samples); scored with the prior/uniform answer", stacklevel=2
        )
    for reason in excluded.values():
        warnings.warn(f"excluded from evaluation: {reason}", stacklevel=2)
    if not scored_records:
        raise DataError(f"{index.root}: no clip of split {split!r} could be scored")

    scores = np.concatenate(chunks)
    num_classes = len(tagger.labels)
    targets = np.zeros((len(scored_records), num_classes), dtype=bool)
    for row, record in enumerate(scored_records):
        targets[row, [label_index[label] for label in record.labels]] = True
    per_class_map = per_class_map_at_k(scores, targets, k=3)
    per_class_ap = average_precision_per_class(scores, targets)
    counts = targets.sum(axis=0)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint": str(run),
        "model": model.name,
        "split": split,
        "zero_input": zero_input,
        "data": str(index.root),
        "n_clips": len(scored_records),
        "map3": map_at_k(scores, targets, k=3),
        "top1": top_k_accuracy(scores, targets, k=1),
        "hop_seconds": tagger.hop_samples / tagger.sample_rate,
        "aggregate": aggregate,
    }
    usages = [(record.usage or "").lower() for record in scored_records]
    if any(usages):
        for part in ("public", "private"):
            rows = np.array([u == part for u in usages])
            result[f"map3_{part}"] = map_at_k(scores[rows], targets[rows]) if rows.any() else None
            result[f"n_{part}"] = int(rows.sum())
    result["per_class"] = {
        label: {
            "map3": _nan_to_none(per_class_map[i]),
            "ap": _nan_to_none(per_class_ap[i]),
            "n": int(counts[i]),
        }
        for i, label in enumerate(tagger.labels)
    }
    result["empty"] = empty
    result["excluded"] = excluded
    # Per-clip answers for error analysis: true labels and the three best (label, probability).
    top3 = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    result["clips"] = [
        {
            "path": str(record.path),
            "labels": list(record.labels),
            "top3": [[tagger.labels[c], round(float(scores[row, c]), 6)] for c in top3[row]],
        }
        for row, record in enumerate(scored_records)
    ]

    out = Path(out_dir) if out_dir is not None else run_dir
    suffix = split + (f"_zero-{zero_input}" if zero_input else "")
    png = out / f"confusion_{suffix}.png"
    first_label = np.array([label_index[record.labels[0]] for record in scored_records])
    matrix = confusion_matrix(first_label, scores, num_classes=num_classes)
    title = f"{run_dir.name} ({model.name}) on {suffix}: MAP@3 {result['map3']:.3f}"
    _plot_confusion(matrix, tagger.labels, title, png)
    result["confusion_matrix"] = matrix.tolist()
    json_path = out / f"evaluation_{suffix}.json"
    result["confusion_png"] = str(png)
    result["json_path"] = str(json_path)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
