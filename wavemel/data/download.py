"""Resumable, checksummed download and safe unpacking of the public data sets.

Only the standard library speaks HTTP (``urllib``), so the command works wherever Python does.
A file is fetched into ``NAME.part``; when a ``.part`` file is already there the request carries
``Range: bytes=N-`` and the download continues if the server answers ``206 Partial Content`` (a
``200`` means the server ignores ranges, and the download restarts from zero). Only a complete,
verified file is renamed to ``NAME``, so a file with the final name is never a truncated one.
Archives are unpacked into a staging folder that is renamed into place when every archive of the
data set is in, so the data set folder is either absent or complete.

Checksums: the FSDKaggle2018 archives are verified against the md5 sums that Zenodo publishes for
the record: its JSON description (``https://zenodo.org/api/records/2552860``, fetched first, a few
kB) lists ``"checksum": "md5:..."`` for every file, so no digest is hard-coded here. The FSDD and
ESC-50 archives are GitHub snapshots of a branch, whose bytes change with every commit (and with
GitHub's archiver), so they carry no checksum and are checked only for being a valid archive.
Pass ``md5=`` or ``sha256=`` to :func:`download_file` to verify any other file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from wavemel.errors import DataError

BASE_URL_ENV = "WAVEMEL_DOWNLOAD_BASE_URL"
# Written into a finished data set folder; its presence is what "already downloaded" means.
MARKER_NAME = ".wavemel-download.json"
_CHUNK = 1 << 16
_USER_AGENT = "wavemel-download/1.0 (+https://github.com/)"


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
    """

    name: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    strip_components: int = 0


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
        checksums: a Zenodo record's JSON description, which lists the md5 of every archive
            (fetched from ``BASE/<name>`` with a base URL, like the archives); None: no list.
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
    import csv

    with open(folder / "meta" / "esc50.csv", newline="") as src:
        rows = list(csv.DictReader(src))
    with open(folder / "manifest.csv", "w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["path", "label", "fold", "group"])
        for row in rows:
            writer.writerow(
                [f"audio/{row['filename']}", row["category"], row["fold"], row.get("src_file", "")]
            )


_ZENODO = "https://zenodo.org/records/2552860/files"

SOURCES: dict[str, Source] = {
    "fsdkaggle2018": Source(
        name="fsdkaggle2018",
        description="FSDKaggle2018 (DCASE 2018 Task 2), 41 classes, ~4.8 GB of 44.1 kHz WAV",
        homepage="https://zenodo.org/records/2552860",
        folder="fsdkaggle2018",
        files=tuple(
            RemoteFile(name=f"FSDKaggle2018.{part}.zip", url=f"{_ZENODO}/FSDKaggle2018.{part}.zip")
            for part in ("meta", "doc", "audio_test", "audio_train")
        ),
        expect="FSDKaggle2018.meta/train_post_competition.csv",
        format_hint="--format fsdkaggle2018",
        checksums=RemoteFile(
            name="zenodo-record-2552860.json", url="https://zenodo.org/api/records/2552860"
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
            ),
        ),
        expect="meta/esc50.csv",
        format_hint="--format csv",
        finish=_write_esc50_manifest,
    ),
}


def zenodo_checksums(record: dict) -> dict[str, str]:
    """``{file name: md5}`` from a Zenodo record's JSON (``/api/records/ID``).

    Zenodo lists files as ``{"key": NAME, "checksum": "md5:HEX"}``, either in a list under
    ``files`` or, in the file-listing form, in ``entries`` (a list or a dict keyed by name).
    Entries with another algorithm or a malformed digest are left out.
    """
    files = record.get("files", record.get("entries", []))
    if isinstance(files, dict):
        files = files.get("entries", files)
    if isinstance(files, dict):
        files = list(files.values())
    sums = {}
    for entry in files if isinstance(files, list) else []:
        if not isinstance(entry, dict):
            continue
        name, checksum = entry.get("key") or entry.get("filename"), entry.get("checksum")
        if not isinstance(name, str) or not isinstance(checksum, str):
            continue
        algorithm, _, digest = checksum.partition(":")
        if algorithm.lower() == "md5" and len(digest) == 32:
            sums[name] = digest.lower()
    return sums


