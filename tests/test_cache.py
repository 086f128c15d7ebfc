"""ClipStore: the same samples as direct decoding, slices, rebuild/reuse, bad files, pickling."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavemel.audio import load_audio
from wavemel.data.cache import ClipStore, default_cache_dir
from wavemel.data.synthetic import generate


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    root = generate(tmp_path_factory.mktemp("syn") / "data", clips_per_class=2, max_seconds=1.2)
    return sorted(root.rglob("*.wav"))


def _copy(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir()
    copies = []
    for path in files:
        copy = folder / path.name
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    return copies


@pytest.mark.parametrize("rate", [16000, 22050])
def test_store_matches_direct_decoding(tmp_path, clips, rate):
    # 16 kHz is the files' own rate; 22.05 kHz exercises resampling.
    store = ClipStore.build(clips, rate, tmp_path / "cache", progress=False, workers=2)
    assert store.built and len(store) == len(clips) and store.sample_rate == rate
    assert not store.errors
    for i, path in enumerate(clips):
        expected = load_audio(path, rate)
        assert store.length(i) == len(expected)
        got = store.read(i)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    assert list(store.lengths) == [len(load_audio(p, rate)) for p in clips]


def test_slices_and_order(tmp_path, clips):
    # Clip order follows the list given to build, whatever order the store keeps internally.
    order = clips[::-1]
    store = ClipStore.build(order, 16000, tmp_path, progress=False)
    sorted_store = ClipStore.build(clips, 16000, tmp_path, progress=False)
    assert not sorted_store.built and sorted_store.data_path == store.data_path
    for i in (0, 5, len(order) - 1):
        full = load_audio(order[i], 16000)
        np.testing.assert_array_equal(store.read(i, 100, 50), full[100:150])
        np.testing.assert_array_equal(store.read(i, 7), full[7:])
        # Past the end: cut at the end of the clip, not read into the next one.
        tail = store.read(i, len(full) - 10, 1000)
        np.testing.assert_array_equal(tail, full[-10:])
        assert store.read(i, len(full), 5).shape == (0,)
        # A copy: writing to it must not touch the store (which is read-only anyway).
        piece = store.read(i, 0, 4)
        piece[:] = 9.0
        np.testing.assert_array_equal(store.read(i, 0, 4), full[:4])
    with pytest.raises(IndexError):
        store.read(0, -1, 4)
    with pytest.raises(IndexError):
        store.read(0, store.length(0) + 1)


def test_reuse_when_unchanged_rebuild_when_changed(tmp_path, clips):
    files = _copy(clips[:4], tmp_path / "audio")
    cache = tmp_path / "cache"
    first = ClipStore.build(files, 16000, cache, progress=False)
    assert first.built
    stamp = first.data_path.stat().st_mtime_ns

    again = ClipStore.build(files, 16000, cache, progress=False)
    assert not again.built and again.data_path == first.data_path
    assert again.data_path.stat().st_mtime_ns == stamp

    # Another sample rate is another store.
    assert ClipStore.build(files, 8000, cache, progress=False).built

    # Rewrite one file with new content: new key, rebuild, new samples, old store removed.
    louder = load_audio(files[1]) * 2
    sf.write(str(files[1]), louder, 16000, subtype="PCM_16")
    changed = ClipStore.build(files, 16000, cache, progress=False)
    assert changed.built and changed.key != first.key
    np.testing.assert_array_equal(changed.read(1), load_audio(files[1], 16000))
    assert not first.data_path.exists() and not first.index_path.exists()

    # Touching alone (same bytes, new mtime) also rebuilds: the key cannot see contents.
    os.utime(files[2], ns=(stamp + 10**9, stamp + 10**9))
    assert ClipStore.build(files, 16000, cache, progress=False).built
    # Only complete stores remain: no temporary files left behind.
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_truncated_store_is_rebuilt(tmp_path, clips):
    store = ClipStore.build(clips[:3], 16000, tmp_path, progress=False)
    with open(store.data_path, "r+b") as handle:
        handle.truncate(100)
    again = ClipStore.build(clips[:3], 16000, tmp_path, progress=False)
    assert again.built
    np.testing.assert_array_equal(again.read(2), load_audio(clips[2], 16000))


def test_bad_and_empty_files_are_recorded_not_fatal(tmp_path, clips):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    missing = tmp_path / "missing.wav"
    files = [clips[0], bad, empty, missing, clips[1]]
    store = ClipStore.build(files, 16000, tmp_path / "cache", progress=False)
    assert sorted(store.errors) == [1, 3]
    assert "broken.wav" in store.errors[1] and "missing.wav" in store.errors[3]
    assert [store.length(i) for i in (1, 2, 3)] == [0, 0, 0]
    assert store.read(1).shape == (0,)
    # The good clips around the bad ones are intact.
    np.testing.assert_array_equal(store.read(4), load_audio(clips[1], 16000))


def test_pickle_round_trip_reopens_lazily(tmp_path, clips):
    store = ClipStore.build(clips[:5], 16000, tmp_path, progress=False)
    before = store.read(3, 10, 500)  # opens the memory map in this process
    state = pickle.dumps(store)
    # The open map is not part of the pickled state, and neither are the samples.
    assert store._memmap is not None and store.__getstate__()["_memmap"] is None
    assert len(state) < store.total_samples
    clone = pickle.loads(state)
    assert clone._memmap is None
    np.testing.assert_array_equal(clone.read(3, 10, 500), before)
    assert len(clone) == 5 and clone.errors == store.errors


def test_empty_list_and_default_dir(tmp_path, monkeypatch):
    store = ClipStore.build([], 16000, tmp_path, progress=False)
    assert len(store) == 0 and store.total_samples == 0
    monkeypatch.setenv("WAVEMEL_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"


def _read_in_child(args):
    store, i = args
    return store.read(i, 20, 300)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_reads_in_forked_worker(tmp_path, clips):
    import multiprocessing

    store = ClipStore.build(clips[:3], 16000, tmp_path, progress=False)
    # The parent has the map open before forking, as a DataLoader's main process would.
    expected = store.read(2, 20, 300)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.map(_read_in_child, [(store, 2)])[0]
    np.testing.assert_array_equal(got, expected)
