"""wavemel.data.download against a local HTTP server that serves archives made in the test."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wavemel.cli import main as cli_main
from wavemel.data import download as download_module
from wavemel.data.download import (
    MARKER_NAME,
    ArchiveError,
    RemoteFile,
    Source,
    UnpackLimits,
    download_dataset,
    download_file,
    unpack_archive,
    zenodo_checksums,
    zenodo_sizes,
)
from wavemel.errors import DataError


class _Server:
    """Serves ``files`` (name -> bytes); honours Range; can cut the first response short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.cut_first_after: int | None = None  # bytes sent before dropping the connection
        self.ignore_range = False
        # "from-zero": answer a resume with 206 and the whole file; "no-content-range": 206
        # and the asked-for bytes, but no Content-Range header.
        self.bad_resume: str | None = None
        self.send_length = True  # False: no Content-Length, the end of the body is the close
        self.redirects: dict[str, str] = {}  # name -> Location
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/").split("?")[0]
                server.requests.append({"path": name, "range": self.headers.get("Range")})
                if name in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[name])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and not server.ignore_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    if server.bad_resume == "from-zero":
                        start = 0
                    if server.bad_resume != "no-content-range":
                        last = len(body) - 1
                        self.send_header("Content-Range", f"bytes {start}-{last}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                if server.send_length:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.cut_first_after is not None and len(server.requests) == 1:
                    # Announce the full length, send part of it, then hang up.
                    self.wfile.write(payload[: server.cut_first_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as it should past a limit

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _wav_like(seed: int, size: int = 4000) -> bytes:
    # Incompressible-ish content so that a truncated transfer really is missing bytes.
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def _fsdd_source(md5: str | None = None, size: int | None = None) -> dict[str, Source]:
    return {
        "fsdd": Source(
            name="fsdd",
            description="test",
            homepage="http://example.invalid",
            folder="fsdd",
            files=(
                RemoteFile(
                    name="fsdd-master.zip",
                    url="http://example.invalid/fsdd-master.zip",
                    md5=md5,
                    strip_components=1,
                    size=size,
                ),
            ),
            expect="recordings",
            data_root="recordings",
        )
    }


def _silent_wav() -> bytes:
    """0.1 s of 16-bit mono silence at 8 kHz: a valid WAV file."""
    return (
        b"RIFF"
        + (36 + 1600).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + (8000).to_bytes(4, "little")
        + (16000).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + (1600).to_bytes(4, "little")
        + bytes(1600)
    )


FSDD_ENTRIES = {
    f"free-spoken-digit-dataset-master/recordings/{d}_jackson_{t}.wav": _wav_like(10 * d + t)
    for d in range(3)
    for t in range(2)
}


def test_download_unpack_and_checksum(server, tmp_path):
    archive = _zip_bytes(FSDD_ENTRIES | {"free-spoken-digit-dataset-master/README.md": b"hi"})
    server.files["fsdd-master.zip"] = archive
    md5 = hashlib.md5(archive).hexdigest()
    root = download_dataset(
        "fsdd", tmp_path, base_url=server.url, sources=_fsdd_source(md5), progress=False
    )
    assert root == tmp_path / "fsdd" / "recordings"
    wavs = sorted(p.name for p in root.glob("*.wav"))
    assert wavs == sorted(Path(n).name for n in FSDD_ENTRIES)
    assert (root / "1_jackson_0.wav").read_bytes() == _wav_like(10)
    assert (tmp_path / "fsdd" / "README.md").read_bytes() == b"hi"
    assert (tmp_path / "fsdd" / MARKER_NAME).is_file()
    assert not (tmp_path / "fsdd-master.zip").exists()  # archives removed by default
    assert not list(tmp_path.glob("*.part"))

    # A second call finds the finished download and does not fetch again.
    n_requests = len(server.requests)
    again = download_dataset(
        "fsdd", tmp_path, base_url=server.url, sources=_fsdd_source(md5), progress=False
    )
    assert again == root and len(server.requests) == n_requests


def test_existing_unfinished_folder_needs_force(server, tmp_path):
    server.files["fsdd-master.zip"] = _zip_bytes(FSDD_ENTRIES)
    (tmp_path / "fsdd").mkdir()
    (tmp_path / "fsdd" / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="--force"):
        download_dataset("fsdd", tmp_path, base_url=server.url, sources=_fsdd_source())
    assert (tmp_path / "fsdd" / "mine.txt").exists()
    download_dataset(
        "fsdd", tmp_path, base_url=server.url, sources=_fsdd_source(), force=True, progress=False
    )
    assert not (tmp_path / "fsdd" / "mine.txt").exists()
    assert len(list((tmp_path / "fsdd" / "recordings").glob("*.wav"))) == len(FSDD_ENTRIES)


def test_interrupted_download_resumes_with_range(server, tmp_path):
    payload = _tar_bytes({"pkg/a.bin": _wav_like(1, 20000), "pkg/b.bin": _wav_like(2, 9000)})
    server.files["data.tar.gz"] = payload
    server.cut_first_after = len(payload) // 3
    dest = tmp_path / "data.tar.gz"
    download_file(
        f"{server.url}/data.tar.gz",
        dest,
        sha256=hashlib.sha256(payload).hexdigest(),
        backoff=0.0,
        progress=False,
    )
    assert dest.read_bytes() == payload
    assert len(server.requests) == 2
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == f"bytes={len(payload) // 3}-"
    assert unpack_archive(dest, tmp_path / "out", strip_components=1) == 2
    assert (tmp_path / "out" / "a.bin").read_bytes() == _wav_like(1, 20000)


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    payload = _wav_like(7, 30000)
    server.files["blob.bin"] = payload
    server.ignore_range = True
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"stale bytes from another file")
    download_file(f"{server.url}/blob.bin", dest, backoff=0.0, progress=False)
    assert server.requests[0]["range"] == "bytes=29-"
    assert dest.read_bytes() == payload  # the 200 answer replaced the stale part


def test_bad_checksum_is_rejected_and_removed(server, tmp_path):
    server.files["fsdd-master.zip"] = _zip_bytes(FSDD_ENTRIES)
    with pytest.raises(DataError, match="checksum mismatch") as info:
        download_dataset(
            "fsdd", tmp_path, base_url=server.url, sources=_fsdd_source("0" * 32), progress=False
        )
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())  # no archive, no .part, no data set folder


def test_invalid_zip_is_rejected_and_removed(server, tmp_path):
    server.files["fsdd-master.zip"] = b"<html>rate limited</html>"
    with pytest.raises(DataError, match="not a valid zip"):
        download_dataset("fsdd", tmp_path, base_url=server.url, sources=_fsdd_source())
    assert not list(tmp_path.iterdir())


def test_path_traversal_entry_is_rejected(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"ok/a.txt": b"a", "ok/../../escaped.txt": b"x"}))
    with pytest.raises(DataError, match="unsafe entry"):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out" / "ok" / "a.txt").exists()  # checked before writing anything