def _published_checksums(
    source: Source, to: Path, base_url: str | None, **fetch_options
) -> dict[str, str]:
    """The md5 sums the host publishes for ``source``'s archives ({} when it publishes none)."""
    if source.checksums is None:
        return {}
    url = resolve_url(source.checksums, base_url)
    # Fetched afresh every time: a few kB, and a stale list would reject good archives.
    listing = to / source.checksums.name
    listing.unlink(missing_ok=True)
    download_file(url, listing, **fetch_options)
    try:
        sums = zenodo_checksums(json.loads(listing.read_text()))
    except (ValueError, UnicodeDecodeError):
        sums = {}
    finally:
        listing.unlink(missing_ok=True)
    missing = [r.name for r in source.files if r.md5 is None and r.name not in sums]
    if missing:
        raise DataError(
            f"{url}: lists no md5 for {', '.join(missing)}; cannot verify the download "
            "(the record's format may have changed)"
        )
    return sums


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
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.lower():
            path.unlink(missing_ok=True)
            raise DataError(
                f"{url}: {algorithm} checksum mismatch (expected {expected}, got {actual}); "
                f"the corrupt download {path.name} was removed, run the command again"
            )


class _Interrupted(Exception):
    """A transfer ended early; the ``.part`` file keeps what arrived."""


def _is_unreachable(exc: urllib.error.URLError) -> bool:
    # URLError wraps socket errors (refused, DNS failure, timeout, reset) in ``reason``; a
    # string reason means a malformed URL, which retrying cannot fix.
    return isinstance(exc.reason, OSError)


def _fetch_once(url: str, part: Path, timeout: float, progress: bool, label: str) -> None:
    """One HTTP request that appends to (206) or rewrites (200) ``part``.

    Raises:
        _Interrupted: the body ended before its announced length, or the connection broke.
        urllib.error.HTTPError / URLError: from urllib.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The range starts at or past the end. "bytes */N" with N == what we have means the
            # previous run got everything but stopped before the rename: done. Otherwise the
            # .part file is stale; start again rather than guess.
            if (exc.headers.get("Content-Range") or "").strip() == f"bytes */{offset}":
                return
            part.unlink()
            raise _Interrupted("server rejected the resume range") from exc
        raise
    with response:
        if response.status == 206:
            mode = "ab"
        else:
            # 200: the server sent the whole file, so what we had is worthless.
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        total = offset + expected if expected is not None else None
        received = 0
        bar = _progress_bar(label, total, offset, progress)
        try:
            with open(part, mode) as handle:
                while True:
                    try:
                        block = response.read(_CHUNK)
                    except (HTTPException, OSError) as exc:
                        raise _Interrupted(str(exc)) from exc
                    if not block:
                        break
                    handle.write(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
        if expected is not None and received < expected:
            raise _Interrupted(f"got {received} of {expected} bytes")


def _progress_bar(label: str, total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

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


def download_file(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
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
        retries: further attempts after a failed or interrupted one (each resumes).
        backoff: seconds before the first retry, doubled for each further one.
        timeout: socket timeout in seconds.
        progress: show a tqdm progress bar.

    Returns:
        ``dest``.

    Raises:
        DataError: unreachable host (after the retries), HTTP error, or checksum mismatch (the
            bad file is removed).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch_once(url, part, timeout, progress, dest.name)
            break
        except _Interrupted as exc:
            last_error = f"transfer interrupted ({exc})"
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code not in (408, 429):
                raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            last_error = f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            if not _is_unreachable(exc):
                raise DataError(f"{url}: {exc.reason}") from None
            last_error = "unreachable"
        except (TimeoutError, ConnectionError) as exc:
            last_error = f"unreachable ({exc})"
    else:
        if last_error.startswith("unreachable"):
            raise DataError(f"cannot reach {url}: are you offline?")
        raise DataError(f"{url}: {last_error} after {retries + 1} attempts; run again to resume")
    _check_digests(part, url, md5, sha256)
    os.replace(part, dest)
    return dest


def _member_target(name: str, strip: int, dest: Path) -> Path | None:
    """Where an archive entry goes, None for entries stripped away; rejects path traversal."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise ValueError(name)
    parts = posix.parts[strip:]
    if not parts:
        return None
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ValueError(name)
    return target


