"""The web page in a real browser: Debian's chromium, headless, driven by Playwright.

Playwright never downloads a browser here: it drives /usr/bin/chromium (``make
browser`` installs it). Without it these tests fail, saying so; they never skip.
Each test saves a screenshot under tests/screenshots/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, Service
from tests.support.http import (
    CHROMIUM,
    CHROMIUM_ARGS,
    GRACE_HOPPER,
    paused,
    video_file,
    wav_bytes,
    worker_pid,
)

SHOTS = ROOT / "tests" / "screenshots"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"no browser for the page tests: {CHROMIUM} is missing. Install Debian's chromium "
            "with `make browser` (apt-get install chromium); Playwright drives it and never "
            "downloads one."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class Page:
    """A page of the dcf site, with the browser's errors collected."""

    def __init__(self, page, base: str, name: str) -> None:
        self.page, self.base, self.name = page, base, name
        self.errors: list[str] = []
        self.calls: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        # Errors the page made; a refused call's status is logged by the browser too,
        # and that is expected in the error tests.
        page.on("console", self._console)
        page.on("request", self._request)
        page.set_default_timeout(TIMEOUT_MS)

    def _console(self, message) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def _request(self, request) -> None:
        if "/v1/functions/" in request.url:
            self.calls.append(request.url)

    def open(self, function: str | None = None) -> None:
        self.page.goto(self.base + "/" + (f"?function={function}" if function else ""))
        self.page.wait_for_selector("#functions input[name=function]")

    def choose(self, function: str) -> None:
        self.page.click(f"label[for='fn-{function}']")

    def run_and_wait(self, state: str = "done") -> None:
        self.page.click("#run")
        self.page.wait_for_selector(f"#output[data-state={state}]")

    def shot(self, name: str | None = None) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name or self.name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def site(browser, dcf: Service, request) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = Page(context.new_page(), dcf.http_url, request.node.name)
    try:
        yield page
        assert not page.errors, page.errors
    finally:
        page.shot(f"{request.node.name}-end")
        context.close()


def test_hello_dcf_shows_the_text(site):
    site.open()
    site.choose("hello-dcf")
    site.page.fill("#text", "Hello, DCF!\nThe page sends what you type.")
    site.run_and_wait()
    assert site.page.inner_text("#text-answer") == "Hello, DCF!\nThe page sends what you type."
    site.shot("hello-dcf")


def test_a_dropped_file_is_the_input(site):
    site.open("hello-dcf")
    dropped = site.page.evaluate_handle(
        "() => { const data = new DataTransfer();"
        " data.items.add(new File(['dropped, not picked'], 'drop.txt', {type: 'text/plain'}));"
        " return data; }"
    )
    site.page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    assert "drop.txt" in site.page.inner_text("#file-name")
    site.run_and_wait()
    assert site.page.inner_text("#text-answer") == "dropped, not picked"


def test_ssd_draws_labelled_boxes_and_filters_without_a_new_call(site):
    site.open("ssd")
    site.page.set_input_files("#file", str(GRACE_HOPPER))
    site.run_and_wait()
    assert len(site.calls) == 1 and "threshold=0.2" in site.calls[0]
    canvas = site.page.locator("#canvas")
    assert "person" in canvas.get_attribute("data-labels").split(",")
    assert site.page.locator("#boxes li[data-label=person]").count() >= 1
    # The picture is drawn: the canvas is not blank where the photo is.
    assert site.page.evaluate(
        "() => { const c = document.querySelector('#canvas');"
        " const d = c.getContext('2d').getImageData(c.width / 2, c.height / 3, 1, 1).data;"
        " return d[3] > 0 && (d[0] + d[1] + d[2]) > 0; }"
    )
    site.shot("ssd")

    # The slider, by keyboard: at 100% no box is left; no new call is made.
    site.page.focus("#confidence")
    site.page.keyboard.press("End")
    assert canvas.get_attribute("data-drawn") == "0"
    assert site.page.locator("#boxes li").count() == 0
    site.page.keyboard.press("Home")
    everything = int(canvas.get_attribute("data-drawn"))
    assert everything >= 2
    # A label toggled off leaves the others.
    site.page.click("label[for=label-person]")
    assert site.page.locator("#boxes li[data-label=person]").count() == 0
    assert int(canvas.get_attribute("data-drawn")) >= 1
    assert "person" not in canvas.get_attribute("data-labels").split(",")
    assert len(site.calls) == 1