def test_connection_refused_is_one_line_error(tmp_path):
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    with pytest.raises(DataError, match="are you offline") as info:
        download_file(url, tmp_path / "x.zip", retries=1, backoff=0.0, progress=False)
    assert url in str(info.value)


def test_http_404_is_reported(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        download_file(f"{server.url}/missing.zip", tmp_path / "m.zip", progress=False)


def test_cli_downloads_fsdd_from_base_url(server, tmp_path, capsys):
    # The real registry entry, fetched from the local mirror: checks the URL pattern
    # BASE/<archive name> and the layout the FSDD adapter reads.
    server.files["free-spoken-digit-dataset-master.zip"] = _zip_bytes(FSDD_ENTRIES)
    status = cli_main(
        ["download", "fsdd", "--to", str(tmp_path), "--base-url", server.url, "--quiet"]
    )
    assert status == 0
    assert len(list((tmp_path / "fsdd" / "recordings").glob("*_jackson_*.wav"))) == 6
    assert "ready in" in capsys.readouterr().out


def test_esc50_gets_a_manifest_the_csv_adapter_reads(server, tmp_path):
    from wavemel.data import load_dataset

    meta = "filename,fold,target,category,esc10,src_file,take\n"
    meta += "1-100-A-0.wav,1,0,dog,True,100,A\n2-200-A-1.wav,2,1,rooster,False,200,A\n"
    silent_wav = _silent_wav()
    server.files["ESC-50-master.zip"] = _zip_bytes(
        {
            "ESC-50-master/meta/esc50.csv": meta.encode(),
            "ESC-50-master/audio/1-100-A-0.wav": silent_wav,
            "ESC-50-master/audio/2-200-A-1.wav": silent_wav,
        }
    )
    root = download_dataset("esc50", tmp_path, base_url=server.url, progress=False)
    index = load_dataset(root, "csv")
    assert index.labels == ["dog", "rooster"]
    assert sorted(r.fold for r in index.records) == [1, 2]
    assert all(r.path.is_file() for r in index.records)


def test_complete_part_file_is_not_downloaded_again(server, tmp_path):
    payload = _wav_like(9, 5000)
    server.files["done.bin"] = payload
    dest = tmp_path / "done.bin"
    dest.with_name("done.bin.part").write_bytes(payload)  # stopped after the transfer
    download_file(
        f"{server.url}/done.bin", dest, md5=hashlib.md5(payload).hexdigest(), progress=False
    )
    assert dest.read_bytes() == payload
    assert server.requests == [{"path": "done.bin", "range": f"bytes={len(payload)}-"}]


def test_cli_lists_every_registered_data_set():
    from wavemel.cli.download import DATASETS
    from wavemel.data.download import SOURCES

    assert sorted(DATASETS) == sorted(SOURCES)


def _fsdk18_archives() -> dict[str, bytes]:
    """The four FSDKaggle2018 zips in the Zenodo layout, with two train and two test clips."""
    wav = _silent_wav()
    train_csv = "fname,label,manually_verified,freesound_id,license\n"
    train_csv += "aa.wav,Bark,1,1,CC0\nbb.wav,Cello,0,2,CC0\n"
    test_csv = "fname,label,usage,freesound_id,license\ncc.wav,Bark,Public,3,CC0\n"
    test_csv += "dd.wav,Cello,Private,4,CC0\n"
    return {
        "FSDKaggle2018.meta.zip": _zip_bytes(
            {
                "FSDKaggle2018.meta/train_post_competition.csv": train_csv.encode(),
                "FSDKaggle2018.meta/test_post_competition_scoring_clips.csv": test_csv.encode(),
            }
        ),
        "FSDKaggle2018.doc.zip": _zip_bytes({"FSDKaggle2018.doc/README.md": b"doc"}),
        "FSDKaggle2018.audio_train.zip": _zip_bytes(
            {"FSDKaggle2018.audio_train/aa.wav": wav, "FSDKaggle2018.audio_train/bb.wav": wav}
        ),
        "FSDKaggle2018.audio_test.zip": _zip_bytes(
            {"FSDKaggle2018.audio_test/cc.wav": wav, "FSDKaggle2018.audio_test/dd.wav": wav}
        ),
    }


def _zenodo_record(archives: dict[str, bytes], corrupt: str | None = None) -> bytes:
    """A Zenodo ``/api/records/ID`` answer listing the archives' md5 (one wrong if asked)."""
    files = [
        {
            "key": name,
            "size": len(data),
            "checksum": "md5:" + ("0" * 32 if name == corrupt else hashlib.md5(data).hexdigest()),
        }
        for name, data in archives.items()
    ]
    return json.dumps({"id": 2552860, "files": files}).encode()


def test_fsdkaggle2018_is_verified_against_zenodo_md5_and_loads(server, tmp_path):
    from wavemel.data import load_dataset

    archives = _fsdk18_archives()
    server.files.update(archives)
    server.files["zenodo-record-2552860.json"] = _zenodo_record(archives)
    root = download_dataset("fsdkaggle2018", tmp_path, base_url=server.url, progress=False)
    assert root == tmp_path / "fsdkaggle2018"
    index = load_dataset(root)  # layout detected: the Zenodo release
    assert index.format == "fsdkaggle2018"
    assert index.labels == ["Bark", "Cello"]
    assert sorted(r.usage for r in index.split("test")) == ["Private", "Public"]
    marker = json.loads((root / MARKER_NAME).read_text())
    assert {f["name"]: f["md5"] for f in marker["files"]} == {
        name: hashlib.md5(data).hexdigest() for name, data in archives.items()
    }
    assert not (tmp_path / "zenodo-record-2552860.json").exists()


def test_fsdkaggle2018_archive_with_wrong_md5_is_rejected(server, tmp_path):
    archives = _fsdk18_archives()
    server.files.update(archives)
    server.files["zenodo-record-2552860.json"] = _zenodo_record(
        archives, corrupt="FSDKaggle2018.audio_test.zip"
    )
    with pytest.raises(DataError, match="md5 checksum mismatch") as info:
        download_dataset("fsdkaggle2018", tmp_path, base_url=server.url, progress=False)
    assert "FSDKaggle2018.audio_test.zip" in str(info.value)
    assert not (tmp_path / "fsdkaggle2018").exists()
    assert not (tmp_path / "FSDKaggle2018.audio_test.zip").exists()


def test_zenodo_record_without_checksums_is_refused(server, tmp_path):
    server.files.update(_fsdk18_archives())
    server.files["zenodo-record-2552860.json"] = b'{"files": []}'
    with pytest.raises(DataError, match="lists no md5"):
        download_dataset("fsdkaggle2018", tmp_path, base_url=server.url, progress=False)
    assert not (tmp_path / "fsdkaggle2018").exists()


def test_zenodo_checksums_reads_both_listing_forms():
    entry = {"key": "a.zip", "checksum": "md5:" + "A" * 32}
    assert zenodo_checksums({"files": [entry]}) == {"a.zip": "a" * 32}
    assert zenodo_checksums({"entries": {"a.zip": entry}}) == {"a.zip": "a" * 32}
    assert zenodo_checksums({"files": [{"key": "b.zip", "checksum": "sha1:abc"}]}) == {}
    assert zenodo_sizes({"files": [entry | {"size": 1234}]}) == {"a.zip": 1234}
    assert zenodo_sizes({"files": [entry | {"size": "big"}]}) == {}


# --- a full disk -------------------------------------------------------------------------------


class _FullDisk:
    """A file that takes ``room`` more bytes and then fails the way a full disk does."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(room, modes)``: the files wavemel opens in one of ``modes`` take ``room`` bytes
    in all, then every write fails with ENOSPC."""

    def fill_after(room: int, modes: tuple[str, ...]) -> None:
        real_open = download_module._open_output
        left = {"room": room}

        def open_output(path, mode):
            handle = real_open(path, mode)
            if mode not in modes:
                return handle
            limited = _FullDisk(handle, left["room"])
            real_write = limited.write

            def write(data: bytes) -> int:
                try:
                    return real_write(data)
                finally:
                    left["room"] = limited.room

            limited.write = write
            return limited

        monkeypatch.setattr(download_module, "_open_output", open_output)

    return fill_after


def test_disk_full_while_downloading_is_one_line_and_the_part_file_resumes(
    server, tmp_path, full_disk, monkeypatch
):
    payload = _wav_like(3, 300_000)
    server.files["big.bin"] = payload
    dest = tmp_path / "big.bin"
    full_disk(100_000, modes=("wb", "ab"))
    with pytest.raises(DataError, match="no space left") as info:
        download_file(f"{server.url}/big.bin", dest, backoff=0.0, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(dest.with_name("big.bin.part")) in message
    assert len(server.requests) == 1  # a full disk is not retried
    assert dest.with_name("big.bin.part").read_bytes() == payload[:100_000]

    monkeypatch.undo()  # space freed: the rerun resumes from what arrived
    download_file(f"{server.url}/big.bin", dest, backoff=0.0, progress=False)
    assert dest.read_bytes() == payload
    assert server.requests[-1]["range"] == "bytes=100000-"


def test_disk_full_while_unpacking_keeps_the_verified_archive(
    server, tmp_path, full_disk, monkeypatch
):
    archive = _zip_bytes(FSDD_ENTRIES)
    server.files["fsdd-master.zip"] = archive
    sources = _fsdd_source(hashlib.md5(archive).hexdigest())
    full_disk(10_000, modes=("xb",))  # the third recording does not fit
    with pytest.raises(DataError, match="no space left") as info:
        download_dataset("fsdd", tmp_path, base_url=server.url, sources=sources, progress=False)
    message = str(info.value)
    assert "\n" not in message and "corrupt" not in message
    assert "fsdd-master.zip was kept" in message and ".wav" in message  # names the file
    # The 4.8 GB case: the verified archive stays; the partial output is gone.
    assert (tmp_path / "fsdd-master.zip").read_bytes() == archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsdd-master.zip"]

    monkeypatch.undo()
    n_requests = len(server.requests)
    root = download_dataset("fsdd", tmp_path, base_url=server.url, sources=sources, progress=False)
    assert len(list(root.glob("*.wav"))) == len(FSDD_ENTRIES)
    assert len(server.requests) == n_requests  # unpacked from the kept archive, not fetched


def test_failed_unpack_removes_only_what_it_wrote(tmp_path, full_disk):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({f"pkg/sub/{i}.bin": _wav_like(i, 4000) for i in range(5)}))
    dest = tmp_path / "dest"
    (dest / "pkg").mkdir(parents=True)
    (dest / "pkg" / "mine.txt").write_text("user data")
    full_disk(9000, modes=("xb",))
    with pytest.raises(DataError, match="no space left") as info:
        unpack_archive(archive, dest, strip_components=0)
    assert not isinstance(info.value, ArchiveError)  # not the archive's fault
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["pkg", "pkg/mine.txt"]
    assert (dest / "pkg" / "mine.txt").read_text() == "user data"


def test_unpack_never_replaces_an_existing_file(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"x/new.txt": b"new", "x/keep.txt": b"from the archive"}))
    (tmp_path / "out" / "x").mkdir(parents=True)
    (tmp_path / "out" / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        unpack_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "x" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out" / "x" / "new.txt").exists()


def test_not_enough_free_space_is_refused_before_writing(server, tmp_path, monkeypatch):
    payload = _wav_like(4, 50_000)
    server.files["big.bin"] = payload
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        download_module.shutil, "disk_usage", lambda _: usage._replace(free=len(payload) - 1)
    )
    with pytest.raises(DataError, match="only .* free on the disk"):
        download_file(f"{server.url}/big.bin", tmp_path / "big.bin", progress=False)
    assert not list(tmp_path.iterdir())


