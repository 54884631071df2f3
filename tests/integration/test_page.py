"""The live page (web/) in a real headless browser, against the real api.py, transaction.py and analysis.py on the
real broker: the map draws every zone of /city, the figures stream in, and a ride requested through the page's
form is followed until it is confirmed, with its driver shown. Any console error fails the test.

It drives Debian's Chromium (`apt-get install -y chromium`) through Playwright's Python package
(requirements-dev.txt); Playwright's own browser downloads are never used. Both missing is a failure, not a
skip: CI installs them. A screenshot of the page goes to $RIDES_SCREENSHOT_DIR if set, else to the test's
tmp_path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.integration.pipeline import Script, read_all, unique_prefix

pytestmark = pytest.mark.integration

CHROMIUM_NAMES = ("chromium", "chromium-browser")  # Debian's package installs /usr/bin/chromium
VIEWPORT = {"width": 1280, "height": 800}
CONFIRMED_WITHIN_MS = 60_000


def playwright_api():
    if importlib.util.find_spec("playwright") is None:
        pytest.fail("Playwright is missing: .venv/bin/pip install -r requirements-dev.txt (playwright==1.65.2; "
                    "never `playwright install`: the test drives Debian's chromium)", pytrace=False)
    from playwright.sync_api import expect, sync_playwright

    return sync_playwright, expect


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    pytest.fail("Chromium is missing: apt-get install -y chromium (Debian's package; the test drives it headless)",
                pytrace=False)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RIDES_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_page_draws_every_zone_and_follows_a_ride_it_requested_to_its_confirmation(request, tmp_path):
    # The browser first, the broker after: a machine without them fails at once, as a failure of this test.
    sync_playwright, expect = playwright_api()
    chromium = chromium_path()
    kafka_bootstrap = request.getfixturevalue("kafka_bootstrap")
    prefix = unique_prefix("page")
    groups = [f"{prefix}transaction", f"{prefix}email", f"{prefix}analysis"]
    with Script("transaction.py", bootstrap=kafka_bootstrap, prefix=prefix, group_id=groups[0]) as tx, \
            Script("analysis.py", "--state", str(tmp_path / "analysis.db"), bootstrap=kafka_bootstrap, prefix=prefix,
                   group_id=groups[2]) as an, \
            Script("api.py", "--port", "0", "--groups", ",".join(groups), bootstrap=kafka_bootstrap,
                   prefix=prefix) as api:
        url = api.wait_for_log(r"serving on (http://\S+)", timeout=120)[1]
        zones = get_json(f"{url}/city")["features"]
        assert len(zones) >= 2, f"/city has {len(zones)} zones"
        # Some traffic of rides.py's, so that the map, the per-minute bars and the busiest zones have something to
        # show; bounded, and killed at the end in any case.
        with Script("rides.py", "--count", "600", "--rate", "10", "--seed", "7", bootstrap=kafka_bootstrap,
                    prefix=prefix), sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                problems: list[str] = []
                page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                        if m.type in ("error", "warning") else None)
                page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
                page.goto(url)

                expect(page.locator("#map [data-zone]")).to_have_count(len(zones), timeout=15_000)
                drawn = set(page.locator("#map [data-zone]").evaluate_all("ps => ps.map(p => p.dataset.zone)"))
                assert drawn == {f["properties"]["name"] for f in zones}
                expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)

                # Two distinct zones, the busiest by demand: transaction.py serves any two places on the island.
                by_demand = sorted(zones, key=lambda f: -f["properties"]["demand"])
                pickup, dropoff = (f["properties"]["name"] for f in by_demand[:2])
                page.fill("#name", "Ada Lovelace")
                page.fill("#email", "ada@example.com")
                page.fill("#passengers", "2")
                page.select_option("#pickup-zone", pickup)
                page.select_option("#dropoff-zone", dropoff)
                page.click("#request")

                row = page.locator("#my-rides [data-ride-id]")
                expect(row).to_have_count(1, timeout=15_000)  # a 202 comes once Kafka has the ride
                expect(row).to_have_attribute("data-status", "confirmed", timeout=CONFIRMED_WITHIN_MS)
                expect(page.locator("#form-error")).to_be_hidden()
                ride = get_json(f"{url}/rides/{row.get_attribute('data-ride-id')}")
                assert ride["status"] == "confirmed" and ride["driver_id"], ride
                expect(row.locator('[data-field="driver"]')).to_have_text(ride["driver_id"])
                # What the form sent: each zone's label point from /city, and the browser's own customer id.
                labels = {f["properties"]["name"]: f["properties"]["label"] for f in zones}
                for place, name in (("pickup", pickup), ("dropoff", dropoff)):
                    assert ride[place]["zone"] == name, ride
                    assert [ride[place]["lon"], ride[place]["lat"]] == pytest.approx(labels[name]), ride
                # The rider is the browser's own customer id (GET /rides/{id} does not show it: ride_details does).
                customer = page.evaluate("localStorage.getItem('rides.customer_id')")
                assert customer.startswith("web-"), customer
                [sent] = [r for r in read_all(kafka_bootstrap, prefix + "ride_details", quiet=1)
                          if r.key == ride["ride_id"].encode()]
                assert json.loads(sent.value)["customer_id"] == customer

                # The stream carries the pipeline's figures: pickups on the map, and analysis.py's busiest zones.
                expect(page.locator("#map #dots circle").first).to_be_attached(timeout=30_000)
                expect(page.locator("#zones tbody tr").first).to_be_attached(timeout=30_000)
                expect(page.locator("#lag tbody tr")).to_have_count(len(groups), timeout=30_000)

                page.screenshot(path=str(screenshot_dir(tmp_path) / "page.png"))
                assert not problems, "the page logged:\n" + "\n".join(problems)
            finally:
                browser.close()
        api.stop()
        an.stop()
        tx.stop()
