"""A simple floor to compare the networks with: MFCC statistics + logistic regression.

Each clip becomes one fixed-length vector: the mean and standard deviation over time of 20 MFCCs
and their first and second deltas (120 numbers). The vectors are standardised and a multinomial
logistic regression (scikit-learn) is fitted on the training clips. Scores are the regression's
class probabilities, ranked for MAP@3 exactly like the networks' softmax outputs, so the baseline
row of the report is directly comparable with the others.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import librosa
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from wavemel.audio import load_audio
from wavemel.data.records import ClipRecord
from wavemel.errors import AudioError
from wavemel.metrics import map_at_k, per_class_map_at_k, top_k_accuracy

N_MFCC = 20
# Mean and std of MFCC, delta and delta-delta.
FEATURE_DIM = 6 * N_MFCC


def mfcc_statistics(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Clip-level MFCC statistics.

    Args:
        waveform: ``(T,)`` mono float samples.
        sample_rate: its sample rate in Hz.

    Returns:
        ``(FEATURE_DIM,)`` float32: mean and std over frames of 20 MFCCs, their deltas and
        delta-deltas. An empty clip gives zeros.
    """
    if waveform.size == 0:
        return np.zeros(FEATURE_DIM, dtype=np.float32)
    # ~40 ms windows whatever the rate (512 samples at 8 kHz, 1024 at 16-22 kHz), 40 mel bands so
    # that no band is empty at 8 kHz.
    n_fft = 2 ** math.ceil(math.log2(0.04 * sample_rate))
    with warnings.catch_warnings():
        # Clips shorter than one window are zero-padded by librosa, which is what we want.
        warnings.filterwarnings("ignore", message="n_fft=.*is too large")
        mfcc = librosa.feature.mfcc(
            y=waveform.astype(np.float32),
            sr=sample_rate,
            n_mfcc=N_MFCC,
            n_fft=n_fft,
            hop_length=n_fft // 4,
            n_mels=40,
        )
    # librosa's delta needs at least ``width`` frames; very short clips get a smaller window.
    width = min(9, mfcc.shape[1] if mfcc.shape[1] % 2 else mfcc.shape[1] - 1)
    if width >= 3:
        delta = librosa.feature.delta(mfcc, width=width)
        delta2 = librosa.feature.delta(mfcc, order=2, width=width)
    else:
        delta = delta2 = np.zeros_like(mfcc)
    stacked = np.concatenate([mfcc, delta, delta2], axis=0)
    return np.concatenate([stacked.mean(axis=1), stacked.std(axis=1)]).astype(np.float32)


def extract_features(
    paths: Sequence[Path],
    sample_rate: int,
    *,
    cache: dict[str, np.ndarray] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, str]]:
    """MFCC statistics of many files.

    Args:
        paths: audio files.
        sample_rate: rate every file is resampled to before the MFCCs.
        cache: optional dict (keyed by path string) reused across calls, e.g. across folds.
        progress: show a progress bar.

    Returns:
        ``(features (N, FEATURE_DIM) float32, errors {path: message})``; files that fail to
        decode get zero features and an entry in ``errors``.
    """
    cache = {} if cache is None else cache
    errors: dict[str, str] = {}
    rows = []
    for path in tqdm(paths, desc="mfcc", disable=not progress, leave=False):
        key = f"{path}@{sample_rate}"
        if key not in cache:
            try:
                cache[key] = mfcc_statistics(load_audio(path, sample_rate), sample_rate)
            except AudioError as exc:
                errors[str(path)] = str(exc)
                cache[key] = np.zeros(FEATURE_DIM, dtype=np.float32)
        rows.append(cache[key])
    features = np.stack(rows) if rows else np.zeros((0, FEATURE_DIM), dtype=np.float32)
    return features, errors


def _targets(records: Sequence[ClipRecord], label_to_index: dict[str, int]) -> np.ndarray:
    hot = np.zeros((len(records), len(label_to_index)), dtype=np.int8)
    for row, record in enumerate(records):
        for label in record.labels:
            hot[row, label_to_index[label]] = 1
    return hot


