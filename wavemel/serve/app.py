"""The HTTP service: ``POST /v1/tag``, ``GET /v1/model``, ``GET /healthz`` and the page at ``/``.

An upload is a multipart form with the audio in the field ``file`` or a raw request body, in any
format libsndfile reads. It is refused with a one-line JSON error (``{"error": ...}``) and a 4xx
status before any model work when it is empty (400), too large in bytes or seconds (413), not
declared as audio (415) or not decodable (422). Anything unexpected is a 500 with a JSON error and
no traceback (the traceback goes to the server log).

The body is read in chunks and the read stops at the byte limit, whatever ``Content-Length``
claims; the duration is checked from the file header before the samples are decoded.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from wavemel.audio import audio_info, load_audio
from wavemel.errors import AudioError
from wavemel.infer import Tagger
from wavemel.serve.batching import ClipBatcher

__all__ = ["Limits", "create_app"]

_log = logging.getLogger("wavemel.serve")

# Multipart framing (boundaries, part headers) on top of the audio itself.
_MULTIPART_SLACK = 64 * 1024
# Declared types that cannot be audio; anything else is left to the decoder to judge (browsers
# and curl label audio inconsistently: application/octet-stream, video/webm, form-urlencoded).
_NOT_AUDIO = ("text/", "image/", "application/json", "application/pdf", "application/xml")
# Metadata fields shown as the model card (the rest is bookkeeping).
_CARD_FIELDS = ("model", "model_config", "frontend", "metrics", "train_config")


@dataclass(frozen=True)
class Limits:
    """What one upload may be.

    Attributes:
        max_upload_bytes: Largest accepted body (the audio file, or the whole raw body).
        max_seconds: Longest accepted clip duration.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_seconds: float = 600.0


class UploadRejected(Exception):
    """An upload the service refuses: becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, read until ``limit`` bytes at most."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadRejected(413, f"upload of {int(declared)} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadRejected(413, f"upload is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_type(content_type: str | None, name: str) -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind.startswith(_NOT_AUDIO):
        raise UploadRejected(415, f"{name}: type {kind} is not audio; send an audio file")


async def _upload(request: Request, limits: Limits) -> tuple[bytes, str]:
    """``(audio bytes, name)`` from a multipart field ``file`` or from the raw body."""
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    body = await _read_body(
        request, limits.max_upload_bytes + (_MULTIPART_SLACK if multipart else 0)
    )
    if not multipart:
        _check_type(content_type, "upload")
        return body, "upload"

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's body
        raise UploadRejected(400, f"malformed multipart body ({exc})") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise UploadRejected(400, "multipart upload has no file in the field 'file'")
    name = Path(upload.filename or "upload").name or "upload"
    _check_type(upload.content_type, name)
    data = await upload.read()
    if len(data) > limits.max_upload_bytes:
        raise UploadRejected(
            413, f"{name}: {len(data)} bytes, over the {limits.max_upload_bytes}-byte limit"
        )
    return data, name


def _decode(data: bytes, name: str, sample_rate: int, limits: Limits):
    """Decode uploaded bytes to a mono waveform at ``sample_rate``; returns ``(waveform, s)``."""
    if not data:
        raise UploadRejected(400, f"{name}: empty upload (0 bytes)")
    with tempfile.TemporaryDirectory(prefix="wavemel-serve-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            info = audio_info(path)
            if info.duration > limits.max_seconds:
                raise UploadRejected(
                    413, f"{name}: {info.duration:.1f} s, over the {limits.max_seconds:g} s limit"
                )
            waveform = load_audio(path, sample_rate)
        except AudioError as exc:
            # The message names the temporary copy; the client knows the upload by its name.
            reason = str(exc).replace(str(path), name)
            raise UploadRejected(422, reason) from None
    if waveform.size == 0:
        raise UploadRejected(400, f"{name}: the audio has no samples")
    return waveform, info.duration


def _model_name(tagger: Tagger) -> str:
    return str(tagger.meta.get("model", type(tagger.model).__name__))


def _model_payload(tagger: Tagger) -> dict:
    return {
        "model": _model_name(tagger),
        "labels": tagger.labels,
        "sample_rate": tagger.sample_rate,
        "input_seconds": tagger.input_samples / tagger.sample_rate,
        "hop_seconds": tagger.hop_samples / tagger.sample_rate,
        "card": {key: tagger.meta[key] for key in _CARD_FIELDS if key in tagger.meta},
    }


def _index_html() -> str:
    return resources.files("wavemel.serve").joinpath("static/index.html").read_text("utf-8")


def create_app(
    tagger: Tagger, *, limits: Limits = Limits(), top_k: int = 5, max_clips: int = 16
) -> FastAPI:
    """The service around one loaded tagger (the model is loaded once, by the caller).

    Args:
        tagger: The model and its windowing.
        limits: Upload size and duration limits.
        top_k: Tags per answer.
        max_clips: Most clips the scoring worker groups into one pass.

    Returns:
        The ASGI app; its lifespan starts and stops the scoring worker.
    """
    batcher = ClipBatcher(tagger, max_clips=max_clips)
    page = _index_html()
    top_k = min(top_k, len(tagger.labels))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.close()

    app = FastAPI(title="wavemel", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, exc: UploadRejected) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> dict:
        return _model_payload(tagger)

    @app.post("/v1/tag")
    async def tag(request: Request, timeline: bool = False) -> dict:
        data, name = await _upload(request, limits)
        waveform, duration = await run_in_threadpool(
            _decode, data, name, tagger.sample_rate, limits
        )
        scored = await batcher.score(waveform, with_timeline=timeline)
        answer = {
            "model": _model_name(tagger),
            "file": name,
            "duration": duration,
            "tags": [
                {"label": label, "score": score}
                for label, score in tagger.top_k(scored.probabilities, top_k)
            ],
        }
        if scored.timeline is not None:
            answer["timeline"] = scored.timeline.to_json(top_k=min(top_k, 5))
        return answer

    return app
