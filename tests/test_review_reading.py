"""Reading a study the way a radiologist does, in a real browser (Debian's chromium, Playwright,
headless) against a live hub with results that real devices analysed and synced: window presets
and gain/contrast, the length measurement in mm, the verdict closed until the image is shown, a
worklist whose order does not move under the reader, superseded verdicts, and an axe-core
accessibility check (the axe-playwright-python package bundles axe.min.js: no download).

One hub per module (SQLite; tests/test_review_browser.py runs the whole flow on PostgreSQL too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from edge.config import load_settings
from edge.hub import accounts, db, devices, reviews
from edge.hub.app import create_app
from edge.sync.credential import enroll
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.hubfixtures import REVIEW_PASSWORD, LiveHub, device_results, fill_login
from tests.test_review_browser import _browser

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

SPACING_MM = 0.5
MEAN_GREY = (  # the mean grey drawn on the image canvas
    "(() => { const c = document.getElementById('image-canvas');"
    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4); })()"
)


def _with_spacing(source: Path, target: Path) -> Path:
    """A demo chest film with PixelSpacing, as a new study of the same (synthetic) patient."""
    ds = pydicom.dcmread(source)
    ds.PixelSpacing = [SPACING_MM, SPACING_MM]
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "SYNTH-PRIORS"
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live hub; an X-ray room sending full images (two DICOM films of one patient, with pixel
    spacing, and PNGs), an ultrasound laptop sending thumbnails; one reader."""
    tmp = tmp_path_factory.mktemp("reading")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("edge.config.SYSTEM_CONFIG", tmp / "no-system-config.toml")
        for variable in [name for name in os.environ if name.startswith("EDGE_")]:
            patch.delenv(variable)
        database = f"sqlite:///{tmp / 'hub.db'}"
        settings = load_settings(data_dir=tmp / "hub-host", hub={"database_url": database})
        engine = db.make_engine(database)
        demo = sorted((MODELS / DEFAULT_MODEL / "samples" / "demo").glob("*.dcm"))
        samples = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))
        films = [_with_spacing(demo[i], tmp / f"film-{i}.dcm") for i in (0, 2)]
        with LiveHub(create_app(settings, engine)) as live, httpx.Client(timeout=30) as http:
            xray = load_settings(
                data_dir=tmp / "xray-room", site="district-3", models={"dir": MODELS}, sync={"images": "full"}
            )
            code = devices.create_enroll_code(engine, "north")
            credential = enroll(xray, live.url, code, "xray-room", http)
            xray_results = device_results(xray, http, credential, [*films, *samples[:4]])
            ultrasound = load_settings(
                data_dir=tmp / "us-laptop",
                site="health-centre-9",
                models={"dir": MODELS, "default": "us-lung"},
                sync={"images": "thumbnails"},
            )
            code = devices.create_enroll_code(engine, "north")
            us_credential = enroll(ultrasound, live.url, code, "us-laptop", http)
            us_samples = sorted((MODELS / "us-lung" / "samples").glob("*.jpg"))[:2]
            us_results = device_results(ultrasound, http, us_credential, us_samples)
            accounts.create_user(engine, "dr-reads", REVIEW_PASSWORD, "specialist", ("north",))
            yield {
                "live": live,
                "engine": engine,
                "films": xray_results[:2],
                "pngs": xray_results[2:],
                "ultrasound": us_results,
            }
        engine.dispose()


@pytest.fixture(scope="module")
def browser(hub: dict[str, Any]) -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = _browser(playwright)
        context = chromium.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        fill_login(page, "dr-reads", hub["live"].url)
        page.wait_for_selector("#worklist")
        page.close()
        yield context
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    tab = browser.new_page()
    problems: list[str] = []
    tab.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: problems.append(str(error)))
    yield tab
    tab.close()
    assert problems == []  # no script errors, nothing the content security policy blocked


def _open(page: Any, hub: dict[str, Any], uuid: str) -> Any:
    page.goto(f"{hub['live'].url}/review/studies/{uuid}")
    page.wait_for_selector("#viewer[data-loaded]")
    return page.locator("#viewer")


def test_window_presets_change_the_pixels(hub: dict[str, Any], page: Any) -> None:
    viewer = _open(page, hub, hub["films"][0])
    assert viewer.get_attribute("data-heat") == "off"  # no anchoring: the reader looks first
    page.wait_for_timeout(100)
    original = page.evaluate(MEAN_GREY)
    means = {}
    for key, name in (("2", "lung"), ("3", "soft"), ("4", "bone")):
        page.keyboard.press(key)
        expect(viewer).to_have_attribute("data-preset", name)
        page.wait_for_timeout(100)  # drawn on the next animation frame
        means[name] = page.evaluate(MEAN_GREY)
        assert abs(means[name] - original) > 5, name
        assert page.locator(f"#preset-{name}").get_attribute("aria-pressed") == "true"
    assert means["lung"] > means["bone"]  # the lung window opens the dark half up
    page.keyboard.press("1")
    page.wait_for_timeout(100)
    assert abs(page.evaluate(MEAN_GREY) - original) < 2  # the default: the image as sent


