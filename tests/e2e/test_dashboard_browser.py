"""The dashboard in a real headless Chromium, against a real `fulfillment serve`.

The browser is Debian's `chromium` package, driven by Playwright through
`executable_path` (Playwright never downloads a browser here). Without
`/usr/bin/chromium` these tests skip, saying why, except under CI=true, where they fail.

Orders are placed over HTTP, one fulfilled and one compensated after its shipment failed;
the test then uses the dashboard as a person would: opens `/`, clicks through to the
compensated order and reads its saga. Screenshots land in `artifacts/`; with
UPDATE_SCREENSHOT=1 the order page is also saved as `docs/dashboard.png` (the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import IN_CI

from .server import Server, poll, start_server

CHROMIUM = Path(os.environ.get("FULFILLMENT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "artifacts"
README_SCREENSHOT = ROOT / "docs" / "dashboard.png"
API_KEY = "dashboard-test-key"
#: Long enough for a poll of the page (every 2 s) and a saga on a loaded CI machine.
WAIT_MS = 20_000

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)"
    if IN_CI:
        pytest.fail(f"CI=true requires the browser test. {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


def order_body(country: str, *, customer: str = "cust-ada") -> dict[str, Any]:
    return {
        "customer_id": customer,
        "items": [{"sku": "AMOXICILLIN-500", "quantity": 2}],
        "prescription": {
            "prescriber_id": "dr-blackwell",
            "patient_name": "Ada Lovelace",
            "expires_on": str(date.today() + timedelta(days=60)),
        },
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London" if country == "GB" else "Sao Paulo",
            "postal_code": "SW1Y 4JH" if country == "GB" else "01310-100",
            "country": country,
        },
    }


def place_and_settle(client: httpx.Client, *countries: str) -> list[str]:
    """Place one order per country over HTTP; wait until every one is terminal."""
    ids = []
    for country in countries:
        response = client.post("/orders", json=order_body(country))
        assert response.status_code == 202, response.text
        ids.append(response.json()["order_id"])
    for order_id in ids:
        order = poll(
            lambda order_id=order_id: client.get(f"/orders/{order_id}").json(),
            lambda o: o["status"] != "pending",
        )
        assert order["status"] in ("fulfilled", "cancelled"), order
    return ids


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Anything the Content-Security-Policy refused (a script, style or request from
    # elsewhere) is reported on the console.
    page.on(
        "console",
        lambda message: errors.append(message.text) if "Refused to" in message.text else None,
    )
    yield page
    context.close()
    assert errors == [], f"errors on the page: {errors}"


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`fulfillment serve` on SQLite with the default carrier countries (no BR)."""
    folder = tmp_path_factory.mktemp("dashboard")
    with start_server(f"sqlite:///{folder / 'dashboard.db'}", log_dir=folder) as srv:
        with srv.client() as client:
            assert client.put("/inventory/AMOXICILLIN-500", json={"on_hand": 100}).is_success
        yield srv


def test_a_compensated_orders_page_shows_its_steps_and_compensations_in_lifo_order(
    server: Server, page: Page
) -> None:
    with server.client() as client:
        fulfilled, compensated = place_and_settle(client, "GB", "BR")

    page.goto(f"{server.url}/")
    orders = page.locator("table.orders tbody tr")
    expect(page.locator(f'tr[data-order-id="{fulfilled}"]')).to_have_attribute(
        "data-status", "fulfilled"
    )
    row = page.locator(f'tr[data-order-id="{compensated}"]')
    expect(row).to_have_attribute("data-status", "cancelled")
    expect(row).to_contain_text("unsupported destination")
    assert orders.count() >= 2
    screenshot(page, "dashboard-overview.png")

    row.locator("a.order-link").click()  # through to the order, as a user would
    expect(page).to_have_url(f"{server.url}/#/orders/{compensated}")
    expect(page.locator("#order-id")).to_have_text(compensated)

    steps = page.locator("#steps .step")
    expect(steps).to_have_count(4)
    for name, status, shown in (
        ("create_prescription", "compensated", ["succeeded", "compensated"]),
        ("reserve_inventory", "compensated", ["succeeded", "compensated"]),
        ("initiate_shipment", "failed", ["failed", "carrier does not ship to BR"]),
        ("complete", "skipped", ["skipped"]),
    ):
        step = page.locator(f'#steps .step[data-step="{name}"]')
        expect(step).to_have_attribute("data-status", status)
        for text in shown:
            expect(step).to_contain_text(text)
        expect(step.locator(".attempts")).to_have_text("0" if name == "complete" else "1")
    expect(page.locator('.step[data-step="reserve_inventory"] .undo')).to_contain_text(
        "InventoryReleased"
    )
    expect(page.locator('.step[data-step="create_prescription"] .undo')).to_contain_text(
        "PrescriptionCancelled"
    )

    ran = page.locator("#compensations li.comp")
    expect(ran).to_have_count(2)
    assert [ran.nth(i).get_attribute("data-event") for i in range(2)] == [
        "InventoryReleased",
        "PrescriptionCancelled",
    ]
    expect(ran.nth(0).locator(".comp-num")).to_have_text("1")
    expect(ran.nth(0)).to_contain_text("reserve_inventory")
    expect(ran.nth(1)).to_contain_text("create_prescription")

    history = page.locator("#events tbody tr")
    types = [history.nth(i).get_attribute("data-type") for i in range(history.count())]
    assert types[0] == "OrderCreated" and types[-1] == "OrderCancelled"
    assert types.index("ShipmentInitiationFailed") < types.index("SagaCompensationStarted")
    assert types.index("InventoryReleased") < types.index("PrescriptionCancelled")

    shot = screenshot(page, "dashboard-compensated-order.png")
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, README_SCREENSHOT)

    page.get_by_role("link", name="All orders").click()
    expect(page.locator("#kpi-cancelled .kpi-value")).not_to_have_text("0")

    page.goto(f"{server.url}/#/orders/no-such-order")
    expect(page.locator("#app")).to_contain_text("No order with id no-such-order")