# --- limits ------------------------------------------------------------------------------------


def _deflated_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_zip_bomb_is_refused_before_writing(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_deflated_zip({"a.txt": b"ok", "zeros.bin": bytes(8 << 20)}))
    assert archive.stat().st_size < 100_000  # 8 MiB in a few kB: about 1000 to 1
    with pytest.raises(ArchiveError, match="compressed .* to 1") as info:
        unpack_archive(archive, tmp_path / "out")
    assert "zeros.bin" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_total_size_and_entry_count_limits(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({f"{i}.bin": _wav_like(i, 1000) for i in range(6)}))
    with pytest.raises(ArchiveError, match="more than 5.0 kB"):
        unpack_archive(archive, tmp_path / "out", limits=UnpackLimits(max_total_bytes=5000))
    with pytest.raises(ArchiveError, match="6 entries, more than the limit of 5"):
        unpack_archive(
            archive, tmp_path / "out", limits=UnpackLimits(max_total_bytes=10**6, max_members=5)
        )
    assert not (tmp_path / "out").exists()
    assert unpack_archive(archive, tmp_path / "out", limits=UnpackLimits(6000, max_members=6)) == 6


def test_tar_size_limit_is_checked_on_the_headers(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_bytes({"p/a.bin": bytes(40_000), "p/b.bin": bytes(40_000)}))
    with pytest.raises(ArchiveError, match="more than 50.0 kB"):
        unpack_archive(archive, tmp_path / "out", limits=UnpackLimits(max_total_bytes=50_000))
    assert not (tmp_path / "out").exists()


