"""The dashboard in a real browser: Debian's headless Chromium logs in, opens the overview and a
drill-down, and every chart must have rendered, with no console error and no request leaving
the machine. Screenshots are saved under test-artifacts/."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.utils import timezone

from costmon.core.models import Membership
from costmon.core.services import membership_add
from tests.factories import UserFactory
from tests.helpers import event, post_usage

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (the README's test command installs them)",
    ),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,2200",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def rendered_charts(driver: Any) -> tuple[int, int]:
    """(chart containers on the page, those with Plotly's SVG drawn)."""
    from selenium.webdriver.common.by import By

    charts = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    drawn = [c for c in charts if c.find_elements(By.CSS_SELECTOR, "svg.main-svg")]
    return len(charts), len(drawn)


def requested_hosts(driver: Any) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith("data:"):
                hosts.add(urlparse(url).hostname)
    return hosts


@pytest.mark.django_db(transaction=True)
def test_a_member_sees_every_chart_render_with_nothing_leaving_the_machine(
    live_server, browser, acme, prices, ingest_client
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    now = timezone.now()
    post_usage(
        ingest_client,
        [
            event(
                event_id=f"e{i}",
                occurred_at=(now - timezone.timedelta(hours=i * 7)).isoformat(),
                end_user=f"user-{i % 4}",
                provider=["anthropic", "openai"][i % 2],
                model=["claude-haiku-4-5", "gpt-4o-mini"][i % 2],
                operation=["chat", "summarize"][i % 2],
                cache_hit=i % 5 == 0,
            )
            for i in range(40)
        ],
    )
    user = UserFactory(username="dana", password="browser test password")
    membership_add(tenant=acme, user=user, role=Membership.Role.VIEWER)
    ARTIFACTS.mkdir(exist_ok=True)

    browser.get(f"{live_server.url}/login/?next=/t/acme/")
    browser.find_element(By.NAME, "username").send_keys("dana")
    browser.find_element(By.NAME, "password").send_keys("browser test password")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait = WebDriverWait(browser, 20)
    wait.until(expected_conditions.url_contains("/t/acme/"))

    for path, name in (("/t/acme/", "overview"), ("/t/acme/models/claude-haiku-4-5/", "model")):
        browser.get(f"{live_server.url}{path}")
        wait.until(
            lambda d: rendered_charts(d)[0] > 0 and rendered_charts(d)[0] == rendered_charts(d)[1]
        )
        total, drawn = rendered_charts(browser)
        browser.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))
        assert total >= 4 and drawn == total, f"{name}: {drawn} of {total} charts drawn"
        assert "Acme" in browser.page_source
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], errors
        assert requested_hosts(browser) <= {urlparse(live_server.url).hostname}