def unpack_archive(archive: Path, dest: Path, *, strip_components: int = 0) -> int:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``dest``, refusing unsafe entries.

    Entries with absolute paths, ``..`` components, and (in tar files) links or device files
    are rejected: a hostile archive must not write outside ``dest``.

    Args:
        archive: the archive file.
        dest: folder to unpack into (created).
        strip_components: leading path components to drop from each entry.

    Returns:
        Number of files written.

    Raises:
        DataError: not a valid archive, or an unsafe entry (nothing outside ``dest`` is written).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [
                    (info, _member_target(info.filename, strip_components, dest))
                    for info in zf.infolist()
                ]
                for info, target in members:
                    if target is None:
                        continue
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                    written += 1
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = []
                for info in tf.getmembers():
                    target = _member_target(info.name, strip_components, dest)
                    if not (info.isfile() or info.isdir()):
                        raise ValueError(info.name)
                    members.append((info, target))
                for info, target in members:
                    if target is None:
                        continue
                    if info.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(info)
                    with src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                    written += 1
        else:
            raise DataError(f"{archive}: not a valid zip or tar archive")
    except ValueError as exc:
        raise DataError(f"{archive}: unsafe entry {exc} (absolute path, '..' or link)") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: corrupt archive ({exc})") from None
    return written


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
        DataError: unknown name, existing folder without ``force``, network, checksum or archive
            errors (a corrupt archive is removed so that a rerun downloads it again).
    """
    registry = SOURCES if sources is None else sources
    if name not in registry:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(sorted(registry))}")
    source = registry[name]
    to = Path(to)
    final = to / source.folder
    data_root = final / source.data_root if source.data_root != "." else final
    if final.exists():
        if not force:
            if (final / MARKER_NAME).is_file():
                return data_root
            raise DataError(
                f"{final} already exists and is not a finished download; pass --force to replace it"
            )
    to.mkdir(parents=True, exist_ok=True)

    fetch_options = {
        "retries": retries,
        "backoff": backoff,
        "timeout": timeout,
        "progress": False,
    }
    published = _published_checksums(source, to, base_url, **fetch_options)
    staging = to / f".{source.folder}.unpacking"
    if staging.exists():
        shutil.rmtree(staging)
    archives: list[Path] = []
    for remote in source.files:
        if remote.md5 is None and remote.name in published:
            remote = replace(remote, md5=published[remote.name])
        url = resolve_url(remote, base_url)
        archive = to / remote.name
        if archive.exists() and not force:
            try:
                _check_digests(archive, str(archive), remote.md5, remote.sha256)
            except DataError:
                archive = None
        else:
            archive = None
        if archive is None:
            archive = download_file(
                url,
                to / remote.name,
                md5=remote.md5,
                sha256=remote.sha256,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=progress,
            )
        try:
            unpack_archive(archive, staging, strip_components=remote.strip_components)
        except DataError as exc:
            archive.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"{exc} (downloaded from {url}; removed, run again)") from None
        archives.append(archive)

    if not (staging / source.expect).exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"{name}: unpacked archives lack {source.expect}; the host may have changed its layout"
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
    (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    if not keep_archives:
        for archive in archives:
            archive.unlink(missing_ok=True)
    return data_root