def test_a_length_is_measured_in_mm_from_the_pixel_spacing(hub: dict[str, Any], page: Any) -> None:
    viewer = _open(page, hub, hub["films"][1])
    assert viewer.get_attribute("data-spacing-source") == "PixelSpacing"
    page.keyboard.press("m")
    expect(viewer).to_have_attribute("data-measuring", "1")
    box = page.locator("#frame").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=8)
    page.mouse.up()
    width = float(viewer.get_attribute("data-original-width") or 0)
    expected = width / 2 * SPACING_MM  # half the film's width
    assert abs(float(viewer.get_attribute("data-measure") or 0) - expected) < 1.5
    assert viewer.get_attribute("data-measure-unit") == "mm"
    assert "mm (PixelSpacing)" in page.locator("#measure-value").inner_text()
    assert viewer.get_attribute("data-scale") == "1.00"  # the drag measured; it did not pan

    # A PNG carries no spacing: the length is in image pixels, and the page says so.
    viewer = _open(page, hub, hub["pngs"][0])
    page.keyboard.press("m")
    box = page.locator("#frame").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 10, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + 110, box["y"] + 10, steps=4)
    page.mouse.up()
    assert viewer.get_attribute("data-measure-unit") == "px"
    assert "no pixel spacing was sent" in page.locator("#measure-value").inner_text()


def test_the_priors_of_the_patient_are_linked(hub: dict[str, Any], page: Any) -> None:
    _open(page, hub, hub["films"][0])
    priors = page.locator("#priors")
    assert priors.locator("a").count() == 1
    priors.locator("a").click()
    page.wait_for_url(f"**/studies/{hub['films'][1]}")
    assert "age ?" not in page.content()


def test_ultrasound_has_gain_and_contrast_not_window_level(hub: dict[str, Any], page: Any) -> None:
    viewer = _open(page, hub, hub["ultrasound"][0])
    tools = page.locator("#tools").inner_text().lower()
    assert "gain" in tools
    assert "window" not in tools
    assert "level" not in tools
    assert "window/level" not in page.locator(".source").inner_text()
    assert "Preview only" in page.locator("#preview-note").inner_text()  # a thumbnail, said so
    page.wait_for_timeout(100)
    before = page.evaluate(MEAN_GREY)
    page.locator("#gain").fill("200")
    expect(viewer).to_have_attribute("data-gain", "200")
    page.wait_for_timeout(100)
    assert page.evaluate(MEAN_GREY) > before + 10


def test_verdict_keys_wait_until_the_image_is_shown(hub: dict[str, Any], page: Any) -> None:
    held: list[Any] = []

    def hold(route: Any) -> None:  # the image "still loading" until released below
        held.append(route)

    page.route("**/image?w=*", hold)
    page.goto(f"{hub['live'].url}/review/studies/{hub['pngs'][1]}", wait_until="domcontentloaded")
    for _ in range(200):  # Playwright's own wait: route callbacks run while it waits
        if held:
            break
        page.wait_for_timeout(50)
    assert held  # the script has run and asked for the image
    assert page.locator("#verdict-agree").is_disabled()  # the whole fieldset is closed
    assert page.locator("#send").is_disabled()
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    page.wait_for_timeout(200)
    assert not page.locator("#verdict-agree").is_checked()
    assert "/studies/" in page.url
    assert "saved=" not in page.url  # nothing was sent
    for route in held:
        route.continue_()
    page.wait_for_selector("#viewer[data-loaded]")
    assert page.locator("#verdict-agree").is_enabled()
    page.keyboard.press("a")
    assert page.locator("#verdict-agree").is_checked()


