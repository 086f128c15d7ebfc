"""The multi-label Freesound layouts: FSDKaggle2019 (Kaggle) and FSD50K (Zenodo), made here."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from wavemel.data import load_dataset
from wavemel.data.adapters import detect_format


def _wav(path: Path, frames: int = 160) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fsencode(path), np.full(frames, 0.1), 16000, subtype="PCM_16", format="WAV")
    return path


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)  # quotes the cells holding commas, as the releases do
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _fsdkaggle2019(root: Path) -> Path:
    curated = [
        ["c1.wav", "Bark"],
        ["c2.wav", "Bark,Growling"],
        ["c3.wav", "Accordion,Bark,Growling"],
        ["c4.wav", "Accordion"],
    ]
    noisy = [["n1.wav", "Accordion"], ["n2.wav", "Growling,Bark"], ["n3.wav", ""]]
    _csv(root / "train_curated.csv", ["fname", "labels"], curated)
    _csv(root / "train_noisy.csv", ["fname", "labels"], noisy)
    for name, _ in curated:
        _wav(root / "train_curated" / name)
    for name, _ in noisy[:2]:
        _wav(root / "train_noisy" / name)
    _csv(
        root / "sample_submission.csv",
        ["fname", "Accordion", "Bark", "Growling"],
        [["t1.wav", 0, 0, 0], ["t2.wav", 0, 0, 0], ["t3.wav", 0, 0, 0]],
    )
    for name in ("t1.wav", "t2.wav", "t3.wav"):
        _wav(root / "test" / name)
    return root


def test_fsdkaggle2019_kaggle_layout_counts(tmp_path):
    root = _fsdkaggle2019(tmp_path / "fsdk19")
    assert detect_format(root) == "fsdkaggle2019"
    index = load_dataset(root)
    assert index.format == "fsdkaggle2019"
    train, test = index.split("train"), index.split("test")
    assert len(train) == 6 and len(test) == 3
    assert index.labels == ["Accordion", "Bark", "Growling"]
    by_name = {r.clip_id: r for r in train}
    assert by_name["c3.wav"].labels == ("Accordion", "Bark", "Growling")
    assert by_name["n2.wav"].labels == ("Growling", "Bark")
    assert Counter(len(r.labels) for r in train) == {1: 3, 2: 2, 3: 1}
    # Curated clips are verified, noisy ones not (unverified_weight applies to them).
    assert Counter(r.manually_verified for r in train) == {True: 4, False: 2}
    assert all(not r.labels for r in test)
    # The noisy row without a label is named, not trained on.
    [no_label] = [p for p in index.problems if p.kind == "no_label"]
    assert no_label.path.name == "n3.wav" and "train_noisy.csv line 4" in no_label.message


def test_fsdkaggle2019_test_labels_and_missing_files(tmp_path):
    root = _fsdkaggle2019(tmp_path / "fsdk19")
    _csv(
        root / "test_post_competition.csv",
        ["fname", "labels", "usage"],
        [
            ["t1.wav", "Bark", "Public"],
            ["t2.wav", "Bark,Accordion", "Private"],
            ["t9.wav", "Bark", "Private"],
        ],
    )
    (root / "train_curated" / "c4.wav").unlink()
    index = load_dataset(root)
    test = index.split("test")
    assert [r.labels for r in test] == [("Bark",), ("Bark", "Accordion")]
    assert Counter(r.usage for r in test) == {"Public": 1, "Private": 1}
    missing = sorted(p.path.name for p in index.problems if p.kind == "missing")
    assert missing == ["c4.wav", "t9.wav"]
    assert len(index.split("train")) == 5


def _fsd50k(root: Path) -> Path:
    meta = root / "FSD50K.ground_truth"
    dev = [
        [
            64760,
            "Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music",
            "/m/02sgy,/m/0342h,/m/0fx80y,/m/04szw,/m/04rlf",
            "train",
        ],
        [
            16399,
            "Bark,Dog,Domestic_animals_and_pets,Animal",
            "/m/05tny_,/m/0bt9lr,/m/068hy,/m/0jbk",
            "train",
        ],
        [16401, "Dog,Animal", "/m/0bt9lr,/m/0jbk", "train"],
        [16402, "Guitar,Music", "/m/0342h,/m/04rlf", "val"],
        [16403, "Dog,Animal", "/m/0bt9lr,/m/0jbk", "val"],
    ]
    evaluation = [[37199, "Guitar,Music", "/m/0342h,/m/04rlf"], [175151, "Animal", "/m/0jbk"]]
    _csv(meta / "dev.csv", ["fname", "labels", "mids", "split"], dev)
    _csv(meta / "eval.csv", ["fname", "labels", "mids"], evaluation)
    for fname, *_ in dev:
        _wav(root / "FSD50K.dev_audio" / f"{fname}.wav")
    for fname, *_ in evaluation:
        _wav(root / "FSD50K.eval_audio" / f"{fname}.wav")
    return root


def test_fsd50k_layout_counts_and_own_split(tmp_path):
    root = _fsd50k(tmp_path / "FSD50K")
    assert detect_format(root) == "fsd50k"
    index = load_dataset(root)
    assert index.format == "fsd50k"
    assert index.splits == ["train", "val", "test"]
    assert [len(index.split(s)) for s in ("train", "val", "test")] == [3, 2, 2]
    # The vocabulary is the training clips' labels (eval labels outside it would be problems).
    assert len(index.labels) == 9 and "Electric_guitar" in index.labels
    first = index.split("train")[0]
    assert first.path == root / "FSD50K.dev_audio" / "64760.wav"
    assert len(first.labels) == 5 and first.fields["mids"].startswith("/m/02sgy,")
    assert Counter(len(r.labels) for r in index.records) == {2: 4, 5: 1, 4: 1, 1: 1}
    assert not index.problems


def test_fsd50k_validates_on_its_own_val_split(tmp_path):
    from wavemel.data.splits import train_val_split

    index = load_dataset(_fsd50k(tmp_path / "FSD50K"))
    train, val = train_val_split(index, val_split="val")
    assert sorted(r.clip_id for r in val) == ["16402.wav", "16403.wav"]
    assert len(train) == 3


def test_inspect_shows_labels_per_clip(tmp_path, capsys):
    from wavemel.cli import main
    from wavemel.data.inspect import format_report, inspect_dataset

    root = _fsdkaggle2019(tmp_path / "fsdk19")
    report = inspect_dataset(load_dataset(root))
    # Training: c1, c4, n1 have one label, c2, n2 two, c3 three; the test clips have none.
    assert report["labels_per_clip"] == {"train": {"1": 3, "2": 2, "3": 1}}
    assert report["multi_label"] is True
    text = format_report(report)
    assert "labels/clip train: 1 label 3, 2 labels 2, 3 labels 1 (mean 1.67)" in text
    assert main(["data", "inspect", str(root), "--no-durations"]) == 0
    assert "labels/clip train" in capsys.readouterr().out