def test_send_wav_shows_the_png_with_a_download_link(site, tmp_path):
    audio = tmp_path / "chirp.wav"
    audio.write_bytes(wav_bytes(2.0))
    site.open("send-wav")
    site.page.set_input_files("#file", str(audio))
    site.run_and_wait()
    assert site.page.evaluate("() => document.querySelector('#answer-image').naturalWidth") > 100
    link = site.page.locator("#output a[download]")
    assert link.get_attribute("download") == "send-wav.png"
    assert link.get_attribute("href").startswith("blob:")
    assert site.page.get_attribute("#upload", "value") == "100"
    site.shot("send-wav")


def test_ssd_video_rows_appear_one_by_one(site, dcf, tmp_path):
    """The first row is on the page while the answer is still being made: with the
    worker held stopped once it shows, the call is still running and rows are missing."""
    clip = video_file(tmp_path / "clip.mp4", frames=24)
    worker = worker_pid(dcf.log, "ssd-video")
    site.open("ssd-video")
    site.page.click("#params-box summary")
    site.page.fill("#param-max_frames", "24")
    site.page.set_input_files("#file", str(clip))
    site.page.click("#run")
    site.page.wait_for_selector("#frames tbody tr")
    with paused(worker):
        assert site.page.get_attribute("#output", "data-state") == "running"
        assert site.page.locator("#frames tbody tr").count() < 24
    site.page.wait_for_selector("#output[data-state=done]")
    rows = site.page.locator("#frames tbody tr")
    assert rows.count() == 24
    arrivals = [
        int(t)
        for t in site.page.eval_on_selector_all(
            "#frames tbody tr", "rows => rows.map(r => r.dataset.at)"
        )
    ]
    assert arrivals == sorted(arrivals), arrivals
    assert site.page.locator("#chart .bar").count() == 24
    assert "person" in site.page.inner_text("#frames")
    assert site.page.get_attribute("#video-summary", "data-final") == "true"
    site.shot("ssd-video")


def test_unknown_function_shows_not_found(site):
    site.open("no-such-function")
    site.page.fill("#text", "anyone there?")
    site.run_and_wait("error")
    error = site.page.locator("#output .error")
    assert error.get_attribute("data-code") == "NOT_FOUND"
    assert "no-such-function" in error.inner_text() and "404" in error.inner_text()


def test_bad_file_shows_invalid_argument(site, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a picture")
    site.open("ssd")
    site.page.set_input_files("#file", str(notes))
    site.run_and_wait("error")
    assert site.page.get_attribute("#output .error", "data-code") == "INVALID_ARGUMENT"
    assert "400" in site.page.inner_text("#output .error")


def test_keyboard_alone_calls_a_function(site):
    site.open("hello-dcf")
    site.page.keyboard.press("Tab")
    assert site.page.evaluate("document.activeElement.value") == "hello-dcf"
    site.page.keyboard.press("Tab")
    assert site.page.evaluate("document.activeElement.id") == "file"
    site.page.keyboard.press("Tab")
    assert site.page.evaluate("document.activeElement.id") == "text"
    site.page.keyboard.type("typed, not clicked")
    for _ in range(10):
        site.page.keyboard.press("Tab")
        if site.page.evaluate("document.activeElement.id") == "run":
            break
    assert site.page.evaluate("document.activeElement.id") == "run"
    # The focused control shows a focus ring.
    assert site.page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    site.page.keyboard.press("Enter")
    site.page.wait_for_selector("#output[data-state=done]")
    assert site.page.inner_text("#text-answer") == "typed, not clicked"


def test_phone_width_has_no_sideways_scrolling(browser, dcf):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    try:
        site = Page(context.new_page(), dcf.http_url, "phone")
        site.open("ssd")
        site.page.set_input_files("#file", str(GRACE_HOPPER))
        site.run_and_wait()
        width = site.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen"
        box = site.page.locator("#canvas").bounding_box()
        assert box["width"] <= 390
        site.shot("phone")
        assert not site.errors, site.errors
    finally:
        context.close()