def test_zip_header_that_understates_the_size_writes_no_more_and_leaves_nothing(tmp_path):
    data = _wav_like(5, 200_000)
    raw = bytearray(_deflated_zip({"a.bin": data}))
    claimed = 1000
    # The uncompressed size sits at offset 22 of the local header and 24 of the central one.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(signature) + offset
        assert int.from_bytes(raw[at : at + 4], "little") == len(data)
        raw[at : at + 4] = claimed.to_bytes(4, "little")
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="a.bin"):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_body_without_length_is_capped_by_the_expected_size(server, tmp_path):
    server.files["fsdd-master.zip"] = _wav_like(6, 400_000)
    server.send_length = False
    sources = _fsdd_source(size=10_000)  # accepts up to 4 x 10 kB
    with pytest.raises(DataError, match="sent more than 40.0 kB") as info:
        download_dataset("fsdd", tmp_path, base_url=server.url, sources=sources, progress=False)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())  # the partial file was removed


def test_announced_length_over_the_limit_is_refused_before_downloading(server, tmp_path):
    server.files["fsdd-master.zip"] = _wav_like(6, 400_000)
    sources = _fsdd_source(size=10_000)
    with pytest.raises(DataError, match="announces 400.0 kB, more than the 40.0 kB"):
        download_dataset("fsdd", tmp_path, base_url=server.url, sources=sources, progress=False)
    assert not list(tmp_path.iterdir())


