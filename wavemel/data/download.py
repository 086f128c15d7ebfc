"""Resumable, checksummed download and safe unpacking of the public data sets.

Only the standard library speaks HTTP (``urllib``), so the command works wherever Python does.
A file is fetched into ``NAME.part``; when a ``.part`` file is already there the request carries
``Range: bytes=N-`` and the download continues only if the server answers ``206 Partial Content``
with a ``Content-Range`` that starts at byte N and agrees with the announced length. A ``200``
means the server ignores ranges, and a ``206`` for other bytes means it cannot be trusted to
resume: both restart from zero. Only a complete, verified file is renamed to ``NAME``, so a file
with the final name is never a truncated one. Archives are unpacked into a staging folder that is
renamed into place when every archive of the data set is in, so the data set folder is either
absent or complete.

Limits: a host that is broken or hostile must not fill the disk. Each archive has an expected
size (from the Zenodo record, or an estimate in :data:`SOURCES`); a body larger than a generous
multiple of it is refused, also when the server sends no ``Content-Length``. Unpacking checks the
archive's headers before writing anything (number of entries, total size, per-entry compression
ratio, free disk space) and counts the bytes again while writing, because headers can lie.

Failures: an archive whose content is bad (corrupt, unsafe, over a limit) is removed so that a
rerun fetches it again, unless it matches a published checksum (fetching it again would give the
same bytes). Any other failure (a full disk, a permission) keeps the archive, removes what the
unpacking wrote and says how to continue.

Checksums: the FSDKaggle2018 archives are verified against the md5 sums that Zenodo publishes for
the record: its JSON description (``https://zenodo.org/api/records/2552860``, fetched first, a few
kB) lists ``"checksum": "md5:..."`` and the size of every file, so no digest is hard-coded here.
FSD50K (record 4060432) is verified the same way, part by part.
The FSDD and ESC-50 archives are GitHub snapshots of a branch, whose bytes change with every
commit (and with GitHub's archiver), so they carry no checksum and are checked only for being a
valid archive. Pass ``md5=`` or ``sha256=`` to :func:`download_file` to verify any other file.

Split archives: FSD50K's audio zips are split (``FSD50K.dev_audio.zip`` with ``.z01`` ...
``.z05``), which Python's ``zipfile`` cannot read. Every part is downloaded and verified on its
own; the parts are then joined into one temporary zip by Info-ZIP's ``zip -s 0`` (as the FSD50K
README instructs), which is unpacked with the same checks and removed. Without a ``zip`` program
the command stops before joining, keeps the verified parts and says what to install.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import lzma
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.client import HTTPException, InvalidURL
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm import tqdm

from wavemel._io import atomic_write_json, atomic_write_text, make_folder, os_error_reason
from wavemel.errors import DataError

BASE_URL_ENV = "WAVEMEL_DOWNLOAD_BASE_URL"
# Written into a finished data set folder; its presence is what "already downloaded" means.
MARKER_NAME = ".wavemel-download.json"
_CHUNK = 1 << 16
_USER_AGENT = "wavemel-download/1.0 (+https://github.com/)"

#: A download may be this many times its expected size: GitHub snapshots grow with the repository.
DOWNLOAD_MARGIN = 4
#: Caps for files whose size nobody announced; every data set here is far below them.
MAX_DOWNLOAD_BYTES = 16 << 30
MAX_UNPACKED_BYTES = 64 << 30


class ArchiveError(DataError):
    """An archive's content is unusable: corrupt, unsafe, or over an unpacking limit."""


@dataclass(frozen=True)
class RemoteFile:
    """One archive of a data set.

    Attributes:
        name: file name of the archive (also the last component of a ``--base-url`` URL).
        url: official download URL.
        md5: expected md5 hex digest, or None when unknown.
        sha256: expected sha256 hex digest, or None when unknown.
        strip_components: leading path components dropped from every archive entry (GitHub
            snapshots wrap everything in ``REPO-BRANCH/``).
        size: expected size in bytes (exact from a Zenodo record, else an estimate), or None;
            the download and unpacking limits are multiples of it.
        unpack: False for a piece of a split archive (``.z01`` ...): fetched and verified, then
            unpacked through the archive that names it in ``pieces``.
        pieces: for the last part of a split zip (the ``.zip``), the names of its other parts in
            order; they come earlier in :attr:`Source.files`.
    """

    name: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    strip_components: int = 0
    size: int | None = None
    unpack: bool = True
    pieces: tuple[str, ...] = ()

    @property
    def max_download_bytes(self) -> int:
        """The largest body accepted for this file."""
        if self.size is None:
            return MAX_DOWNLOAD_BYTES
        return min(MAX_DOWNLOAD_BYTES, DOWNLOAD_MARGIN * self.size)


@dataclass(frozen=True)
class UnpackLimits:
    """What one archive may unpack to; checked on the headers and again while writing.

    Attributes:
        max_total_bytes: total size of all entries.
        max_members: number of entries (files and folders).
        max_member_ratio: largest unpacked/packed size of one zip entry. Audio barely compresses
            (about 1.1-2x) and text about 10x; a zip bomb reaches about 1000x.
        ratio_min_bytes: entries smaller than this are not ratio-checked (tiny text files
            compress far better than audio, and cannot fill a disk one by one).
    """

    max_total_bytes: int
    max_members: int = 100_000
    max_member_ratio: float = 100.0
    ratio_min_bytes: int = 1 << 20

    @classmethod
    def for_archive(cls, archive_bytes: int) -> UnpackLimits:
        """Limits for an archive of (about) ``archive_bytes``: it may unpack to 8 times its size
        (64 MiB at least, :data:`MAX_UNPACKED_BYTES` at most)."""
        return cls(max_total_bytes=min(MAX_UNPACKED_BYTES, max(64 << 20, 8 * archive_bytes)))


