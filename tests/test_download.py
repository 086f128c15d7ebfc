"""wavemel.data.download against a local HTTP server that serves archives made in the test."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wavemel.cli import main as cli_main
from wavemel.data.download import (
    MARKER_NAME,
    RemoteFile,
    Source,
    download_dataset,
    download_file,
    unpack_archive,
    zenodo_checksums,
)
from wavemel.errors import DataError


class _Server:
    """Serves ``files`` (name -> bytes); honours Range; can cut the first response short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.cut_first_after: int | None = None  # bytes sent before dropping the connection
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/").split("?")[0]
                server.requests.append({"path": name, "range": self.headers.get("Range")})
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
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.cut_first_after is not None and len(server.requests) == 1:
                    # Announce the full length, send part of it, then hang up.
                    self.wfile.write(payload[: server.cut_first_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

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


def _fsdd_source(md5: str | None = None) -> dict[str, Source]:
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