def test_verified_archive_over_a_limit_is_kept(server, tmp_path):
    archive = _deflated_zip({"fsdd/recordings/zeros.wav": bytes(8 << 20)})
    server.files["fsdd-master.zip"] = archive
    sources = _fsdd_source(hashlib.md5(archive).hexdigest())
    with pytest.raises(ArchiveError, match="matches its published checksum and was kept"):
        download_dataset("fsdd", tmp_path, base_url=server.url, sources=sources, progress=False)
    assert (tmp_path / "fsdd-master.zip").read_bytes() == archive  # no 4.8 GB refetch loop
    assert not (tmp_path / "fsdd").exists()


def test_unverified_archive_over_a_limit_is_removed(server, tmp_path):
    server.files["fsdd-master.zip"] = _deflated_zip({"fsdd/recordings/z.wav": bytes(8 << 20)})
    with pytest.raises(ArchiveError, match="removed, run again"):
        download_dataset("fsdd", tmp_path, base_url=server.url, sources=_fsdd_source())
    assert not list(tmp_path.iterdir())


# --- resuming ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_resume", ["from-zero", "no-content-range"])
def test_resume_answered_with_other_bytes_restarts_from_zero(server, tmp_path, bad_resume):
    payload = _zip_bytes(FSDD_ENTRIES)
    server.files["fsdd-master.zip"] = payload
    server.bad_resume = bad_resume
    (tmp_path / "fsdd-master.zip.part").write_bytes(payload[:1000])  # an interrupted run
    download_dataset(
        "fsdd", tmp_path, base_url=server.url, sources=_fsdd_source(), keep_archives=True
    )
    # Appending would have made a corrupt archive that nothing (no checksum) would catch.
    assert (tmp_path / "fsdd-master.zip").read_bytes() == payload
    assert [r["range"] for r in server.requests] == ["bytes=1000-", None]
    marker = json.loads((tmp_path / "fsdd" / MARKER_NAME).read_text())
    assert marker["files"][0]["md5"] == hashlib.md5(payload).hexdigest()


