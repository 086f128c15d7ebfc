"""``wavemel serve``'s HTTP API against a running uvicorn: answers, bad uploads, concurrency."""

from __future__ import annotations

import io
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

import httpx  # noqa: E402
from _serving import LABELS, RATE, LiveServer, make_run, write_clip  # noqa: E402

from wavemel.cli import main  # noqa: E402
from wavemel.infer import Tagger  # noqa: E402
from wavemel.serve import ClipBatcher, Limits, create_app  # noqa: E402
from wavemel.timeline import timeline  # noqa: E402

LIMITS = Limits(max_upload_bytes=200_000, max_seconds=5.0)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return Tagger.from_checkpoint(make_run(tmp_path_factory.mktemp("run")), device="cpu")


@pytest.fixture(scope="module")
def live(tagger):
    with LiveServer(create_app(tagger, limits=LIMITS, top_k=3)) as server:
        yield server


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return [write_clip(folder / f"clip{seed}.wav", 1.5 + 0.25 * seed, seed) for seed in range(8)]


def _expected(tagger, path, top_k=3):
    return [(label, pytest.approx(score, abs=1e-6)) for label, score in tagger.tag(path, top_k)]


def _tags(answer):
    return [(tag["label"], tag["score"]) for tag in answer["tags"]]


def test_multipart_and_raw_uploads_answer_the_taggers_tags(live, tagger, clips, tmp_path):
    with open(clips[0], "rb") as handle:
        reply = httpx.post(f"{live.url}/v1/tag", files={"file": ("dog.wav", handle, "audio/wav")})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert _tags(answer) == _expected(tagger, clips[0])
    assert answer["duration"] == pytest.approx(1.5)
    assert answer["model"] == "cnn-audio" and answer["file"] == "dog.wav"
    assert "timeline" not in answer

    flac = write_clip(tmp_path / "clip.flac", 2.0, 3, format="FLAC")
    raw = httpx.post(
        f"{live.url}/v1/tag",
        content=flac.read_bytes(),
        headers={"content-type": "audio/flac"},
    )
    assert raw.status_code == 200, raw.text
    assert _tags(raw.json()) == _expected(tagger, flac)


def test_timeline_query_adds_window_tracks_and_segments(live, tagger, clips):
    reply = httpx.post(f"{live.url}/v1/tag?timeline=1", content=clips[4].read_bytes())
    assert reply.status_code == 200, reply.text
    got = reply.json()["timeline"]
    want = timeline(tagger, clips[4])
    assert got["starts"] == pytest.approx(want.series.starts.tolist())
    assert got["ends"] == pytest.approx(want.series.ends.tolist())
    assert [t["label"] for t in got["tracks"]] == [LABELS[i] for i in want.top_labels(3)]
    best = want.top_labels(1)[0]
    assert got["tracks"][0]["scores"] == pytest.approx(want.series.values[:, best], abs=1e-5)
    assert len(got["segments"]) == len(want.segments)


def test_model_health_and_page(live):
    model = httpx.get(f"{live.url}/v1/model").json()
    assert model["labels"] == LABELS and model["sample_rate"] == RATE
    assert model["input_seconds"] == 1.0 and model["card"]["model"] == "cnn-audio"
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
    page = httpx.get(f"{live.url}/")
    assert page.status_code == 200 and 'id="file"' in page.text
    # No CDN: nothing on the page is fetched from another host.
    assert "http://" not in page.text and "https://" not in page.text


def _silence_wav(seconds):
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * RATE), dtype=np.float32), RATE, format="WAV")
    return buffer.getvalue()


