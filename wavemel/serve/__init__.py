"""``wavemel serve``: an HTTP tagging service with a web page (FastAPI + uvicorn).

* :mod:`wavemel.serve.app`: :func:`create_app` (the routes, upload limits, JSON errors);
* :mod:`wavemel.serve.batching`: :class:`ClipBatcher`, the one worker that scores every
  request's windows, several requests' clips in shared batches;
* ``static/index.html``: the page at ``/`` (inline HTML, CSS and JavaScript: no build step, no
  CDN).

FastAPI, uvicorn and python-multipart are the ``serve`` extra: only this package imports them.
"""

from wavemel.serve.app import Limits, create_app
from wavemel.serve.batching import ClipBatcher

__all__ = ["ClipBatcher", "Limits", "create_app"]