@dataclass(frozen=True)
class Source:
    """A downloadable data set: its archives and where the adapters expect it.

    Attributes:
        name: registry key (``wavemel download NAME``).
        description: one line for ``--help`` and messages.
        homepage: where the data set is documented (licence, citation).
        folder: sub-folder of ``--to`` that receives the unpacked data set.
        files: the archives, all unpacked into ``folder``.
        expect: path relative to ``folder`` that must exist after unpacking (sanity check).
        data_root: path relative to ``folder`` to pass to ``wavemel ... --data``.
        format_hint: the ``--format`` (and options) that read it.
        finish: optional step run on the unpacked folder before it is moved into place (e.g.
            writing a manifest the adapters read).
        checksums: a Zenodo record's JSON description, which lists the md5 and size of every
            archive (fetched from ``BASE/<name>`` with a base URL, like the archives); None: no
            list.
    """

    name: str
    description: str
    homepage: str
    folder: str
    files: tuple[RemoteFile, ...]
    expect: str
    data_root: str = "."
    format_hint: str = ""
    finish: Callable[[Path], None] | None = None
    checksums: RemoteFile | None = None


def _write_esc50_manifest(folder: Path) -> None:
    """ESC-50 ships ``meta/esc50.csv`` (filename, fold, target, category, ...); write the
    ``manifest.csv`` (path, label, fold, group) that the ``csv`` adapter reads. The official
    5 folds are kept, and clips cut from the same Freesound recording share a group."""
    meta = folder / "meta" / "esc50.csv"
    try:
        with open(meta, newline="", encoding="utf-8") as src:
            rows = [
                [f"audio/{row['filename']}", row["category"], row["fold"], row.get("src_file", "")]
                for row in csv.DictReader(src)
            ]
    except (KeyError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(
            f"{meta}: unexpected ESC-50 metadata ({exc!r}); pass --force to download it again"
        ) from None
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "label", "fold", "group"])
    writer.writerows(rows)
    atomic_write_text(folder / "manifest.csv", text.getvalue(), error=DataError)


_ZENODO = "https://zenodo.org/records/2552860/files"
_FSD50K = "https://zenodo.org/records/4060432/files"
_MB = 1_000_000


def _split_zip(stem: str, pieces: int) -> tuple[RemoteFile, ...]:
    """The parts of a split zip on FSD50K's record: ``STEM.z01`` ... then ``STEM.zip``."""
    names = tuple(f"{stem}.z{i:02d}" for i in range(1, pieces + 1))
    parts = tuple(RemoteFile(name=n, url=f"{_FSD50K}/{n}", unpack=False) for n in names)
    return (*parts, RemoteFile(name=f"{stem}.zip", url=f"{_FSD50K}/{stem}.zip", pieces=names))


SOURCES: dict[str, Source] = {
    "fsdkaggle2018": Source(
        name="fsdkaggle2018",
        description="FSDKaggle2018 (DCASE 2018 Task 2), 41 classes, ~4.8 GB of 44.1 kHz WAV",
        homepage="https://zenodo.org/records/2552860",
        folder="fsdkaggle2018",
        # Sizes come with the md5 sums from the Zenodo record.
        files=tuple(
            RemoteFile(name=f"FSDKaggle2018.{part}.zip", url=f"{_ZENODO}/FSDKaggle2018.{part}.zip")
            for part in ("meta", "doc", "audio_test", "audio_train")
        ),
        expect="FSDKaggle2018.meta/train_post_competition.csv",
        format_hint="--format fsdkaggle2018",
        checksums=RemoteFile(
            name="zenodo-record-2552860.json",
            url="https://zenodo.org/api/records/2552860",
            size=_MB,  # a few kB of JSON
        ),
    ),
    "fsd50k": Source(
        name="fsd50k",
        description="FSD50K, 200 classes (multi-label), 51,197 clips, ~30 GB of 44.1 kHz WAV",
        homepage="https://zenodo.org/records/4060432",
        folder="fsd50k",
        # Sizes come with the md5 sums from the Zenodo record, as for FSDKaggle2018.
        files=(
            *(
                RemoteFile(name=f"FSD50K.{part}.zip", url=f"{_FSD50K}/FSD50K.{part}.zip")
                for part in ("ground_truth", "metadata", "doc")
            ),
            *_split_zip("FSD50K.eval_audio", 1),
            *_split_zip("FSD50K.dev_audio", 5),
        ),
        expect="FSD50K.ground_truth/dev.csv",
        format_hint="--format fsd50k --val-split val",
        checksums=RemoteFile(
            name="zenodo-record-4060432.json",
            url="https://zenodo.org/api/records/4060432",
            size=_MB,
        ),
    ),
    "fsdd": Source(
        name="fsdd",
        description="Free Spoken Digit Dataset, 10 digits, 3,000 8 kHz WAV recordings",
        homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
        folder="fsdd",
        files=(
            RemoteFile(
                name="free-spoken-digit-dataset-master.zip",
                url="https://github.com/Jakobovski/free-spoken-digit-dataset/archive/"
                "refs/heads/master.zip",
                strip_components=1,
                size=25 * _MB,  # about 21 MB of recordings
            ),
        ),
        expect="recordings",
        data_root="recordings",
        format_hint="--format pattern --label-pattern '{label}_{speaker}_{take}.wav'",
    ),
    "esc50": Source(
        name="esc50",
        description="ESC-50 environmental sounds, 50 classes, 2,000 5 s 44.1 kHz WAV clips",
        homepage="https://github.com/karolpiczak/ESC-50",
        folder="esc50",
        files=(
            RemoteFile(
                name="ESC-50-master.zip",
                url="https://github.com/karolpiczak/ESC-50/archive/refs/heads/master.zip",
                strip_components=1,
                size=650 * _MB,  # "~600 MB" in its README; 882 MB of WAV unpacked
            ),
        ),
        expect="meta/esc50.csv",
        format_hint="--format csv",
        finish=_write_esc50_manifest,
    ),
}