def test_content_range_parsing():
    parse = download_module._content_range
    assert parse("bytes 100-199/200") == (100, 199, 200)
    assert parse("bytes 0-9/*") == (0, 9, None)
    for bad in (None, "", "bytes */200", "items 0-9/10", "bytes 9-0/10", "bytes 0-9/x"):
        assert parse(bad) is None


def test_206_that_disagrees_with_its_total_restarts(server, tmp_path, monkeypatch):
    payload = _wav_like(8, 20_000)
    server.files["f.bin"] = payload
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(payload[:500])
    real = download_module._content_range
    monkeypatch.setattr(
        download_module,
        "_content_range",
        lambda value: None if value and value.startswith("bytes 500-") else real(value),
    )
    download_file(f"{server.url}/f.bin", dest, progress=False)
    assert dest.read_bytes() == payload
    assert [r["range"] for r in server.requests] == ["bytes=500-", None]


# --- one-line network errors -------------------------------------------------------------------


def test_redirect_loop_is_one_line_naming_the_url(server, tmp_path):
    server.redirects["loop.zip"] = "/loop.zip"
    url = f"{server.url}/loop.zip"
    with pytest.raises(DataError, match="redirect") as info:
        download_file(url, tmp_path / "loop.zip", progress=False)
    assert "\n" not in str(info.value) and str(info.value).startswith(url)