def test_the_orders_list_pages_filters_by_status_and_refreshes_by_itself(
    server: Server, page: Page
) -> None:
    with server.client() as client:
        older, newer = place_and_settle(client, "GB", "BR")

    page.goto(f"{server.url}/#/?limit=1")  # one order a page: newest first
    rows = page.locator("table.orders tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-order-id", newer)
    page.click("#older")
    expect(rows.first).to_have_attribute("data-order-id", older)
    expect(page.locator(".pager")).to_contain_text("page 2")
    page.get_by_role("button", name="Newer").click()
    expect(rows.first).to_have_attribute("data-order-id", newer)

    page.locator('#status-filter [data-filter="cancelled"]').click()
    expect(page).to_have_url(f"{server.url}/#/?status=cancelled")
    expect(page.locator(f'tr[data-order-id="{newer}"]')).to_be_visible()
    expect(page.locator(f'tr[data-order-id="{older}"]')).to_have_count(0)
    statuses = {rows.nth(i).get_attribute("data-status") for i in range(rows.count())}
    assert statuses == {"cancelled"}

    page.locator('#status-filter [data-filter="all"]').click()
    expect(page.locator(f'tr[data-order-id="{older}"]')).to_be_visible()
    with server.client() as client:
        (new_order,) = place_and_settle(client, "GB")
    # No reload: the page polls, and the new order shows up on its own.
    expect(page.locator(f'tr[data-order-id="{new_order}"]')).to_have_attribute(
        "data-status", "fulfilled"
    )


def test_with_api_keys_the_dashboard_asks_for_a_key_then_shows_the_orders(
    tmp_path: Path, page: Page
) -> None:
    with start_server(
        f"sqlite:///{tmp_path / 'keys.db'}", api_key=API_KEY, log_dir=tmp_path
    ) as server:
        with server.client() as client:
            assert client.put("/inventory/AMOXICILLIN-500", json={"on_hand": 10}).is_success
            (order_id,) = place_and_settle(client, "BR")
        assert httpx.get(f"{server.url}/api/dashboard/overview").status_code == 401

        page.goto(f"{server.url}/")
        gate = page.locator("#key-gate")
        expect(gate).to_be_visible()
        expect(page.locator("#app")).to_be_hidden()

        page.fill("#key-input", "not-the-key")
        page.click("#key-submit")
        expect(page.locator("#key-error")).to_be_visible()
        expect(page.locator("#app")).to_be_hidden()

        page.fill("#key-input", API_KEY)
        page.click("#key-submit")
        expect(gate).to_be_hidden()
        row = page.locator(f'tr[data-order-id="{order_id}"]')
        expect(row).to_have_attribute("data-status", "cancelled")
        row.locator("a.order-link").click()
        expect(page.locator('#steps .step[data-step="initiate_shipment"]')).to_have_attribute(
            "data-status", "failed"
        )
        screenshot(page, "dashboard-with-key.png")

        # The key lives in this tab only: another tab asks again.
        other = page.context.new_page()
        other.goto(f"{server.url}/")
        expect(other.locator("#key-gate")).to_be_visible()
        other.close()