def _zenodo_entries(record: dict) -> Iterator[dict]:
    """The file entries of a Zenodo record's JSON, in either listing form."""
    files = record.get("files", record.get("entries", []))
    if isinstance(files, dict):
        files = files.get("entries", files)
    if isinstance(files, dict):
        files = list(files.values())
    for entry in files if isinstance(files, list) else []:
        if isinstance(entry, dict):
            name = entry.get("key") or entry.get("filename")
            if isinstance(name, str):
                yield {**entry, "key": name}


def zenodo_checksums(record: dict) -> dict[str, str]:
    """``{file name: md5}`` from a Zenodo record's JSON (``/api/records/ID``).

    Zenodo lists files as ``{"key": NAME, "checksum": "md5:HEX"}``, either in a list under
    ``files`` or, in the file-listing form, in ``entries`` (a list or a dict keyed by name).
    Entries with another algorithm or a malformed digest are left out.
    """
    sums = {}
    for entry in _zenodo_entries(record):
        checksum = entry.get("checksum")
        if not isinstance(checksum, str):
            continue
        algorithm, _, digest = checksum.partition(":")
        if algorithm.lower() == "md5" and len(digest) == 32:
            sums[entry["key"]] = digest.lower()
    return sums


def zenodo_sizes(record: dict) -> dict[str, int]:
    """``{file name: size in bytes}`` from a Zenodo record's JSON (entries without one left out)."""
    return {
        entry["key"]: entry["size"]
        for entry in _zenodo_entries(record)
        if type(entry.get("size")) is int and entry["size"] > 0  # not a bool, not a float
    }


def _published_files(source: Source, to: Path, base_url: str | None, **fetch_options) -> Source:
    """``source`` with the md5 sums and sizes its host publishes filled in (as is without a list).

    Raises:
        DataError: the listing cannot be fetched or lists no md5 for some archive.
    """
    if source.checksums is None:
        return source
    url = resolve_url(source.checksums, base_url)
    # Fetched afresh every time: a few kB, and a stale list would reject good archives.
    listing = to / source.checksums.name
    listing.unlink(missing_ok=True)
    download_file(url, listing, max_bytes=source.checksums.max_download_bytes, **fetch_options)
    try:
        record = json.loads(listing.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError):
        record = {}
    finally:
        listing.unlink(missing_ok=True)
    record = record if isinstance(record, dict) else {}
    sums, sizes = zenodo_checksums(record), zenodo_sizes(record)
    missing = [r.name for r in source.files if r.md5 is None and r.name not in sums]
    if missing:
        raise DataError(
            f"{url}: lists no md5 for {', '.join(missing)}; cannot verify the download "
            "(the record's format may have changed)"
        )
    files = tuple(
        replace(r, md5=r.md5 or sums[r.name], size=r.size or sizes.get(r.name))
        for r in source.files
    )
    return replace(source, files=files)