@pytest.mark.security  # a verdict that landed on the wrong patient's study (the trial)
def test_the_order_holds_after_a_verdict_and_next_is_the_row_below(hub: dict[str, Any], page: Any) -> None:
    base = hub["live"].url + "/review"
    page.goto(base + "/")
    page.wait_for_selector("#worklist tbody tr.selected")
    rows = page.locator("#worklist tbody tr")
    order = [rows.nth(i).get_attribute("data-uuid") for i in range(rows.count())]
    unreviewed = [i for i in range(len(order)) if "unreviewed" in (rows.nth(i).get_attribute("class") or "")]
    first, second = unreviewed[0], unreviewed[1]
    rows.nth(first).locator("a").first.click()
    page.wait_for_selector("#viewer[data-loaded]")
    page.keyboard.press("u")
    page.keyboard.press("Enter")
    page.wait_for_url("**saved=*")
    assert page.url.split("?")[0].endswith(f"/studies/{order[second]}")  # the row below

    page.click("#back")
    page.wait_for_selector("#worklist tbody tr.selected")
    after = [rows.nth(i).get_attribute("data-uuid") for i in range(rows.count())]
    assert after == order  # the reviewed row was marked, not moved
    assert "reviewed" in (rows.nth(first).get_attribute("class") or "").split()
    # Back on the list from that verdict, j goes to the row below the one just read.
    query = page.url.split("?", 1)[1] if "?" in page.url else ""
    page.goto(f"{base}/?{query}&saved={order[first]}".replace("?&", "?"))
    page.wait_for_selector("#worklist tbody tr.selected")
    assert page.locator("#worklist tbody tr.selected").get_attribute("data-uuid") == order[first]
    page.keyboard.press("j")
    assert page.locator("#worklist tbody tr.selected").get_attribute("data-uuid") == order[first + 1]
    page.keyboard.press("n")  # the next unreviewed row
    selected = page.locator("#worklist tbody tr.selected")
    assert "unreviewed" in (selected.get_attribute("class") or "")


def test_a_superseded_verdict_is_struck(hub: dict[str, Any], page: Any) -> None:
    target = hub["pngs"][3]
    reviews.add_review(hub["engine"], target, "agree", finding="normal", reviewer="dr-a")
    reviews.add_review(hub["engine"], target, "disagree", finding="pneumonia", reviewer="dr-b")
    page.goto(hub["live"].url + "/review/")
    row = page.locator(f"#worklist tbody tr[data-uuid='{target}']")
    assert "disagree" in row.inner_text()
    assert "1 earlier superseded" in row.inner_text()
    _open(page, hub, target)
    old = page.locator("#reviews li.superseded")
    assert old.count() == 1
    assert "superseded" in old.inner_text().lower()
    assert "agree" in old.locator(".badge").inner_text()
    style = page.evaluate(
        "getComputedStyle(document.querySelector('#reviews li.superseded .badge')).textDecorationLine"
    )
    assert style == "line-through"
    assert "disagree" in page.locator("#reviews li.current").inner_text()


def test_no_serious_or_critical_accessibility_violations(hub: dict[str, Any], page: Any) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    found = {}
    page.goto(hub["live"].url + "/review/")
    page.wait_for_selector("#worklist tbody tr.selected")
    found["worklist"] = axe.run(page).response["violations"]
    _open(page, hub, hub["films"][0])
    page.keyboard.press("h")
    page.wait_for_selector("#viewer[data-layer-loaded]")
    found["study"] = axe.run(page).response["violations"]
    serious = {
        name: [
            (v["id"], v["impact"], [node["target"] for node in v["nodes"]][:5])
            for v in violations
            if v["impact"] in ("serious", "critical")
        ]
        for name, violations in found.items()
    }
    assert serious == {"worklist": [], "study": []}


def test_throttled_timings(hub: dict[str, Any], browser: Any) -> None:
    """Cold cache over the trial's link (1 Mbit/s, 300 ms): the worklist usable within 1.5 s,
    a study's image on screen (the verdict open) within 2.5 s; each request's timing printed."""
    from tests.test_review_browser import ONE_MBIT, STUDY_BUDGET_S, WORKLIST_BUDGET_S, since_navigation

    runs = []
    finished: list[Any] = []
    for attempt in range(3):  # the best of three: the CPUs are shared, the link is not the noise
        cold = browser.browser.new_context(viewport={"width": 1280, "height": 800})
        cold.add_cookies(browser.cookies())
        slow = cold.new_page()
        cdp = cold.new_cdp_session(slow)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", ONE_MBIT)
        finished.clear()
        slow.on("requestfinished", lambda request: finished.append(request))  # noqa: PLW0108 - Playwright tags the callable
        slow.goto(hub["live"].url + "/review/", wait_until="domcontentloaded")
        slow.wait_for_selector("#worklist tbody tr.selected")
        worklist_s = since_navigation(slow, "edge:worklist-ready")
        slow.wait_for_load_state("load")
        slow.goto(f"{hub['live'].url}/review/studies/{hub['films'][attempt % 2]}", wait_until="commit")
        slow.wait_for_selector("#viewer[data-loaded]")
        study_s = since_navigation(slow, "edge:image-shown")
        assert slow.locator("#verdict-agree").is_enabled()  # open once the image is shown
        for request in finished:
            timing = request.timing
            print(
                f"{request.resource_type:10} {request.url.split('/review')[-1][:60]:60} "
                f"first byte {timing['responseStart']:.0f} end {timing['responseEnd']:.0f} ms"
            )
        print(f"cold load {attempt + 1}: worklist usable {worklist_s} s, study image shown {study_s} s")
        runs.append((worklist_s, study_s))
        cold.close()
    assert min(run[0] for run in runs) <= WORKLIST_BUDGET_S
    assert min(run[1] for run in runs) <= STUDY_BUDGET_S
