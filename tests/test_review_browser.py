"""The review page in a real browser (Debian's chromium driven by Playwright, headless) against
a real uvicorn hub, with results that real devices analysed and synced over HTTP: log in, open
the urgent unreviewed study, toggle the heatmap, change window/level, zoom, send a verdict from
the keyboard; then the device pulls the verdict and holds it.

Screenshots of the worklist and the study view are kept with the test's files; with
EDGE_UPDATE_SCREENSHOTS=1 they also replace docs/screenshots/review-*.png (kept under 200 KB).
The page weights (bytes on the wire) and the study's load time over an emulated 1 Mbit/s link
are written to page-weight.json beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import load_settings
from edge.hub import accounts, db, devices, reviews
from edge.hub.app import create_app
from edge.store import Store
from edge.sync.client import SyncClient
from edge.sync.credential import enroll
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.hubfixtures import (  # noqa: F401 - postgres_url is a fixture
    REVIEW_PASSWORD,
    LiveHub,
    device_results,
    fill_login,
    postgres_url,
    reset,
)

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
MAX_SCREENSHOT_BYTES = 200_000
# Read at import: the suite's autouse fixture clears every EDGE_* variable before each test.
UPDATE_SCREENSHOTS = os.environ.get("EDGE_UPDATE_SCREENSHOTS") == "1"
# The trial's link: 1 Mbit/s down, 300 ms latency (CDP Network.emulateNetworkConditions).
ONE_MBIT = {"offline": False, "latency": 300, "downloadThroughput": 125_000, "uploadThroughput": 62_500}
WORKLIST_BUDGET_S = 1.5  # the worklist usable (rows listed, keys live) over that link, cold cache
STUDY_BUDGET_S = 2.5  # a study's image on screen (and the verdict open) over that link

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


def _browser(playwright: Any) -> Any:
    """Debian's chromium, never a downloaded one; in CI a missing browser fails the run."""
    try:
        return playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    except Exception as error:  # noqa: BLE001 - any launch failure means the same thing here
        reason = f"chromium cannot start from {CHROMIUM} (apt-get install chromium): {error}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = db.make_engine(url)
    reset(engine)
    engine.dispose()
    return url


class Weights:
    """Bytes on the wire (headers and encoded bodies) per navigation, from Playwright's sizes."""

    def __init__(self, page: Any) -> None:
        self.requests: list[Any] = []
        page.on("requestfinished", self._finished)

    def _finished(self, request: Any) -> None:
        self.requests.append(request)

    def take(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for request in self.requests:
            sizes = request.sizes()
            kind = request.resource_type
            out[kind] = out.get(kind, 0) + sizes["responseBodySize"] + sizes["responseHeadersSize"]
        self.requests.clear()
        out["total"] = sum(out.values())
        return out


def until(condition: Any, timeout: float = 10.0) -> None:
    """Poll from Python: the page's CSP forbids the eval that page.wait_for_function uses."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the page did not get there in time")
        time.sleep(0.05)


def since_navigation(page: Any, mark: str) -> float:
    """Seconds from the navigation's start to the page script's mark, on the browser's own clock
    (Playwright's round trips to Python are not the reader's wait)."""
    return round(page.evaluate(f"performance.getEntriesByName('{mark}')[0].startTime") / 1000, 2)


def _shrink_into(source: Path, target: Path) -> None:
    """Copy a screenshot, re-encoded as a 256-colour PNG if it is over the size limit."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    if source.stat().st_size <= MAX_SCREENSHOT_BYTES:
        shutil.copyfile(source, target)
        return
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
            target, optimize=True
        )
    assert target.stat().st_size <= MAX_SCREENSHOT_BYTES, (
        f"{target} is still over {MAX_SCREENSHOT_BYTES} bytes"
    )


