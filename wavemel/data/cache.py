"""Decode once, read crops forever: every clip of a dataset in one memory-mapped float32 file.

Training reads a random 1-3 s crop of every clip every epoch. Decoding and resampling the whole
file each time costs far more than the network's forward pass on a CPU loader, so
:meth:`ClipStore.build` decodes each file once (``wavemel.audio.load_audio``, resampled to the
model's rate) and appends the samples to one flat ``<key>.f32`` file, with a ``<key>.json`` index
of offsets, lengths and the source files' sizes and modification times. Reading a crop is a slice
of a ``numpy.memmap``: only the pages of that slice are touched.

The key hashes the sorted source paths, their sizes and modification times, the sample rate and
the store's format version, so any change to the files or settings gives a new key and a rebuild;
an unchanged dataset reuses the store without reading any audio. Both files are written under
temporary names and renamed into place (index last), so an interrupted build never leaves a store
that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from wavemel.audio import load_audio
from wavemel.errors import AudioError

__all__ = ["ClipStore", "default_cache_dir", "FORMAT_VERSION"]

#: Version of the on-disk layout; part of the key, so a new layout never reads an old store.
FORMAT_VERSION = 1

_DTYPE = np.dtype("<f4")


def default_cache_dir() -> Path:
    """``$WAVEMEL_CACHE`` if set, else ``~/.cache/wavemel``."""
    env = os.environ.get("WAVEMEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wavemel"


def _fingerprint(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a file; (-1, -1) when it is missing, which decoding then reports."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return int(stat.st_size), int(stat.st_mtime_ns)


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def _decode(path: Path, sample_rate: int) -> tuple[np.ndarray, str | None]:
    try:
        return load_audio(path, sample_rate), None
    except AudioError as exc:
        # A bad file must not abort a build over thousands of clips: it becomes an empty clip
        # and the caller reports the message.
        return np.zeros(0, dtype=np.float32), str(exc)


class ClipStore:
    """Random access to the decoded, resampled samples of a list of audio files.

    Build (or reuse) one with :meth:`build`. Clip ``i`` is ``paths[i]`` of the list given to
    ``build``. The memory map is opened lazily in each process and never pickled, so a store can
    be handed to ``DataLoader`` workers (fork or spawn).

    Attributes:
        sample_rate: Rate of the stored samples in Hz.
        paths: The source files, in the order given to :meth:`build`.
        errors: ``{clip index: message}`` for files that failed to decode (stored empty).
        data_path: The ``.f32`` file holding all samples.
        index_path: The ``.json`` index next to it.
        key: The cache key (file stem).
        built: ``True`` when this store was (re)built by the :meth:`build` call that returned it,
            ``False`` when an existing valid store was reused.
    """

    def __init__(
        self,
        index_path: Path,
        paths: Sequence[Path] | None = None,
        *,
        built: bool = False,
    ) -> None:
        """Open an existing store from its index; use :meth:`build` to make or find one.

        Args:
            index_path: The store's ``<key>.json``.
            paths: Clip order to expose; ``None`` keeps the index's (sorted) order. Each path must
                be one of the store's sources.
            built: Recorded as :attr:`built`.
        """
        self.index_path = Path(index_path)
        index = json.loads(self.index_path.read_text())
        if index.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.index_path}: unsupported store format")
        self.key: str = index["key"]
        self.sample_rate: int = int(index["sample_rate"])
        self.data_path = self.index_path.with_suffix(".f32")
        self.total_samples = int(index["total_samples"])
        entries = index["entries"]
        stored = [Path(entry["path"]) for entry in entries]
        if paths is None:
            order = np.arange(len(entries))
            self.paths = stored
        else:
            position = {path: i for i, path in enumerate(stored)}
            self.paths = [Path(p) for p in paths]
            order = np.array([position[p.absolute()] for p in self.paths], dtype=np.int64)
        offsets = np.array([entry["offset"] for entry in entries], dtype=np.int64)
        lengths = np.array([entry["length"] for entry in entries], dtype=np.int64)
        self._offsets = offsets[order]
        self._lengths = lengths[order]
        self.errors: dict[int, str] = {
            i: entries[j]["error"] for i, j in enumerate(order) if entries[j]["error"]
        }
        self.built = built
        self._memmap: np.memmap | None = None
        self._memmap_pid: int | None = None

    # --- building ------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        paths: Sequence[str | os.PathLike],
        sample_rate: int,
        cache_dir: str | os.PathLike | None = None,
        progress: bool | None = True,
        *,
        workers: int | None = None,
    ) -> ClipStore:
        """Decode ``paths`` at ``sample_rate`` into a store, or reuse a valid one.

        Args:
            paths: Audio files; clip ``i`` of the store is ``paths[i]``. Order does not change
                the key: the same files in another order reuse the same store.
            sample_rate: Rate to resample every clip to, in Hz.
            cache_dir: Folder for the store's files; ``None`` means :func:`default_cache_dir`.
            progress: Show a progress bar on stderr while decoding (``None``: only on a
                terminal).
            workers: Decoding threads (libsndfile and soxr release the GIL); ``None`` picks
                ``min(4, cpu count)``.

        Returns:
            The store. Files that failed to decode are empty clips listed in ``errors``.
        """
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        # absolute(), not resolve(): the key follows the names the dataset uses, and resolving
        # every symlink of a 10k-file dataset costs a syscall chain per file.
        requested = [Path(p).absolute() for p in paths]
        sources = sorted(set(requested), key=str)
        fingerprints = [_fingerprint(p) for p in sources]
        names = [str(p) for p in sources]
        # dataset_id names the data set (files + rate); key adds their contents' fingerprints.
        dataset_id = _digest([FORMAT_VERSION, sample_rate, names])[:16]
        content = _digest([FORMAT_VERSION, sample_rate, names, fingerprints])[:16]
        key = f"{dataset_id}-{content}"
        index_path = cache_dir / f"{key}.json"

        if cls._valid(index_path):
            return cls(index_path, requested, built=False)

        cache_dir.mkdir(parents=True, exist_ok=True)
        cls._write(index_path, sources, fingerprints, sample_rate, key, progress, workers)
        # Older stores of the same data set (files changed since) are dead weight: remove them.
        for stale in cache_dir.glob(f"{dataset_id}-*"):
            if stale.stem != key and stale.suffix in (".json", ".f32"):
                stale.unlink(missing_ok=True)
        return cls(index_path, requested, built=True)

    @staticmethod
    def _valid(index_path: Path) -> bool:
        try:
            index = json.loads(index_path.read_text())
            data_size = index_path.with_suffix(".f32").stat().st_size
        except (OSError, ValueError):
            return False
        return (
            index.get("format_version") == FORMAT_VERSION
            and data_size == int(index.get("total_samples", -1)) * _DTYPE.itemsize
        )

    @staticmethod
    def _write(
        index_path: Path,
        sources: list[Path],
        fingerprints: list[tuple[int, int]],
        sample_rate: int,
        key: str,
        progress: bool | None,
        workers: int | None,
    ) -> None:
        workers = workers or min(4, os.cpu_count() or 1)
        tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        data_tmp = index_path.with_name(f"{key}.f32{tag}")
        index_tmp = index_path.with_name(f"{key}.json{tag}")
        entries = []
        offset = 0
        bar = tqdm(
            total=len(sources),
            desc=f"caching audio at {sample_rate} Hz",
            unit="clip",
            file=sys.stderr,
            disable=None if progress is None else not progress,
        )
        try:
            with (
                open(data_tmp, "wb") as out,
                ThreadPoolExecutor(max_workers=workers) as pool,
            ):
                # A bounded window of pending decodes keeps memory flat on large datasets while
                # the samples are still appended in order.
                pending: deque = deque()
                todo = iter(zip(sources, fingerprints))
                for _ in range(workers * 4):
                    item = next(todo, None)
                    if item is None:
                        break
                    pending.append((item, pool.submit(_decode, item[0], sample_rate)))
                while pending:
                    (path, (size, mtime_ns)), future = pending.popleft()
                    samples, error = future.result()
                    item = next(todo, None)
                    if item is not None:
                        pending.append((item, pool.submit(_decode, item[0], sample_rate)))
                    out.write(np.ascontiguousarray(samples, dtype=_DTYPE).tobytes())
                    entries.append(
                        {
                            "path": str(path),
                            "size": size,
                            "mtime_ns": mtime_ns,
                            "offset": offset,
                            "length": int(samples.shape[0]),
                            "error": error,
                        }
                    )
                    offset += int(samples.shape[0])
                    bar.update(1)
                out.flush()
                os.fsync(out.fileno())
            index = {
                "format_version": FORMAT_VERSION,
                "key": key,
                "sample_rate": sample_rate,
                "dtype": _DTYPE.str,
                "total_samples": offset,
                "entries": entries,
            }
            index_tmp.write_text(json.dumps(index))
            # Data first, index last: the index's presence is what marks a store valid.
            os.replace(data_tmp, index_path.with_suffix(".f32"))
            os.replace(index_tmp, index_path)
        finally:
            bar.close()
            data_tmp.unlink(missing_ok=True)
            index_tmp.unlink(missing_ok=True)

    # --- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._lengths.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """``(N,)`` int64 sample count of every clip (0 for empty or failed files)."""
        return self._lengths.copy()

    def length(self, i: int) -> int:
        """Number of samples in clip ``i``."""
        return int(self._lengths[i])

    def duration(self, i: int) -> float:
        """Duration of clip ``i`` in seconds."""
        return self.length(i) / self.sample_rate

    def _data(self) -> np.memmap:
        # Opened per process: a map inherited through fork would work, but one unpickled in a
        # spawned worker must be reopened, and checking the pid covers both.
        pid = os.getpid()
        if self._memmap is None or self._memmap_pid != pid:
            self._memmap = np.memmap(
                self.data_path, dtype=_DTYPE, mode="r", shape=(self.total_samples,)
            )
            self._memmap_pid = pid
        return self._memmap

    def read(self, i: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Samples ``start : start + length`` of clip ``i``, reading only that slice.

        Args:
            i: Clip index.
            start: First sample, ``0 <= start <= length(i)``.
            length: Number of samples; ``None`` reads to the end. A slice reaching past the end
                of the clip is cut there (the result is shorter).

        Returns:
            ``(n,)`` float32, a copy (safe to modify; does not keep the file mapped).
        """
        total = self.length(i)
        if not 0 <= start <= total:
            raise IndexError(f"start {start} outside clip {i} of {total} samples")
        if length is not None and length < 0:
            raise ValueError(f"length must be non-negative, got {length}")
        stop = total if length is None else min(total, start + length)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        offset = int(self._offsets[i])
        return np.array(self._data()[offset + start : offset + stop], dtype=np.float32)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_memmap"] = None
        state["_memmap_pid"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"ClipStore({len(self)} clips, {self.sample_rate} Hz, "
            f"{self.total_samples / self.sample_rate / 3600:.2f} h, {len(self.errors)} errors, "
            f"{self.data_path})"
        )