def resolve_url(remote: RemoteFile, base_url: str | None = None) -> str:
    """URL to fetch ``remote`` from: ``BASE/NAME`` with a base URL (argument, then the
    ``WAVEMEL_DOWNLOAD_BASE_URL`` environment variable), else the official URL."""
    base = base_url or os.environ.get(BASE_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{remote.name}"
    return remote.url


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_digests(path: Path, url: str, md5: str | None, sha256: str | None) -> None:
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        try:
            actual = file_digest(path, algorithm)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({os_error_reason(exc)})") from None
        if actual.lower() != expected.lower():
            path.unlink(missing_ok=True)
            raise DataError(
                f"{url}: {algorithm} checksum mismatch (expected {expected}, got {actual}); "
                f"the corrupt download {path.name} was removed, run the command again"
            )


def _one_line(text: object) -> str:
    """``text`` with its whitespace runs (newlines included) folded into single spaces."""
    return " ".join(str(text).split())


def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _free_bytes(folder: Path) -> int | None:
    """Free space on the disk that holds ``folder`` (None when the system does not say)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _require_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start writing ``needed`` bytes into ``folder`` when the disk cannot take them."""
    free = _free_bytes(folder)
    if free is not None and needed > free:
        raise DataError(
            f"{folder}: {what} needs {_human_bytes(needed)}, but only {_human_bytes(free)} are "
            "free on the disk; free some space and run again"
        )


def _open_output(path: Path, mode: str) -> BinaryIO:
    """Open a file that wavemel writes (the one place, so tests can simulate a full disk)."""
    return open(path, mode)  # noqa: SIM115 - the callers close it


class _Retry(Exception):
    """An attempt failed in a way another attempt may fix (the ``.part`` file keeps what arrived).

    Attributes:
        reason: what went wrong, for the final message.
        hint: what the user can do when every attempt failed.
    """

    def __init__(self, reason: str, hint: str = "run again to resume") -> None:
        super().__init__(reason)
        self.reason, self.hint = reason, hint

    def message(self, url: str, attempts: int) -> str:
        """The one line shown when the last attempt failed like this."""
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        if self.hint == _OFFLINE:
            return f"cannot reach {url}: {self.reason} ({tries}); {self.hint}"
        return f"{url}: {self.reason} ({tries}); {self.hint}"


_OFFLINE = "are you offline?"


class _Restart(Exception):
    """The ``.part`` file was worthless and is gone: ask for the whole file, now."""


@dataclass(frozen=True)
class _Transfer:
    """One file to download: from where, into which ``.part`` file, within which limits."""

    url: str
    part: Path
    label: str
    max_bytes: int
    timeout: float

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or self.url


def _network_error(transfer: _Transfer, exc: BaseException) -> _Retry:
    """The :class:`_Retry` for a socket-level failure: a timeout, an unreachable host, a reset."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return _Retry(
            f"no answer from {transfer.host} within {transfer.timeout:g} s",
            "the host may be down or slow; try again later or raise --timeout",
        )
    if isinstance(exc, urllib.error.URLError):
        # Raised before any byte came back: the host was not reached at all.
        if isinstance(reason, socket.gaierror):
            why = f"cannot resolve the host name {transfer.host}"
        elif isinstance(reason, ConnectionRefusedError):
            why = f"{transfer.host} refused the connection"
        else:
            why = f"cannot connect ({_one_line(reason)})"
        return _Retry(why, _OFFLINE)
    return _Retry(f"transfer interrupted ({_one_line(exc) or type(exc).__name__})")


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` from ``bytes FIRST-LAST/TOTAL`` (total None for ``*``)."""
    unit, _, spec = (value or "").strip().partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit()):
        return None
    if not (total.isdigit() or total == "*") or int(last) < int(first):
        return None
    return int(first), int(last), int(total) if total.isdigit() else None


