"""Dataset adapters: FSDKaggle2018 (both layouts), folder, CSV manifest, file-name pattern."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavemel.data import ClipRecord, DatasetIndex, load_dataset
from wavemel.data.adapters import detect_format, read_fsdkaggle2018_metadata
from wavemel.errors import DataError


def _wav(path: Path, frames: int = 160, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # As bytes: soundfile cannot encode a name that is not UTF-8 given as str.
    sf.write(os.fsencode(path), np.full(frames, 0.1), rate, subtype="PCM_16", format="WAV")
    return path


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- real FSDKaggle2018 metadata and the fsdk18-mini stand-in ---------------------------------


def test_real_fsdkaggle2018_metadata_counts(fsdk18_meta_root):
    index = load_dataset(fsdk18_meta_root, check_files=False)
    assert index.format == "fsdkaggle2018"
    train, test = index.split("train"), index.split("test")
    assert len(train) == 9473
    assert len(index.labels) == 41 and index.labels == sorted(index.labels)
    assert sum(r.manually_verified is True for r in train) == 3710
    assert sum(r.manually_verified is False for r in train) == 9473 - 3710
    scored = [r for r in test if r.labels]
    assert len(scored) == 1600
    assert Counter(r.usage for r in scored) == {"Public": 301, "Private": 1299}
    assert {r.label for r in scored} == set(index.labels)
    assert not [p for p in index.problems if p.kind == "unknown_label"]
    assert train[0].clip_id == "00044347.wav" and train[0].label == "Hi-hat"
    assert train[0].fields["freesound_id"] == "28739"

    # The Kaggle CSVs on their own, including the 7,800 unscored padding rows.
    kaggle = read_fsdkaggle2018_metadata(
        fsdk18_meta_root / "train.csv", fsdk18_meta_root / "test_post_competition.csv"
    )
    test = kaggle.split("test")
    assert len(kaggle.split("train")) == 9473 and len(kaggle.labels) == 41
    assert len(test) == 9400
    assert Counter(r.usage for r in test) == {"Ignored": 7800, "Private": 1299, "Public": 301}
    assert all(not r.labels for r in test if r.usage == "Ignored")


def test_real_metadata_without_audio_reports_missing_folders(fsdk18_meta_root):
    index = load_dataset(fsdk18_meta_root)
    assert index.records == [] and len(index.labels) == 41
    missing = [p for p in index.problems if p.kind == "missing"]
    # One problem per absent audio folder, not one per CSV row.
    assert len(missing) == 2 and "9473" in missing[0].message


def test_fsdk18_mini_zenodo_layout(fsdk18_mini_root):
    index = load_dataset(fsdk18_mini_root)
    assert index.format == "fsdkaggle2018"
    train, test = index.split("train"), index.split("test")
    assert len(train) == 1173 and len(index.labels) == 21
    assert sum(r.manually_verified for r in train) == 467
    # Every CSV row resolves to a file, and every file of the test folder is a test record.
    assert not [p for p in index.problems if p.kind == "missing"]
    test_files = sorted(p.name for p in (fsdk18_mini_root / "FSDKaggle2018.audio_test").iterdir())
    assert sorted(r.clip_id for r in test) == test_files
    scored = [r for r in test if r.labels]
    assert Counter(r.usage for r in scored) == {"Public": 79, "Private": 341}
    assert len(test) - len(scored) == 22  # 20 unscored padding clips + 2 empty WAVs
    empty = [p for p in index.problems if p.kind == "empty"]
    assert len(empty) == 2 and all(p.path.stat().st_size == 44 for p in empty)
    assert {p.path for p in empty} <= {r.path for r in test}
    assert all(r.path.is_file() for r in index.records)


def test_kaggle_layout_with_test_labels(fsdk18_mini_root, tmp_path):
    # A Kaggle-layout copy of the mini set: train.csv, audio folders, and a full test CSV with
    # "Ignored"/"None" padding rows.
    (tmp_path / "audio_train").symlink_to(fsdk18_mini_root / "FSDKaggle2018.audio_train")
    (tmp_path / "audio_test").symlink_to(fsdk18_mini_root / "FSDKaggle2018.audio_test")
    (tmp_path / "train.csv").write_bytes((fsdk18_mini_root / "train.csv").read_bytes())
    meta = fsdk18_mini_root / "FSDKaggle2018.meta" / "test_post_competition_scoring_clips.csv"
    with open(meta, newline="") as handle:
        rows = [[r["fname"], r["label"], r["usage"]] for r in csv.DictReader(handle)]
    scored = {r[0] for r in rows}
    padding = sorted(p.name for p in (tmp_path / "audio_test").iterdir() if p.name not in scored)[
        :5
    ]
    rows += [[name, "None", "Ignored"] for name in padding]
    _csv(tmp_path / "test_post_competition.csv", ["fname", "label", "usage"], rows)

    assert detect_format(tmp_path) == "fsdkaggle2018-kaggle"
    index = load_dataset(tmp_path)
    train, test = index.split("train"), index.split("test")
    assert index.format == "fsdkaggle2018-kaggle"
    assert len(train) == 1173 and len(index.labels) == 21
    assert sum(r.manually_verified for r in train) == 467
    assert len(test) == 442
    assert Counter(r.usage for r in test) == {"Public": 79, "Private": 341, "Ignored": 5, None: 17}
    assert all(not r.labels for r in test if r.usage in ("Ignored", None))


def test_fsdkaggle2018_problems_missing_unknown_empty(tmp_path):
    audio_train = tmp_path / "FSDKaggle2018.audio_train"
    audio_test = tmp_path / "FSDKaggle2018.audio_test"
    meta = tmp_path / "FSDKaggle2018.meta"
    for name in ("a.wav", "b.wav", "c.wav"):
        _wav(audio_train / name)
    _wav(audio_test / "t1.wav")
    _wav(audio_test / "t2.wav", frames=0)
    _wav(audio_test / "t3.wav")
    (audio_test / "t4.wav").write_bytes(b"")
    _csv(
        meta / "train_post_competition.csv",
        ["fname", "label", "manually_verified", "freesound_id", "license"],
        [["a.wav", "Cat", 1, 1, "CC0"], ["b.wav", "Dog", 0, 2, "CC0"],
         ["c.wav", "Dog", 1, 3, "CC0"], ["gone.wav", "Cat", 0, 4, "CC0"]],
    )  # fmt: skip
    _csv(
        meta / "test_post_competition_scoring_clips.csv",
        ["fname", "label", "usage", "freesound_id", "license"],
        [["t1.wav", "Cat", "Public", 5, "CC0"], ["t2.wav", "Bird", "Private", 6, "CC0"],
         ["lost.wav", "Dog", "Private", 7, "CC0"]],
    )  # fmt: skip

    index = load_dataset(tmp_path)
    kinds = Counter(p.kind for p in index.problems)
    assert kinds == {"missing": 2, "unknown_label": 1, "empty": 1, "unreadable": 1}
    by_name = {r.clip_id: r for r in index.records}
    assert "gone.wav" not in by_name and "lost.wav" not in by_name
    assert index.labels == ["Cat", "Dog"] and index.label_to_index == {"Cat": 0, "Dog": 1}
    assert by_name["t2.wav"].labels == ()  # "Bird" is unknown to the model: reported, dropped
    assert by_name["t3.wav"].labels == () and by_name["t3.wav"].usage is None  # unscored
    assert by_name["t1.wav"].usage == "Public" and by_name["a.wav"].manually_verified is True
    assert index.splits == ["train", "test"]

    # Group values come from a CSV column; unscored test clips without one keep no group.
    grouped = {r.clip_id: r for r in load_dataset(tmp_path, group_field="freesound_id").records}
    assert grouped["b.wav"].group == "2" and grouped["t3.wav"].group is None

    unchecked = load_dataset(tmp_path, check_files=False)
    assert len(unchecked.split("train")) == 4 and "lost.wav" in {
        r.clip_id for r in unchecked.records
    }


# --- folder, CSV and pattern layouts ----------------------------------------------------------


def test_folder_layout(tmp_path):
    for label, n in (("dog", 2), ("cat", 3)):
        for i in range(n):
            _wav(tmp_path / label / f"{i}.wav")
    _wav(tmp_path / "cat" / "nested" / "deep.wav")
    (tmp_path / "cat" / "notes.txt").write_text("not audio")
    (tmp_path / "empty_class").mkdir()
    (tmp_path / ".hidden").mkdir()
    _wav(tmp_path / ".hidden" / "x.wav")

    assert detect_format(tmp_path) == "folder"
    index = load_dataset(tmp_path)
    assert index.format == "folder" and index.labels == ["cat", "dog"]
    assert Counter(r.label for r in index.records) == {"cat": 4, "dog": 2}
    assert all(r.split == "train" for r in index.records) and not index.problems
    assert index.records == load_dataset(tmp_path).records  # deterministic order


def test_csv_manifest(tmp_path):
    _wav(tmp_path / "clips" / "a.wav")
    _wav(tmp_path / "clips" / "b.wav")
    _wav(tmp_path / "clips" / "c.wav")
    absolute = _wav(tmp_path / "elsewhere" / "d.wav")
    manifest = _csv(
        tmp_path / "manifest.csv",
        ["path", "label", "split", "fold", "manually_verified", "group", "site"],
        [["clips/a.wav", "dog,bark", "train", 0, 1, "g1", "north"],
         ["clips/b.wav", "cat", "train", 1, "", "g2", "south"],
         ["clips/c.wav", "", "test", "", "", "", "north"],
         [str(absolute), "cat", "test", "", 0, "g3", "east"],
         ["clips/missing.wav", "dog", "train", 2, 1, "g1", "north"],
         ["clips/a.wav", "cat", "train", 2, 1, "g1", "north"]],
    )  # fmt: skip

    for root in (tmp_path, manifest):
        assert detect_format(root) == "csv"
        index = load_dataset(root)
        records = {r.clip_id: r for r in index.records}
        assert set(records) == {"a.wav", "b.wav", "c.wav", "d.wav"}
        assert records["a.wav"].labels == ("dog", "bark") and records["a.wav"].label == "dog"
        assert records["a.wav"].path == tmp_path / "clips" / "a.wav"
        assert records["a.wav"].fold == 0 and records["a.wav"].manually_verified is True
        assert records["b.wav"].manually_verified is None and records["b.wav"].group == "g2"
        assert records["c.wav"].labels == () and records["c.wav"].split == "test"
        assert records["d.wav"].path == absolute and records["d.wav"].fields == {"site": "east"}
        assert index.labels == ["bark", "cat", "dog"]
        # The second a.wav row gives other labels: the first row is kept and the clash named.
        assert [p.kind for p in index.problems] == ["conflicting_labels", "missing"]

    by_site = load_dataset(manifest, group_field="site")
    assert [r.group for r in by_site.records] == ["north", "south", "north", "east"]
    with pytest.raises(DataError, match="bad.csv: needs 'path' and 'label'"):
        load_dataset(_csv(tmp_path / "bad.csv", ["file_name", "tag"], [["a", "b"]]))


def test_pattern_layout(tmp_path):
    for label in ("yes", "no"):
        for speaker in ("ann", "bob-smith"):
            _wav(tmp_path / f"{label}_{speaker}_{1}.wav")
    _wav(tmp_path / "stray.wav")
    pattern = "{label}_{speaker}_{take}.wav"

    assert detect_format(tmp_path, label_pattern=pattern) == "pattern"
    index = load_dataset(tmp_path, label_pattern=pattern, group_field="speaker")
    assert index.format == "pattern" and index.labels == ["no", "yes"]
    assert len(index.records) == 4
    record = next(r for r in index.records if r.clip_id == "no_bob-smith_1.wav")
    assert record.fields == {"label": "no", "speaker": "bob-smith", "take": "1"}
    assert record.group == "bob-smith"
    assert [(p.path.name, p.kind) for p in index.problems] == [("stray.wav", "unmatched")]

    with pytest.raises(DataError, match=r"no \{label\} field"):
        load_dataset(tmp_path, format="pattern", label_pattern="{speaker}.wav")
    with pytest.raises(DataError, match="group field 'session'"):
        load_dataset(tmp_path, label_pattern=pattern, group_field="session")
    with pytest.raises(DataError, match="needs a label pattern"):
        load_dataset(tmp_path, format="pattern")


def test_fsdd_pattern(fsdd_root):
    index = load_dataset(
        fsdd_root,
        format="pattern",
        label_pattern="{label}_{speaker}_{take}.wav",
        group_field="speaker",
    )
    assert isinstance(index, DatasetIndex) and isinstance(index.records[0], ClipRecord)
    assert len(index.records) == 3000 and not index.problems
    assert index.labels == [str(d) for d in range(10)]
    assert len({r.group for r in index.records}) == 6
    assert set(Counter(r.label for r in index.records).values()) == {300}


def test_detection_errors_name_the_root(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: no known dataset layout"):
        load_dataset(tmp_path)
    _wav(tmp_path / "0_a_1.wav")
    with pytest.raises(DataError, match="--format pattern"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "absent")
    with pytest.raises(DataError, match="unknown dataset format 'zip'"):
        load_dataset(tmp_path, format="zip")


# --- bad entries, bad names and bad manifest rows ---------------------------------------------


def test_a_link_loop_in_a_class_folder_is_named_and_the_other_clips_load(tmp_path):
    for name in ("a.wav", "b.wav"):
        _wav(tmp_path / "dog" / name)
    _wav(tmp_path / "cat" / "c.wav")
    (tmp_path / "dog" / "loop.wav").symlink_to(tmp_path / "dog" / "loop.wav")
    os.mkfifo(tmp_path / "cat" / "pipe.wav")
    (tmp_path / "bird").symlink_to(tmp_path / "moved-away")  # a class folder link, broken
    index = load_dataset(tmp_path)
    assert sorted(r.clip_id for r in index.records) == ["a.wav", "b.wav", "c.wav"]
    assert sorted((p.path.name, p.kind, p.message) for p in index.problems) == [
        ("bird", "not_a_file", "broken symbolic link"),
        ("loop.wav", "not_a_file", "symbolic link loop"),
        ("pipe.wav", "not_a_file", "is a named pipe (FIFO), expected a regular file"),
    ]


def test_a_link_loop_listed_in_metadata_hides_no_other_clip(tmp_path):
    for name in ("a.wav", "b.wav"):
        _wav(tmp_path / "clips" / name)
    (tmp_path / "clips" / "loop.wav").symlink_to(tmp_path / "clips" / "loop.wav")
    manifest = _csv(
        tmp_path / "manifest.csv",
        ["path", "label"],
        [["clips/a.wav", "x"], ["clips/loop.wav", "x"], ["clips/b.wav", "y"]],
    )
    index = load_dataset(manifest)
    assert [r.clip_id for r in index.records] == ["a.wav", "b.wav"]
    assert [(p.path.name, p.kind) for p in index.problems] == [("loop.wav", "not_a_file")]
    assert "symbolic link loop" in index.problems[0].message


def test_folder_names_that_are_not_utf8_load_and_serialise(tmp_path):
    raw = os.fsencode(tmp_path)
    _wav(Path(os.fsdecode(raw + b"/dog/x_\xff.wav")))
    _wav(Path(os.fsdecode(raw + b"/c\xe4t/y.wav")))
    index = load_dataset(tmp_path)
    assert index.labels == ["c\\xe4t", "dog"]  # printable, JSON- and UTF-8-safe
    assert sorted(r.path.name for r in index.records) == sorted(["x_\udcff.wav", "y.wav"])
    assert not index.problems


def test_manifest_rows_are_matched_by_the_file_they_name(tmp_path):
    clip = _wav(tmp_path / "o" / "x.wav")
    other = _wav(tmp_path / "o" / "y.wav")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "clips").mkdir()
    manifest = _csv(
        tmp_path / "m" / "manifest.csv",
        ["path", "label", "split"],
        [["../o/x.wav", "dog", "train"],  # line 2
         ["clips/../../o/x.wav", "dog", "train"],  # 3: the same file, the same label
         [str(clip), "cat", "train"],  # 4: the same file, another label
         ["../o/y.wav", "", "train"],  # 5: a training row without a label
         ["../o/y.wav", "cat", "test"],  # 6
         ["../o/z.wav"],  # 7: too short
         ["", "dog", "train"]],  # 8: no file
    )  # fmt: skip
    index = load_dataset(manifest)
    assert [(r.path, r.labels, r.split) for r in index.records] == [
        (clip, ("dog",), "train"),
        (other, (), "test"),  # "cat" came only from the conflicting row: not a training label
    ]
    problems = [(p.path.name, p.kind, p.message) for p in index.problems]
    assert problems == [
        ("manifest.csv", "bad_row", "line 7: 1 cell(s) where the header has 3; left out"),
        ("x.wav", "duplicate", "manifest.csv line 3: same file as line 2; left out"),
        (
            "x.wav",
            "conflicting_labels",
            "manifest.csv line 4: same file as line 2 with other labels (dog vs cat); line 2 kept",
        ),
        ("y.wav", "no_label", "manifest.csv line 5: training row without a label"),
        ("manifest.csv", "bad_row", "line 8: no file named; left out"),
        ("y.wav", "unknown_label", "test label(s) cat not among the training labels"),
    ]


def test_short_rows_of_fsdkaggle2018_csvs_are_problems_not_tracebacks(tmp_path):
    meta = tmp_path / "FSDKaggle2018.meta"
    _csv(meta / "train_post_competition.csv", ["fname", "label", "manually_verified"],
         [["a.wav", "Bark", 1], ["b.wav"]])  # fmt: skip
    _wav(tmp_path / "FSDKaggle2018.audio_train" / "a.wav")
    index = load_dataset(tmp_path)
    assert [r.clip_id for r in index.records] == ["a.wav"]
    assert [(p.kind, p.message) for p in index.problems] == [
        ("bad_row", "line 3: 1 cell(s) where the header has 3; left out")
    ]


def test_a_fifo_as_dataset_root_or_manifest_is_refused_unopened(tmp_path):
    os.mkfifo(tmp_path / "m.csv")
    for format in (None, "csv"):
        with pytest.raises(DataError, match=r"m.csv: is a named pipe \(FIFO\)"):
            load_dataset(tmp_path / "m.csv", format=format)
    _csv(tmp_path / "short.csv", ["path", "label"], [["a.wav"], ["b.wav"]])
    index = load_dataset(tmp_path / "short.csv", check_files=False)
    assert [p.message for p in index.problems] == [
        "line 2: 1 cell(s) where the header has 2; left out",
        "line 3: 1 cell(s) where the header has 2; left out",
    ]