def run_baseline(
    train_records: Sequence[ClipRecord],
    eval_records: Sequence[ClipRecord],
    labels: Sequence[str],
    *,
    sample_rate: int,
    seed: int = 0,
    feature_cache: dict[str, np.ndarray] | None = None,
    progress: bool = False,
) -> dict:
    """Fit the MFCC + logistic-regression baseline and score it with MAP@3.

    Args:
        train_records: labelled training clips (a multi-label clip trains on its first label).
        eval_records: clips to score; unlabelled ones are skipped.
        labels: the class vocabulary, defining the probability columns.
        sample_rate: rate the audio is resampled to for the MFCCs.
        seed: seed of the solver.
        feature_cache: optional dict shared across calls so that folds reuse features.
        progress: show a progress bar while extracting features.

    Returns:
        dict with ``map3``, ``top1``, ``n_clips``, ``n_train``, ``per_class`` ({label: {"map3",
        "n"}}), ``map3_public`` / ``map3_private`` when evaluation records carry ``usage``,
        ``errors`` (files that failed to decode), ``clip_ids`` and ``probabilities``
        (``(N, C)`` numpy array, not JSON-able; drop it before writing JSON).

    Raises:
        ValueError: fewer than two classes among the training labels, or nothing to evaluate.
    """
    label_to_index = {label: i for i, label in enumerate(labels)}
    train = [r for r in train_records if r.labels]
    evaluate = [r for r in eval_records if r.labels]
    if not evaluate:
        raise ValueError("no labelled evaluation records")
    y_train = np.array([label_to_index[r.labels[0]] for r in train])
    if len(np.unique(y_train)) < 2:
        raise ValueError("the baseline needs at least two classes among the training labels")

    x_train, errors = extract_features(
        [r.path for r in train], sample_rate, cache=feature_cache, progress=progress
    )
    x_eval, eval_errors = extract_features(
        [r.path for r in evaluate], sample_rate, cache=feature_cache, progress=progress
    )
    errors.update(eval_errors)

    probabilities = _fit_and_predict(x_train, y_train, x_eval, len(labels), seed)
    result = _scores(probabilities, evaluate, labels)
    result.update(
        n_train=len(train),
        errors=errors,
        clip_ids=[r.clip_id for r in evaluate],
        probabilities=probabilities,
    )
    return result


def _fit_and_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, n_classes: int, seed: int
) -> np.ndarray:
    """``(N_eval, n_classes)`` probabilities of a standardised logistic regression."""
    model = make_pipeline(
        StandardScaler(),
        # C=0.1: a few hundred clips against 120 features overfit without a firm L2 penalty.
        LogisticRegression(C=0.1, max_iter=2000, random_state=seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        model.fit(x_train, y_train)
    probabilities = np.zeros((len(x_eval), n_classes), dtype=np.float64)
    # Classes absent from training get probability 0: they can never be ranked first.
    probabilities[:, model.classes_] = model.predict_proba(x_eval)
    return probabilities


def _scores(
    probabilities: np.ndarray, records: Sequence[ClipRecord], labels: Sequence[str]
) -> dict:
    """MAP@3, top-1, per-class MAP@3 and Public / Private MAP@3 of ``(N, C)`` probabilities."""
    targets = _targets(records, {label: i for i, label in enumerate(labels)})
    per_class = per_class_map_at_k(probabilities, targets, k=3)
    counts = targets.sum(axis=0)
    result: dict = {
        "map3": float(map_at_k(probabilities, targets, k=3)),
        "top1": float(top_k_accuracy(probabilities, targets, k=1)),
        "n_clips": len(records),
        "per_class": {
            label: {"map3": float(per_class[i]), "n": int(counts[i])}
            for i, label in enumerate(labels)
            if counts[i] > 0
        },
    }
    usage = np.array([(r.usage or "").lower() for r in records])
    for name in ("public", "private"):
        mask = usage == name
        if mask.any():
            result[f"map3_{name}"] = float(map_at_k(probabilities[mask], targets[mask], k=3))
    return result