BAD_UPLOADS = {
    "empty": (400, "empty upload", {"files": {"file": ("a.wav", b"", "audio/wav")}}),
    "undecodable": (
        422,
        "a.wav",
        {"files": {"file": ("a.wav", b"RIFF" + b"x" * 500, "audio/wav")}},
    ),
    "wrong type": (415, "not audio", {"files": {"file": ("notes.txt", b"hello", "text/plain")}}),
    "raw json": (415, "not audio", {"json": {"audio": [0.0, 1.0]}}),
    "too many bytes": (413, "limit", {"content": b"\0" * 300_000}),
    "too long": (413, "5 s limit", {"content": _silence_wav(6.0)}),
    "no file field": (400, "field 'file'", {"data": {"other": "x"}, "files": {"x": ("a", b"1")}}),
    "zero samples": (400, "no samples", {"content": _silence_wav(0.0)}),
}


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_bad_uploads_get_one_line_json_4xx_errors(live, case):
    status, words, request = BAD_UPLOADS[case]
    reply = httpx.post(f"{live.url}/v1/tag", **request)
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]
    assert words in message and "\n" not in message and "Traceback" not in message
    # The service is still answering afterwards.
    assert httpx.get(f"{live.url}/healthz").status_code == 200


def test_unknown_route_and_bad_query_are_json(live):
    assert httpx.get(f"{live.url}/nope").json() == {"error": "Not Found"}
    reply = httpx.post(f"{live.url}/v1/tag?timeline=maybe", content=b"x")
    assert reply.status_code == 422 and "timeline" in reply.json()["error"]


def test_concurrent_requests_each_get_their_own_clips_answer(live, tagger, clips):
    expected = {path.name: _expected(tagger, path) for path in clips}
    assert len({str(v) for v in expected.values()}) > 1  # clips tell replies apart

    def post(path):
        with httpx.Client(timeout=120) as client:
            reply = client.post(
                f"{live.url}/v1/tag", files={"file": (path.name, path.read_bytes())}
            )
        return path.name, reply.status_code, reply.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(post, clips * 3))
    assert len(replies) == 3 * len(clips)
    for name, status, answer in replies:
        assert status == 200, answer
        assert answer["file"] == name and _tags(answer) == expected[name]


def test_clips_queued_together_are_scored_as_one_group(tagger, clips):
    batcher = ClipBatcher(tagger, max_clips=4)
    waveforms = [np.random.default_rng(i).standard_normal(RATE * (i + 1)) for i in range(6)]
    futures = [batcher.submit(w.astype(np.float32)) for w in waveforms]
    batcher.start()
    try:
        results = [future.result(timeout=120) for future in futures]
    finally:
        batcher.close()
    assert batcher.group_sizes == [4, 2]
    for waveform, result in zip(waveforms, results):
        np.testing.assert_allclose(result.probabilities, tagger.predict_proba(waveform), atol=1e-6)


def test_a_crash_is_a_json_500_without_traceback(tagger, clips, monkeypatch):
    app = create_app(tagger)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with LiveServer(app) as server:
        monkeypatch.setattr(app.state.batcher.tagger, "predict_many", broken)
        reply = httpx.post(f"{server.url}/v1/tag", content=clips[0].read_bytes())
    assert reply.status_code == 500
    assert reply.json() == {"error": "internal error (RuntimeError); see the server log"}
    assert "Traceback" not in reply.text


def test_cli_refuses_bad_options_in_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["serve", str(run), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be positive" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "wavemel: error:" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert main(["serve", str(run), "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen" in err and len(err.strip().splitlines()) == 1


def test_serve_command_starts_and_answers(tmp_path):
    run = make_run(tmp_path / "run")
    command = [sys.executable, "-m", "wavemel", "serve", str(run), "--port", "0", "--device", "cpu"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # Bounded wait for the "serving ... on URL" line (the model loads first).
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready, "wavemel serve printed nothing"
        line = child.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1].rstrip("/")
        assert url.startswith("http://127.0.0.1:"), line
        reply = None
        for _ in range(100):
            try:
                reply = httpx.get(f"{url}/v1/model", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert reply is not None and reply.json()["labels"] == LABELS
    finally:
        child.terminate()
        child.wait(timeout=60)