@pytest.fixture
def world(database: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A live hub, two devices that analysed and synced over HTTP, and one reader."""
    settings = load_settings(data_dir=tmp_path / "hub-host", hub={"database_url": database})
    engine = db.make_engine(database)
    samples = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))
    demo = sorted((MODELS / DEFAULT_MODEL / "samples" / "demo").glob("*.dcm"))
    with LiveHub(create_app(settings, engine)) as live, httpx.Client(timeout=30) as http:
        xray = load_settings(
            data_dir=tmp_path / "xray-room",
            site="district-hospital-3",
            models={"dir": MODELS},
            sync={"images": "full"},
        )
        xray_credential = enroll(
            xray, live.url, devices.create_enroll_code(engine, "north"), "xray-room-1", http
        )
        # demo-07 first (pneumonia on the model's validation labels): the urgent one read below.
        xray_inputs = [demo[2], demo[0], demo[3], *samples[10:12], *samples[:2]]
        results = device_results(xray, http, xray_credential, xray_inputs, urgent=1)
        laptop = load_settings(
            data_dir=tmp_path / "laptop",
            site="health-centre-12",
            models={"dir": MODELS},
            sync={"images": "thumbnails"},
        )
        laptop_credential = enroll(
            laptop, live.url, devices.create_enroll_code(engine, "north"), "clinic-laptop", http
        )
        others = device_results(laptop, http, laptop_credential, [*samples[2:5], *samples[12:14]])
        reviews.add_review(engine, others[-1], "agree", finding="normal", reviewer="dr-okafor")
        accounts.create_user(engine, "dr-mbeki", REVIEW_PASSWORD, "specialist", ("north",))
        yield {
            "live": live,
            "http": http,
            "engine": engine,
            "device": xray,
            "credential": xray_credential,
            "urgent": results[0],
        }
    engine.dispose()


def test_a_specialist_reads_and_the_clinic_gets_the_verdict(world: dict[str, Any], tmp_path: Path) -> None:
    live = world["live"]
    problems: list[str] = []
    report: dict[str, Any] = {}
    with playwright_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        weights = Weights(page)

        page.goto(live.url + "/")  # the bare host name leads to the login form
        assert "/review/login" in page.url
        page.fill("#name", "dr-mbeki")
        page.fill("#password", REVIEW_PASSWORD)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#worklist")
        weights.take()  # the login form and the redirect
        page.reload()
        page.wait_for_selector("#worklist tbody tr.selected")
        weights.take()
        page.screenshot(path=str(tmp_path / "review-worklist.png"))
        first = page.locator("#worklist tbody tr").first
        assert "urgent" in (first.get_attribute("class") or "")
        assert "unreviewed" in (first.get_attribute("class") or "")

        page.keyboard.press("Enter")  # the selected (top) row: urgent and unreviewed
        page.wait_for_url(f"**/review/studies/{world['urgent']}?upto=*")  # the list pinned
        viewer = page.locator("#viewer")
        page.wait_for_selector("#viewer[data-loaded]")
        weights.take()
        assert page.locator("#reviews").inner_text() == "None yet."

        # The heatmap: off when the study opens (no anchoring), on and off from the keyboard,
        # with its legend; opacity by key and by slider.
        assert viewer.get_attribute("data-heat") == "off"
        assert page.locator("#heat-canvas").is_hidden()
        assert page.locator("#heat-legend").is_hidden()
        page.keyboard.press("h")
        page.wait_for_selector("#viewer[data-layer-loaded='heat']")
        assert viewer.get_attribute("data-heat") == "on"
        assert page.locator("#heat-canvas").is_visible()
        assert "not a finding" in page.locator("#heat-legend").inner_text()
        page.keyboard.press("h")
        assert page.locator("#heat-canvas").is_hidden()
        page.keyboard.press("h")
        assert page.locator("#heat-canvas").is_visible()
        page.keyboard.press("]")
        assert viewer.get_attribute("data-opacity") == "70"
        page.locator("#heat-opacity").fill("40")
        assert page.evaluate("getComputedStyle(document.getElementById('heat-canvas')).opacity") == "0.4"

        # Window/level changes the pixels drawn, by slider, by right-drag and by inverting.
        mean = (  # the mean grey drawn on the image canvas
            "(() => { const c = document.getElementById('image-canvas');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4); })()"
        )
        original = page.evaluate(mean)
        page.locator("#level").fill("60")
        expect(viewer).to_have_attribute("data-level", "60")
        brighter = page.evaluate(mean)
        assert brighter > original + 20  # a lower level shows the image brighter
        page.locator("#window").fill("120")
        expect(viewer).to_have_attribute("data-window", "120")
        box = page.locator("#stage").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + 200, box["y"] + 200)
        page.mouse.down(button="right")
        page.mouse.move(box["x"] + 260, box["y"] + 230, steps=5)
        page.mouse.up(button="right")
        until(lambda: float(viewer.get_attribute("data-window") or 0) > 150)
        page.wait_for_timeout(100)  # the drawing follows on the next animation frame
        upright = page.evaluate(mean)
        page.keyboard.press("i")
        expect(viewer).to_have_attribute("data-invert", "1")
        page.wait_for_timeout(100)
        assert abs(page.evaluate(mean) + upright - 255) < 2  # inverted: every grey mirrored
        page.keyboard.press("r")
        expect(viewer).to_have_attribute("data-window", "256")
        assert abs(page.evaluate(mean) - original) < 2  # reset: the image as sent

        # Zoom with the wheel and back.
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -400)
        until(lambda: float(viewer.get_attribute("data-scale") or 0) > 1.5)
        page.keyboard.press("r")
        page.screenshot(path=str(tmp_path / "review-study.png"))

        # Over an emulated 1 Mbit/s link (300 ms latency), with a cold cache: how long until the
        # worklist is usable and until a study's image is on screen, and how many bytes that took.
        cold = browser.new_context(viewport={"width": 1280, "height": 800})
        cold.add_cookies(context.cookies())
        slow = cold.new_page()
        cdp = cold.new_cdp_session(slow)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", ONE_MBIT)
        slow_weights = Weights(slow)
        slow.goto(live.url + "/review/", wait_until="domcontentloaded")
        slow.wait_for_selector("#worklist tbody tr.selected")
        report["worklist_seconds_at_1_mbit"] = since_navigation(slow, "edge:worklist-ready")
        slow.wait_for_load_state("load")  # the thumbnails (lazy) too, for the byte count
        report["worklist_bytes_cold"] = slow_weights.take()  # the page, its CSS, script, thumbnails
        slow.goto(page.url, wait_until="commit")
        slow.wait_for_selector("#viewer[data-loaded]", timeout=30_000)
        report["study_seconds_at_1_mbit"] = since_navigation(slow, "edge:image-shown")
        assert slow.locator("#verdict-agree").is_enabled()  # the verdict opened with the image
        slow.wait_for_selector("#viewer[data-layer-loaded='heat']", timeout=30_000)
        report["study_bytes"] = slow_weights.take()  # the page, the image and the heat layer
        cold.close()

        # The verdict, from the keyboard only: d (disagree), n (note), Esc, Enter.
        page.keyboard.press("d")
        assert page.locator("#verdict-disagree").is_checked()
        model_finding = page.locator("#model-finding").inner_text()
        suggested = page.locator("#finding").input_value()
        assert suggested
        assert suggested != model_finding
        page.keyboard.press("n")
        page.keyboard.type("Please repeat the film: rotated.")
        page.keyboard.press("Escape")
        page.keyboard.press("Enter")
        page.wait_for_url("**/review/studies/*saved=*")
        assert world["urgent"] not in page.url.split("?")[0]  # on to the next unreviewed study
        assert "Verdict saved" in page.locator(".studybar").inner_text()
        # Said by screen readers: the words go into the page's live region once it is up.
        expect(page.locator("#announcer")).to_contain_text("Verdict saved")
        page.wait_for_selector("#viewer[data-loaded]")
        page.click("#just-read")  # back to the one just read: its review is listed
        page.wait_for_selector("#reviews li")
        assert "disagree" in page.locator("#reviews").inner_text()
        browser.close()

    assert problems == []  # no script errors, nothing the content security policy blocked

    # The clinic's device pulls and now holds the verdict.
    device = world["device"]
    with Store(device.data_dir) as store:
        pulled = SyncClient(device, store, world["http"], world["credential"]).pull_reviews()
        held = store.db.execute("SELECT * FROM reviews WHERE result_id = ?", [world["urgent"]]).fetchone()
    assert pulled == 1
    assert (held["verdict"], held["finding"], held["note"]) == (
        "disagree",
        suggested,
        "Please repeat the film: rotated.",
    )
    assert held["reviewer_role"] == "specialist"

    (tmp_path / "page-weight.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    assert report["worklist_bytes_cold"]["total"] < 60_000
    assert report["study_bytes"]["total"] < 200_000
    # One cold load each, on shared CPUs: a gross regression fails here; the budgets themselves
    # are asserted on the best of three cold loads (tests/test_review_reading.py).
    assert report["worklist_seconds_at_1_mbit"] <= 2 * WORKLIST_BUDGET_S
    assert report["study_seconds_at_1_mbit"] <= 2 * STUDY_BUDGET_S
    if UPDATE_SCREENSHOTS:
        for name in ("review-worklist.png", "review-study.png"):
            _shrink_into(tmp_path / name, SCREENSHOTS / name)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_keyboard_and_a_lost_session_never_cost_a_verdict(world: dict[str, Any]) -> None:
    """Found by an accessibility audit (axe-core and the keyboard): arrows on a focused verdict
    left the study; Enter after a tool pressed from the keyboard sent the verdict; a verdict sent
    after the session ended was a plain 401 and lost with its note. Now the arrows stay with the
    radios, Enter stays with the focused tool, and the unsent verdict is offered again on its
    study after logging in again, until the hub has saved it."""
    live, engine = world["live"], world["engine"]
    problems: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.on("pageerror", lambda error: problems.append(str(error)))
        fill_login(page, "dr-mbeki", live.url)
        page.wait_for_selector("#worklist tbody tr.selected")
        page.focus("a.skip[href='#first-study']")  # past the header and the filters at once
        page.keyboard.press("Enter")
        expect(page.locator("#first-study")).to_be_focused()
        page.keyboard.press("j")  # the selection moves, is marked current and has the focus
        selected = page.locator("#worklist tbody tr.selected")
        assert selected.get_attribute("aria-current") == "true"
        assert page.evaluate("document.activeElement.closest('tr.selected') !== null")
        page.keyboard.press("k")
        page.keyboard.press("o")
        page.wait_for_selector("#viewer[data-loaded]")
        study = page.url

        page.focus("#verdict-agree")
        page.keyboard.press("Space")
        page.keyboard.press("ArrowRight")  # the next verdict, not the next study
        assert page.url == study
        assert page.locator("#verdict-disagree").is_checked()

        page.focus("#zoom-in")
        page.keyboard.press("Enter")
        page.keyboard.press("Enter")  # the tool again, not the verdict
        assert page.url == study
        assert page.evaluate("document.activeElement.id") == "zoom-in"

        page.fill("#note", "Lateral view needed.")
        with engine.begin() as conn:  # the session ends (2 h idle, a restart): every one goes
            conn.execute(db.sessions.delete())
        page.click("#send")
        page.wait_for_url("**/review/login?*expired=1*")
        assert "session ended" in page.locator(".error").inner_text()
        fill_login(page, "dr-mbeki")
        page.wait_for_url(study)  # back on the study, the unsent verdict offered again
        page.wait_for_selector("#draft-restored")
        expect(page.locator("#announcer")).to_contain_text("unsent verdict")
        assert page.locator("#verdict-disagree").is_checked()
        assert page.locator("#note").input_value() == "Lateral view needed."
        page.wait_for_selector("#viewer[data-loaded]")
        page.click("#send")
        page.wait_for_url("**saved=*")
        page.goto(study)  # saved: not offered again
        page.wait_for_selector("#viewer[data-loaded]")
        assert page.locator("#draft-restored").count() == 0
        assert page.locator("#note").input_value() == ""

        missing = page.goto(live.url + "/review/no-such-page")
        assert missing is not None
        assert missing.status == 404
        assert "text/html" in (missing.headers.get("content-type") or "")
        browser.close()
    assert problems == []
    with engine.connect() as conn:
        saved = conn.execute(db.reviews.select()).fetchall()
    assert any(row.note == "Lateral view needed." and row.verdict == "disagree" for row in saved)
