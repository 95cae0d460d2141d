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

from costmon.core import tenancy
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


# --- readable charts, wide and narrow --------------------------------------------------------

SERIES_COLOURS = """
const out = {};
for (const gd of document.querySelectorAll('.js-plotly-plot')) {
  const colours = [];
  for (const t of gd._fullData) {
    if (t.type === 'bar') {
      const c = t.marker.color;
      // One colour for a whole trace is one series; a colour per bar makes each bar one.
      if (Array.isArray(c)) colours.push(...c); else colours.push(c);
    } else if (t.type === 'pie') {
      colours.push(...t.marker.colors);
    } else if (t.type === 'scatter') {
      if (t.mode === 'markers') colours.push(t.marker.color);
      else if (t.line.width > 0) colours.push(t.line.color);  // not a band's invisible edge
    }
  }
  out[gd.id] = colours.map(c => String(c).toLowerCase());
}
return out;
"""

# The heat map as drawn: plotly paints it as one image; read back the pixel at the centre of
# every cell that has spend and of an empty one, with the spend each holds.
HEATMAP_PIXELS = """
const done = arguments[arguments.length - 1];
const gd = document.getElementById('chart-heatmap');
const trace = gd._fullData[0];
const image = gd.querySelector('g.hm image');
const href = image.getAttribute('href') || image.getAttribute('xlink:href');
const ix = +image.getAttribute('x'), iy = +image.getAttribute('y');
const w = +image.getAttribute('width'), h = +image.getAttribute('height');
const img = new Image();
img.onload = () => {
  const canvas = document.createElement('canvas');
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0, w, h);
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const cells = [];
  trace.z.forEach((row, r) => row.forEach((z, c) => {
    const x = Math.round(xa.c2p(c) - ix), y = Math.round(ya.c2p(r) - iy);
    const [red, green, blue] = ctx.getImageData(x, y, 1, 1).data;
    cells.push({z: z, r: r, c: c, luminance: 0.2126 * red + 0.7152 * green + 0.0722 * blue});
  }));
  done(cells);
};
img.onerror = () => done(null);
img.src = href;
"""


def log_in(browser: Any, live_server: Any, acme: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    user = UserFactory(username="erin", password="browser test password")
    membership_add(tenant=acme, user=user, role=Membership.Role.VIEWER)
    browser.get(f"{live_server.url}/login/?next=/t/acme/")
    browser.find_element(By.NAME, "username").send_keys("erin")
    browser.find_element(By.NAME, "password").send_keys("browser test password")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 20).until(expected_conditions.url_contains("/t/acme/"))


def many_series(now: Any) -> list[dict[str, Any]]:
    """Ten providers, a dozen models (two dated snapshots among them) and eight operations over
    the last week, and one hour that costs far more than any other."""
    providers = (
        "openai",
        "anthropic",
        "azure",
        "fireworks",
        "mistral",
        "google",
        "bedrock",
        "groq",
        "together",
        "deepseek",
    )
    models = (
        "gpt-4o",
        "gpt-4o-2024-08-06",
        "gpt-4o-mini",
        "text-embedding-3-small",
        "mistral-small",
        "claude-haiku-4-5",
        "claude-sonnet-4-5-20250929",
        "gemini-2.0-flash",
        "llama-v3",
        "mixtral-8x7b",
        "deepseek-chat",
        "o3",
    )
    operations = (
        "chat",
        "summarize",
        "embed",
        "classify",
        "agent-step",
        "rerank",
        "extract",
        "translate",
    )
    events = [
        event(
            event_id=f"s{i}",
            occurred_at=(now - timezone.timedelta(hours=3 + i * 5)).isoformat(),
            provider=providers[i % len(providers)],
            model=models[i % len(models)],
            operation=operations[i % len(operations)],
            end_user=f"user-{i % 6}",
            cost_usd=f"0.{(i % 9) + 1}",
        )
        for i in range(33)
    ]
    events.append(
        event(
            event_id="spike",
            occurred_at=(now - timezone.timedelta(days=2)).replace(minute=5).isoformat(),
            provider="openai",
            model="gpt-4o",
            operation="agent-step",
            cost_usd="25",
        )
    )
    return events


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("width", [1400, 420])
def test_the_overview_reads_well_wide_and_narrow(
    live_server, browser, acme, prices, ingest_client, width
):
    from selenium.webdriver.support.ui import WebDriverWait

    from budgets.services import budget_create

    assert post_usage(ingest_client, many_series(timezone.now())).status_code == 201
    with tenancy.unscoped():
        budget_create(tenant=acme, data={"name": "Monthly", "limit_usd": "500"})
    log_in(browser, live_server, acme)
    browser.set_window_size(width, 2600)
    wait = WebDriverWait(browser, 20)
    for query, name in (("?period=7d", "overview"), ("?period=7d&by=model", "by-model")):
        browser.get(f"{live_server.url}/t/acme/{query}")
        wait.until(
            lambda d: rendered_charts(d)[0] > 0 and rendered_charts(d)[0] == rendered_charts(d)[1]
        )
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / f"dashboard-{name}-{width}px.png"))
        colours = browser.execute_script(SERIES_COLOURS)
        assert len(colours) >= 6, colours
        for chart, used in colours.items():
            assert len(used) == len(set(used)), (
                f"{name} {width}px: {chart} repeats a colour: {used}"
            )
        # Enough series to have collided under the old palette.
        assert len(colours["chart-spend"]) >= 10 and len(colours["chart-operations"]) == 8
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], errors

    cells = browser.execute_async_script(HEATMAP_PIXELS)
    assert cells, "the heat map's image could not be read"
    hottest = max(cells, key=lambda c: c["z"])
    darkest = min(cells, key=lambda c: c["luminance"])
    assert (hottest["r"], hottest["c"]) == (darkest["r"], darkest["c"])
    assert max(c["luminance"] for c in cells if c["z"] == 0) > hottest["luminance"] + 100
    # On a phone plotly's toolbar does not cover the titles; on a laptop it is there.
    hidden = browser.execute_script(
        "return [...document.querySelectorAll('.modebar-container')]"
        ".map(e => getComputedStyle(e).display === 'none')"
    )
    assert hidden and all(hidden) == (width < 600)