@pytest.fixture
def silent_host():
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_silent_host_is_a_timeout_not_offline(silent_host, tmp_path):
    with pytest.raises(DataError, match="no answer from 127.0.0.1 within 1 s") as info:
        download_file(f"{silent_host}/x.zip", tmp_path / "x.zip", retries=0, timeout=1.0)
    assert "offline" not in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_dns_failure_suggests_being_offline(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = "http://mirror.example/x.zip"
    with pytest.raises(DataError, match="cannot resolve the host name mirror.example") as info:
        download_file(url, tmp_path / "x.zip", retries=0, progress=False)
    assert "are you offline?" in str(info.value) and url in str(info.value)


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


CLI_ERRORS = {
    "missing": "HTTP 404",
    "not-a-zip": "not a valid zip",
    "zip-bomb": "a zip bomb?",
    "redirect-loop": "redirect loop",
    "disk-full-download": "no space left",
    "disk-full-unpack": "no space left",
    "refused": "are you offline?",
    "silent": "no answer from 127.0.0.1 within 1 s",
    "to-is-a-file": "--to must be a folder",
    "bad-base-url": "not a valid download URL",
    "negative-retries": "--retries must be 0 or more",
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_errors_are_one_line(server, silent_host, tmp_path, capsys, full_disk, case):
    name = "free-spoken-digit-dataset-master.zip"
    base_url, to = server.url, tmp_path / "data"
    extra = []
    if case == "not-a-zip":
        server.files[name] = b"<html>rate limited</html>"
    elif case == "zip-bomb":
        server.files[name] = _deflated_zip({"r/recordings/0.wav": bytes(8 << 20)})
    elif case == "redirect-loop":
        server.redirects[name] = f"/{name}"
    elif case.startswith("disk-full"):
        server.files[name] = _zip_bytes(FSDD_ENTRIES)
        full_disk(5000, modes=("xb",) if case.endswith("unpack") else ("wb", "ab"))
    elif case == "refused":
        base_url = _refused_url()
    elif case == "silent":
        base_url = silent_host
    elif case == "to-is-a-file":
        to.write_text("not a folder")
    elif case == "bad-base-url":
        base_url = "localhost:1"
    elif case == "negative-retries":
        extra = ["--retries", "-1"]
    argv = ["download", "fsdd", "--to", str(to), "--base-url", base_url, "--quiet"]
    status = cli_main([*argv, "--retries", "0", "--timeout", "1", *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("wavemel: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert CLI_ERRORS[case] in err


@pytest.mark.parametrize(
    "url", ["localhost:8000/x.zip", "ftp://host/x.zip", "http://[::1/x", "http://h:port/x"]
)
def test_malformed_url_is_one_line_and_not_retried(url, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(download_module.time, "sleep", sleeps.append)
    with pytest.raises(DataError, match="not a valid download URL") as info:
        download_file(url, tmp_path / "x.zip", progress=False)
    assert str(info.value).startswith(url) and "\n" not in str(info.value)
    assert sleeps == []  # retrying cannot fix a URL


def test_limits_hold_while_writing_even_if_the_headers_passed(tmp_path, monkeypatch):
    # Stands for headers that lie in a way the header check cannot see: the bytes are counted.
    monkeypatch.setattr(download_module, "_check_headers", lambda members, limits: 0)
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({f"{i}.bin": _wav_like(i, 3000) for i in range(4)}))
    with pytest.raises(ArchiveError, match="unpacks to more than 5.0 kB"):
        unpack_archive(archive, tmp_path / "out", limits=UnpackLimits(max_total_bytes=5000))
    assert not (tmp_path / "out").exists()
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(_deflated_zip({"zeros.bin": bytes(8 << 20)}))
    with pytest.raises(ArchiveError, match="zeros.bin is compressed beyond the ratio limit"):
        unpack_archive(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_links_and_too_many_entries_are_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        link = tarfile.TarInfo("p/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    (tmp_path / "link.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(ArchiveError, match="unsafe entry p/passwd"):
        unpack_archive(tmp_path / "link.tar.gz", tmp_path / "out")
    (tmp_path / "many.tar.gz").write_bytes(_tar_bytes({f"p/{i}": b"x" for i in range(4)}))
    with pytest.raises(ArchiveError, match="more than 3 entries"):
        unpack_archive(tmp_path / "many.tar.gz", tmp_path / "out", limits=UnpackLimits(10**6, 3))
    assert not (tmp_path / "out").exists()


def test_stale_part_file_rejected_with_416_restarts_at_once(server, tmp_path):
    payload = _wav_like(11, 3000)
    server.files["s.bin"] = payload
    dest = tmp_path / "s.bin"
    dest.with_name("s.bin.part").write_bytes(_wav_like(12, 5000))  # longer: another file's bytes
    download_file(f"{server.url}/s.bin", dest, retries=0, progress=False)
    assert dest.read_bytes() == payload
    assert [r["range"] for r in server.requests] == ["bytes=4992-", None]