def _open(transfer: _Transfer, offset: int):
    """Send the request; None when a ``416`` says a previous run already got every byte.

    Raises:
        _Retry, _Restart, urllib.error.HTTPError: see :func:`_fetch_once`.
    """
    request = urllib.request.Request(transfer.url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=transfer.timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The range starts at or past the end. "bytes */N" with N == what we have means the
            # previous run got everything but stopped before the rename: done. Otherwise the
            # .part file is stale; start again rather than guess.
            if (exc.headers.get("Content-Range") or "").strip() == f"bytes */{offset}":
                return None
            transfer.part.unlink()
            raise _Restart from None
        raise
    except urllib.error.URLError as exc:
        if not isinstance(exc.reason, OSError):
            # A string reason is a malformed URL ("unknown url type"): retrying cannot fix it.
            raise DataError(f"{transfer.url}: not a valid download URL ({exc.reason})") from None
        raise _network_error(transfer, exc) from None
    except InvalidURL as exc:  # a bad port or a space in the host name
        raise DataError(f"{transfer.url}: not a valid download URL ({_one_line(exc)})") from None
    except (OSError, HTTPException) as exc:
        raise _network_error(transfer, exc) from None


def _placement(response, offset: int) -> tuple[int, int | None] | None:
    """Where the body starts in the file and the file's total size (None: unknown); None when a
    ``206`` answer is not the continuation from ``offset`` that was asked for."""
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.isdigit() else None
    if response.status != 206:
        # 200: the server sent the whole file, so what we had is worthless.
        return 0, length
    span = _content_range(response.headers.get("Content-Range"))
    if span is None:
        return None
    first, last, total = span
    if first != offset or (length is not None and length != last - first + 1):
        return None
    if total is not None and total != last + 1:
        return None
    return offset, last + 1


def _fetch_once(transfer: _Transfer, progress: bool) -> None:
    """One attempt, plus one fresh request when the ``.part`` file turned out to be worthless."""
    try:
        _request_into_part(transfer, progress)
    except _Restart:
        _request_into_part(transfer, progress)  # no .part file now: a request for every byte


def _request_into_part(transfer: _Transfer, progress: bool) -> None:
    """One HTTP request that appends to (206) or rewrites (200) the ``.part`` file.

    Raises:
        _Retry: the connection failed, stalled or broke, or the body ended before its length.
        _Restart: the ``.part`` file was stale or the resume came back for other bytes; it was
            removed.
        urllib.error.HTTPError: from urllib.
        DataError: the file is larger than ``max_bytes``, the disk cannot take it, or a ``206``
            to a request for the whole file.
    """
    part = transfer.part
    offset = part.stat().st_size if part.exists() else 0
    response = _open(transfer, offset)
    if response is None:
        return
    with response:
        placement = _placement(response, offset)
        if placement is None:
            if not offset:
                content_range = _one_line(response.headers.get("Content-Range"))
                raise DataError(
                    f"{transfer.url}: answered HTTP 206 with Content-Range {content_range!r} to "
                    "a request for the whole file"
                )
            # Appending bytes from elsewhere in the file would make a corrupt archive that only
            # a checksum could catch, and the GitHub snapshots have none: start again.
            part.unlink()
            raise _Restart
        start, total = placement
        if total is not None and total > transfer.max_bytes:
            raise DataError(
                f"{transfer.url}: the server announces {_human_bytes(total)}, more than the "
                f"{_human_bytes(transfer.max_bytes)} expected at most for {transfer.label}"
            )
        if total is not None:
            _require_space(part.parent, total - start, f"downloading {transfer.label}")
        bar = _progress_bar(transfer.label, total, start, progress)
        try:
            size = _receive(response, transfer, start, bar)
        finally:
            bar.close()
    if total is not None and size < total:
        raise _Retry(f"transfer interrupted (got {size} of {total} bytes)")


def _receive(response, transfer: _Transfer, start: int, bar) -> int:
    """Write the body into the ``.part`` file from byte ``start``; returns the file's size after.

    Raises:
        _Retry: the connection broke or stalled.
        DataError: more than ``max_bytes`` in all (the ``.part`` file is removed), or a failed
            write (the ``.part`` file is kept, to resume from once there is room).
    """
    size = start
    try:
        with _open_output(transfer.part, "ab" if start else "wb") as handle:
            while True:
                try:
                    block = response.read(_CHUNK)
                except (HTTPException, OSError) as exc:
                    raise _network_error(transfer, exc) from None
                if not block:
                    return size
                size += len(block)
                if size > transfer.max_bytes:
                    break
                handle.write(block)
                bar.update(len(block))
    except OSError as exc:
        raise DataError(
            f"{transfer.part}: cannot write ({os_error_reason(exc)}); what arrived is kept, "
            "run again to resume once that is fixed"
        ) from None
    transfer.part.unlink(missing_ok=True)
    raise DataError(
        f"{transfer.url}: sent more than {_human_bytes(transfer.max_bytes)}, the most expected "
        f"for {transfer.label}; stopped and removed the partial file"
    )


def _progress_bar(label: str, total: int | None, initial: int, enabled: bool):
    return tqdm(
        total=total,
        initial=initial,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


def _http_error(url: str, exc: urllib.error.HTTPError) -> DataError | _Retry:
    """A :class:`DataError` for an HTTP error no retry can fix, else a :class:`_Retry`."""
    status = f"HTTP {exc.code} {_one_line(exc.reason)}".strip()
    if 300 <= exc.code < 400 and exc.headers.get("Location"):
        # urllib gives up on a loop or after 10 redirects; its own message spans three lines.
        return DataError(f"{url}: too many redirects (HTTP {exc.code} each time; a redirect loop?)")
    if exc.code >= 500 or exc.code in (408, 429):
        return _Retry(status, "the server may be busy; try again later")
    return DataError(f"{url}: {status}")


def download_file(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming from ``dest.part`` and verifying checksums.

    Args:
        url: http(s) URL.
        dest: final path; written only once the file is complete and verified.
        md5: expected md5 hex digest (None: not checked).
        sha256: expected sha256 hex digest (None: not checked).
        max_bytes: the largest file accepted, with or without a ``Content-Length`` (see
            :attr:`RemoteFile.max_download_bytes`).
        retries: further attempts after a failed or interrupted one (each resumes).
        backoff: seconds before the first retry, doubled for each further one.
        timeout: seconds to wait for the server to connect, answer or send more bytes.
        progress: show a tqdm progress bar.

    Returns:
        ``dest``.

    Raises:
        DataError: unreachable or silent host (after the retries), HTTP error, too large, disk
            full, or checksum mismatch (the bad file is removed); one line naming the URL or file.
    """
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError as exc:
        raise DataError(f"{url}: not a valid download URL ({exc})") from None
    if scheme not in ("http", "https"):
        raise DataError(f"{url}: not a valid download URL (http:// or https:// expected)")
    dest = Path(dest)
    make_folder(dest.parent, error=DataError)
    transfer = _Transfer(url, dest.with_name(dest.name + ".part"), dest.name, max_bytes, timeout)
    failure = _Retry("no attempt made")
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch_once(transfer, progress)
            break
        except _Retry as exc:
            failure = exc
        except urllib.error.HTTPError as exc:
            error = _http_error(url, exc)
            if isinstance(error, DataError):
                raise error from None
            failure = error
        except ValueError as exc:  # urllib's "unknown url type", http.client's InvalidURL
            raise DataError(f"{url}: not a valid download URL ({_one_line(exc)})") from None
    else:
        raise DataError(failure.message(url, retries + 1))
    _check_digests(transfer.part, url, md5, sha256)
    try:
        os.replace(transfer.part, dest)
    except OSError as exc:
        raise DataError(f"{dest}: cannot write ({os_error_reason(exc)})") from None
    return dest


@dataclass(frozen=True)
class _Member:
    """One archive entry to write.

    Attributes:
        name: the entry's name in the archive.
        target: where it goes under the destination folder.
        is_dir: a folder entry (nothing to copy).
        size: unpacked size from the header.
        packed_size: compressed size from the header (None in tar files, compressed as a whole).
        open: opens the entry's bytes for reading.
    """

    name: str
    target: Path
    is_dir: bool
    size: int
    packed_size: int | None
    open: Callable[[], BinaryIO]


def _member_target(name: str, strip: int, dest: Path) -> Path | None:
    """Where an archive entry goes, None for entries stripped away; rejects path traversal."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise ArchiveError(f"unsafe entry {name} (absolute path, '..' or link)")
    parts = posix.parts[strip:]
    if not parts:
        return None
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ArchiveError(f"unsafe entry {name} (absolute path, '..' or link)")
    return target


def _member(name: str, strip: int, dest: Path, **header: Any) -> _Member | None:
    """Archive entry ``name`` placed under ``dest``, or None when ``strip`` removes its whole path.

    Args:
        name: the entry's name in the archive.
        strip: leading path components to drop.
        dest: the destination folder.
        header: the other :class:`_Member` fields, read from the entry's header.

    Raises:
        ArchiveError: an unsafe name (absolute, ``..``, a drive).
    """
    target = _member_target(name, strip, dest)
    return None if target is None else _Member(name=name, target=target, **header)


def _zip_members(zf: zipfile.ZipFile, strip: int, dest: Path) -> list[_Member]:
    members = [
        _member(
            info.filename,
            strip,
            dest,
            is_dir=info.is_dir(),
            size=info.file_size,
            packed_size=info.compress_size,
            open=lambda info=info: zf.open(info),
        )
        for info in zf.infolist()
    ]
    return [member for member in members if member is not None]


def _tar_members(tf: tarfile.TarFile, strip: int, dest: Path, limits: UnpackLimits):
    members = []
    # Iterated rather than getmembers(), so that a stream of millions of headers stops early.
    for count, info in enumerate(tf, start=1):
        if count > limits.max_members:
            raise ArchiveError(f"more than {limits.max_members} entries")
        member = _member(
            info.name,
            strip,
            dest,
            is_dir=info.isdir(),
            size=info.size if info.isfile() else 0,
            packed_size=None,
            open=lambda info=info: tf.extractfile(info),
        )
        if not (info.isfile() or info.isdir()):
            raise ArchiveError(f"unsafe entry {info.name} (a link or device file)")
        if member is not None:
            members.append(member)
    return members


def _check_headers(members: list[_Member], limits: UnpackLimits) -> int:
    """What the headers promise, checked before anything is written; returns the total size.

    Raises:
        ArchiveError: too many entries, too large in all, an entry compressed beyond the ratio
            limit (a zip bomb), or entries that collide (the same file twice, a file where a
            folder must be).
    """
    if len(members) > limits.max_members:
        raise ArchiveError(f"{len(members)} entries, more than the limit of {limits.max_members}")
    total = 0
    files, folders = set(), set()
    for member in members:
        total += member.size
        if total > limits.max_total_bytes:
            raise ArchiveError(
                f"unpacks to more than {_human_bytes(limits.max_total_bytes)}, the limit for it"
            )
        if _over_ratio(member, member.size, limits):
            raise ArchiveError(
                f"entry {member.name} is compressed {member.size // max(member.packed_size, 1)}"
                f" to 1, more than the {limits.max_member_ratio:g} to 1 allowed (a zip bomb?)"
            )
        if member.is_dir:
            folders.add(member.target)
            continue
        if member.target in files or member.target in folders:
            raise ArchiveError(f"entry {member.name} appears twice")
        files.add(member.target)
        folders.update(member.target.parents)
    clash = files & folders
    if clash:
        raise ArchiveError(f"{min(clash)} is both a file and a folder in the archive")
    return total


def _over_ratio(member: _Member, size: int, limits: UnpackLimits) -> bool:
    if member.packed_size is None or size < limits.ratio_min_bytes:
        return False
    return size > limits.max_member_ratio * max(member.packed_size, 1)


class _Writer:
    """Writes entries under the destination, counting bytes against the limits, and remembers
    every file and folder it creates so that a failure removes exactly those."""

    def __init__(self, limits: UnpackLimits) -> None:
        self.limits = limits
        self.total = 0
        self.created: list[Path] = []

    def make_folder(self, folder: Path) -> None:
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self.created.append(path)

    def copy(self, member: _Member) -> None:
        self.make_folder(member.target.parent)
        src = _from_archive(f"corrupt entry {member.name}", member.open)
        # "x": an entry never replaces a file that was there before.
        with src, _open_output(member.target, "xb") as dst:
            self.created.append(member.target)
            written = 0
            while block := _from_archive(f"corrupt entry {member.name}", src.read, _CHUNK):
                written += len(block)
                self.total += len(block)
                self._check(member, written)
                dst.write(block)

    def _check(self, member: _Member, written: int) -> None:
        # The headers were checked already; this catches headers that lie.
        if written > member.size:
            raise ArchiveError(f"entry {member.name} is larger than its header says")
        if self.total > self.limits.max_total_bytes:
            raise ArchiveError(
                f"unpacks to more than {_human_bytes(self.limits.max_total_bytes)}, the limit"
            )
        if _over_ratio(member, written, self.limits):
            raise ArchiveError(f"entry {member.name} is compressed beyond the ratio limit")

    def remove_created(self) -> None:
        for path in reversed(self.created):
            try:
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
            except OSError:
                pass  # a folder someone else wrote into meanwhile stays


def _from_archive(what: str, read: Callable, *args):
    """``read(*args)``, with the archive's decoding errors as :class:`ArchiveError`; errors from
    the destination disk stay ``OSError``, and only those."""
    try:
        return read(*args)
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        OSError,  # gzip and bz2 report bad data as OSError
        RuntimeError,  # an encrypted zip entry
        NotImplementedError,  # an unsupported zip compression method
    ) as exc:
        raise ArchiveError(f"{what} ({_one_line(exc) or type(exc).__name__})") from None


def _open_archive(archive: Path):
    """The archive opened as a ZipFile or TarFile.

    Raises:
        DataError: the file cannot be read.
        ArchiveError: it is neither a zip nor a tar archive, or its index is corrupt.
    """
    try:
        with open(archive, "rb"):
            pass
    except OSError as exc:
        raise DataError(f"{archive}: cannot read ({os_error_reason(exc)})") from None
    try:
        if zipfile.is_zipfile(archive):
            return zipfile.ZipFile(archive)
        if tarfile.is_tarfile(archive):
            return tarfile.open(archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError):
        pass
    raise ArchiveError(f"{archive}: not a valid zip or tar archive")


def unpack_archive(
    archive: Path,
    dest: Path,
    *,
    strip_components: int = 0,
    limits: UnpackLimits | None = None,
) -> int:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``dest``, refusing unsafe entries.

    Entries with absolute paths, ``..`` components, and (in tar files) links or device files
    are rejected: a hostile archive must not write outside ``dest``. The headers are checked
    against ``limits`` and the free disk space before anything is written, and the bytes are
    counted again while writing. No existing file is replaced. On any failure, every file and
    folder this call created is removed again.

    Args:
        archive: the archive file.
        dest: folder to unpack into (created).
        strip_components: leading path components to drop from each entry.
        limits: size, ratio and entry-count limits (default: :meth:`UnpackLimits.for_archive`
            of the archive's size).

    Returns:
        Number of files written.

    Raises:
        ArchiveError: not a valid archive, an unsafe entry or over a limit (the archive's fault).
        DataError: anything else, such as a full disk or an existing file in the way.
    """
    archive, dest = Path(archive), Path(dest)
    with _open_archive(archive) as opened:
        if limits is None:
            limits = UnpackLimits.for_archive(archive.stat().st_size)
        try:
            if isinstance(opened, zipfile.ZipFile):
                members = _zip_members(opened, strip_components, dest)
            else:
                members = _from_archive(
                    "corrupt archive", _tar_members, opened, strip_components, dest, limits
                )
            total = _check_headers(members, limits)
        except ArchiveError as exc:
            raise ArchiveError(f"{archive}: {exc}") from None
        return _write_members(archive, dest, members, total, limits)


def _write_members(
    archive: Path, dest: Path, members: list[_Member], total: int, limits: UnpackLimits
) -> int:
    writer = _Writer(limits)
    target = dest
    try:
        writer.make_folder(dest)
        _require_space(dest, total, f"unpacking {archive.name}")
        for member in members:
            target = member.target
            if member.is_dir:
                writer.make_folder(target)
            else:
                writer.copy(member)
    except ArchiveError as exc:
        writer.remove_created()
        raise ArchiveError(f"{archive}: {exc}") from None
    except FileExistsError:
        writer.remove_created()
        raise DataError(f"{target}: already exists; not replaced by {archive.name}") from None
    except OSError as exc:
        writer.remove_created()
        raise DataError(
            f"{target}: cannot write ({os_error_reason(exc)}) while unpacking {archive.name}"
        ) from None
    except BaseException:
        writer.remove_created()
        raise
    return sum(not m.is_dir for m in members)


def _fetch_archive(remote: RemoteFile, to: Path, url: str, force: bool, **fetch_options) -> Path:
    """``to/<remote.name>``: a verified copy already there (unless ``force``), else downloaded."""
    archive = to / remote.name
    if archive.is_file() and not force:
        try:
            _check_digests(archive, str(archive), remote.md5, remote.sha256)
            return archive
        except DataError:
            pass  # removed by the check; fetch it again
    return download_file(
        url,
        archive,
        md5=remote.md5,
        sha256=remote.sha256,
        max_bytes=remote.max_download_bytes,
        **fetch_options,
    )


def _unpack_into(remote: RemoteFile, archive: Path, staging: Path, url: str) -> None:
    """Unpack one archive of a data set, deciding what happens to it when that fails.

    Raises:
        DataError: one line saying whether the archive was removed (bad content that a new
            download may fix) or kept (it matches its published checksum, or the problem is not
            its content, e.g. a full disk).
    """
    verified = remote.md5 is not None or remote.sha256 is not None
    # The larger of the two: a GitHub snapshot may have grown (within the download limit).
    limits = UnpackLimits.for_archive(max(remote.size or 0, archive.stat().st_size))
    try:
        unpack_archive(archive, staging, strip_components=remote.strip_components, limits=limits)
    except ArchiveError as exc:
        if verified:
            # Downloading it again would give the same bytes: keep it, do not loop.
            raise ArchiveError(
                f"{exc}; {archive.name} matches its published checksum and was kept"
            ) from None
        archive.unlink(missing_ok=True)
        raise ArchiveError(f"{exc} (downloaded from {url}; removed, run again)") from None
    except DataError as exc:
        raise DataError(f"{exc}; {archive.name} was kept, run again once that is fixed") from None


def _remove(path: Path) -> None:
    """Remove a file or a folder tree (the caller has made sure that it may)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def download_dataset(
    name: str,
    to: Path,
    *,
    base_url: str | None = None,
    force: bool = False,
    keep_archives: bool = False,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
    sources: dict[str, Source] | None = None,
) -> Path:
    """Download and unpack a registered data set into ``to/<folder>``.

    Args:
        name: registry key (``fsdkaggle2018``, ``fsdd``, ``esc50``).
        to: parent folder; archives are fetched into it and the data set lands in
            ``to/<source.folder>``.
        base_url: fetch every archive from ``BASE/<archive name>`` instead of the official host
            (a mirror, or a local server in tests); default ``$WAVEMEL_DOWNLOAD_BASE_URL``.
        force: replace an existing data set folder.
        keep_archives: keep the archives after unpacking (they are reused by a later call).
        retries: see :func:`download_file`.
        backoff: see :func:`download_file`.
        timeout: see :func:`download_file`.
        progress: show progress bars.
        sources: registry to use (default :data:`SOURCES`).

    Returns:
        The folder to pass as ``--data`` (``to/<folder>/<data_root>``).

    Raises:
        DataError: unknown name, existing folder without ``force``, network, checksum, disk or
            archive errors (an unverified archive with bad content is removed so that a rerun
            downloads it again; any other archive is kept for the rerun).
    """
    registry = SOURCES if sources is None else sources
    if name not in registry:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(sorted(registry))}")
    source = registry[name]
    to = Path(to)
    final = to / source.folder
    data_root = final / source.data_root if source.data_root != "." else final
    if final.exists() and not force:
        if (final / MARKER_NAME).is_file():
            return data_root
        raise DataError(
            f"{final} already exists and is not a finished download; pass --force to replace it"
        )
    if to.exists() and not to.is_dir():
        raise DataError(f"{to}: is a file; --to must be a folder")
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{to}: cannot create the folder ({os_error_reason(exc)})") from None

    fetch_options = {"retries": retries, "backoff": backoff, "timeout": timeout}
    source = _published_files(source, to, base_url, progress=False, **fetch_options)
    staging = to / f".{source.folder}.unpacking"
    try:
        if staging.exists():
            shutil.rmtree(staging)  # wavemel's own leftover from an interrupted run
        archives = _fetch_and_unpack(source, to, staging, base_url, force, progress, fetch_options)
        _finish(source, staging, archives, base_url)
        if final.exists() or final.is_symlink():
            _remove(final)  # --force
        os.replace(staging, final)
    except OSError as exc:
        raise DataError(f"{final}: cannot write ({os_error_reason(exc)})") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        for archive in archives:
            archive.unlink(missing_ok=True)
    return data_root


def _fetch_and_unpack(
    source: Source,
    to: Path,
    staging: Path,
    base_url: str | None,
    force: bool,
    progress: bool,
    fetch_options: dict,
) -> list[Path]:
    """Every archive of ``source`` fetched (or reused) and unpacked into ``staging``."""
    archives = []
    for remote in source.files:
        url = resolve_url(remote, base_url)
        archive = _fetch_archive(remote, to, url, force, progress=progress, **fetch_options)
        archives.append(archive)
        if not remote.unpack:
            continue  # a piece of a split zip: unpacked with its last part
        if not remote.pieces:
            _unpack_into(remote, archive, staging, url)
            continue
        joined = _join_split_zip(archive, [to / name for name in remote.pieces])
        limits = UnpackLimits.for_archive(joined.stat().st_size)
        try:
            unpack_archive(joined, staging, limits=limits)
        except ArchiveError as exc:
            # Joined from verified parts: fetching them again would give the same bytes.
            raise ArchiveError(f"{exc}; its verified parts were kept") from None
        except DataError as exc:
            message = f"{exc}; the verified parts were kept, run again once that is fixed"
            raise DataError(message) from None
        finally:
            joined.unlink(missing_ok=True)
    return archives


def _join_split_zip(archive: Path, pieces: list[Path]) -> Path:
    """One ordinary zip from a split one (``pieces`` = ``.z01`` ..., ``archive`` = the ``.zip``).

    Raises:
        DataError: no ``zip`` program, not enough disk space, or ``zip`` failed; the verified
            parts are kept for the rerun.
    """
    program = shutil.which("zip")
    if program is None:
        raise DataError(
            f"{archive}: a split zip ({', '.join(p.name for p in pieces)} + {archive.name}); "
            "joining it needs Info-ZIP's `zip` (e.g. apt-get install zip); the verified parts "
            "were kept, run again once it is installed"
        )
    joined = archive.with_name(f".{archive.stem}.joined.zip")
    joined.unlink(missing_ok=True)
    total = archive.stat().st_size + sum(p.stat().st_size for p in pieces)
    _require_space(archive.parent, total, f"joining {archive.name}")
    try:
        completed = subprocess.run(
            [program, "-s", "0", archive.name, "--out", joined.name],
            cwd=archive.parent,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise DataError(f"{archive}: cannot run zip ({os_error_reason(exc)})") from None
    if completed.returncode != 0:
        joined.unlink(missing_ok=True)
        lines = (completed.stderr or completed.stdout).strip().splitlines()
        reason = _one_line(lines[-1] if lines else f"exit status {completed.returncode}")
        raise DataError(f"{archive}: joining the split zip failed ({reason}); the parts were kept")
    return joined


def _finish(source: Source, staging: Path, archives: list[Path], base_url: str | None) -> None:
    """Check the unpacked layout, run the source's own step and write the marker file."""
    if not (staging / source.expect).exists():
        raise DataError(
            f"{source.name}: unpacked archives lack {source.expect}; the host may have changed "
            "its layout"
        )
    if source.finish is not None:
        source.finish(staging)
    marker = {
        "source": source.name,
        "homepage": source.homepage,
        "files": [
            {"name": r.name, "url": resolve_url(r, base_url), "md5": file_digest(a, "md5")}
            for r, a in zip(source.files, archives)
        ],
        "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(staging / MARKER_NAME, marker, error=DataError)
