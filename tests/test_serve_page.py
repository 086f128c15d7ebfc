"""The page at ``/`` in a real headless Chromium (Debian's package, driven by Playwright).

CI installs chromium (``.ci/run``) and sets ``WAVEMEL_REQUIRE_BROWSER`` so that the test cannot
skip there; elsewhere it skips when chromium is absent.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")

from _serving import LiveServer, make_run, write_clip  # noqa: E402

from wavemel.infer import Tagger  # noqa: E402
from wavemel.serve import create_app  # noqa: E402

CHROMIUM = os.environ.get("WAVEMEL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    # .ci/run sets WAVEMEL_REQUIRE_BROWSER: there a missing browser is a failure, not a skip.
    if os.environ.get("WAVEMEL_REQUIRE_BROWSER"):
        raise RuntimeError(f"WAVEMEL_REQUIRE_BROWSER is set but there is no chromium at {CHROMIUM}")
    pytest.skip(
        f"no chromium at {CHROMIUM} (apt-get install chromium, or set WAVEMEL_CHROMIUM)",
        allow_module_level=True,
    )

# Pixels of the timeline canvas that are not background white (a drawn plot has thousands).
_INKED = """(canvas) => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let inked = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] < 600) inked++;
  return inked;
}"""


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page")
    tagger = Tagger.from_checkpoint(make_run(folder / "run"), device="cpu")
    with LiveServer(create_app(tagger, top_k=3)) as server:
        with sync_api.sync_playwright() as playwright:
            # A fake microphone (a beeping tone) lets the recording path run headless.
            flags = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", *flags]
            )
            try:
                yield server, tagger, browser, folder
            finally:
                browser.close()


def test_uploaded_clip_shows_its_tags_and_the_timeline_plot(setting):
    server, tagger, browser, folder = setting
    clip = write_clip(folder / "dog.wav", 3.0, 2)
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#model:has-text('cnn-audio')")
    page.set_input_files("#file", str(clip))
    page.wait_for_selector("#tags li", timeout=60_000)
    shown = page.locator("#tags .label").all_inner_texts()
    assert shown == [label for label, _ in tagger.tag(clip, 3)]
    scores = page.locator("#tags .score").all_inner_texts()
    assert scores == [f"{score:.3f}" for _, score in tagger.tag(clip, 3)]
    canvas = page.locator("#timeline")
    assert canvas.is_visible() and canvas.get_attribute("data-tracks") == "3"
    assert canvas.evaluate(_INKED) > 1000
    assert page.locator("#error").inner_text() == ""
    page.close()


def test_a_bad_file_shows_the_servers_error(setting):
    server, _, browser, folder = setting
    bad = folder / "broken.wav"
    bad.write_bytes(b"RIFF" + b"\x00" * 200)
    page = browser.new_page()
    page.goto(server.url + "/")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:has-text('error 422')", timeout=60_000)
    assert "broken.wav" in page.locator("#error").inner_text()
    assert page.locator("#tags li").count() == 0
    page.close()


def test_a_recording_is_encoded_as_wav_and_tagged(setting):
    server, _, browser, _ = setting
    page = browser.new_page()
    page.goto(server.url + "/")
    page.click("#record")
    page.wait_for_selector("#record:has-text('Stop')")
    page.wait_for_timeout(1500)  # about 1.5 s of the fake microphone's tone
    page.click("#record")
    page.wait_for_selector("#tags li", timeout=60_000)
    status = page.locator("#status").inner_text()
    assert status.startswith("recording.wav: ") and page.locator("#tags li").count() == 3
    assert float(status.split(": ")[1].split(" s")[0]) > 0.5
    assert page.locator("#error").inner_text() == ""
    page.close()
