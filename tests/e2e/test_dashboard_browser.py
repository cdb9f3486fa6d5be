"""The dashboard in a real headless Chromium, against a real `fulfillment serve`.

The browser is Debian's `chromium` package, driven by Playwright through
`executable_path` (Playwright never downloads a browser here). Without
`/usr/bin/chromium` these tests skip, saying why, except under CI=true, where they fail.

Orders are placed over HTTP, one fulfilled and one compensated after its shipment failed;
the test then uses the dashboard as a person would: opens `/`, clicks through to the
compensated order and reads its saga. On a server that holds every order for a
pharmacist (FULFILLMENT_VERIFICATION_REQUIRED_FOR=all), a pharmacist decides from the
dashboard's queue, the order page shows the lifecycle (decisions, pickup, the carrier's
updates, lots), and a viewer's key is told it may not decide. In a browser in New York,
an order whose job died shows the dead step with the command that retries it, each
step's wait in the queue apart from its run, and every time in UTC with the local time
in its tooltip. Screenshots land in `artifacts/` (the queue, the lifecycle and the dead
job also in /tmp/dashboard-queue.png, /tmp/dashboard-order.png and
/tmp/dashboard-dead-job.png); with UPDATE_SCREENSHOT=1 the order page is also saved as
`docs/dashboard.png` (the README's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from conftest import IN_CI

from fulfillment.entrypoints.webhook_signature import sign

from .server import Server, poll, start_server
from .stuck_orders import BUG, StuckShop, stuck_shop

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
PHARMACIST_KEY = "rx-desk-secret-4f1c"
ADMIN_KEY = "root-secret-9a7e"
VIEWER_KEY = "watch-secret-2b8d"
WEBHOOK_SECRET = "whsec-dashboard-0123456789"
QUEUE_SHOT = Path("/tmp/dashboard-queue.png")
ORDER_SHOT = Path("/tmp/dashboard-order.png")
DEAD_JOB_SHOT = Path("/tmp/dashboard-dead-job.png")
#: Where the browser of the time zone test is (not UTC, whatever the season).
BROWSER_ZONE = "America/New_York"
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
    with open_page(browser) as page:
        yield page


@contextmanager
def open_page(browser: Browser, **options: Any) -> Iterator[Page]:
    """A page in a context of its own (`options`: Playwright's, e.g. the time zone); no
    error may show on it."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, **options)
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


def screenshot(page: Page, name: str, also: Path | None = None) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    if also is not None:
        shutil.copyfile(path, also)
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
    expect(steps).to_have_count(6)
    for name, status, shown, attempts in (
        ("create_prescription", "compensated", ["succeeded", "compensated"], "1"),
        ("verify_prescription", "succeeded", ["succeeded"], "0"),  # by the policy
        ("reserve_inventory", "compensated", ["succeeded", "compensated"], "1"),
        ("initiate_shipment", "failed", ["failed", "carrier does not ship to BR"], "1"),
        ("await_pickup", "skipped", ["skipped"], "0"),
        ("complete", "skipped", ["skipped"], "0"),
    ):
        step = page.locator(f'#steps .step[data-step="{name}"]')
        expect(step).to_have_attribute("data-status", status)
        for text in shown:
            expect(step).to_contain_text(text)
        expect(step.locator(".attempts")).to_have_text(attempts)
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


# --- the pharmacist's queue and an order's lifecycle ------------------------------------------


@pytest.fixture(scope="module")
def rx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Every order waits for a pharmacist; the simulated carrier picks parcels up after
    a delay and reports pickup and delivery through the signed webhook. Its client
    holds the admin key."""
    folder = tmp_path_factory.mktemp("rx")
    env = {
        "FULFILLMENT_VERIFICATION_REQUIRED_FOR": "all",
        "FULFILLMENT_API_KEYS": (
            f"rx-desk:pharmacist:{PHARMACIST_KEY},root:admin:{ADMIN_KEY},watch:viewer:{VIEWER_KEY}"
        ),
        "FULFILLMENT_CARRIER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "FULFILLMENT_CARRIER_PICKUP_DELAY_MS": "600",
    }
    with start_server(
        f"sqlite:///{folder / 'rx.db'}", env=env, api_key=ADMIN_KEY, log_dir=folder
    ) as srv:
        with srv.client() as client:
            assert client.put("/inventory/AMOXICILLIN-500", json={"on_hand": 100}).is_success
        yield srv


def place_awaiting(client: httpx.Client, count: int = 1) -> list[str]:
    """Place orders; wait until each waits for a pharmacist (on the dashboard's data too)."""
    ids = []
    for _ in range(count):
        response = client.post("/orders", json=order_body("GB"))
        assert response.status_code == 202, response.text
        ids.append(response.json()["order_id"])
    queue = poll(
        lambda: client.get("/api/dashboard/verifications").json(),
        lambda q: {i["order_id"] for i in q["items"]} >= set(ids),
    )
    assert {i["order_id"] for i in queue["items"]} >= set(ids), queue
    return ids


def unlock(page: Page, server: Server, key: str) -> None:
    page.goto(f"{server.url}/")
    page.fill("#key-input", key)
    page.click("#key-submit")
    expect(page.locator("#key-gate")).to_be_hidden()


def decide(page: Page, order_id: str, button: str, pharmacist: str, **fields: str) -> None:
    """Open the row's inline form with `button`, fill it in and send it."""
    row = page.locator(f'#verifications tr[data-order-id="{order_id}"]:not(.decide-row)')
    row.get_by_role("button", name=button).click()
    form = page.locator(f'#verifications tr.decide-row[data-order-id="{order_id}"] form')
    expect(form).to_be_visible()
    form.locator('input[name="pharmacist_id"]').fill(pharmacist)
    for name, value in fields.items():
        form.locator(f'[name="{name}"]').fill(value)
    form.locator('button[type="submit"]').click()


def signed_update(server: Server, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body).encode()
    signature = sign(WEBHOOK_SECRET, raw, int(time.time()))
    return httpx.post(
        f"{server.url}/webhooks/carrier",
        content=raw,
        headers={"Content-Type": "application/json", "Carrier-Signature": signature},
    )


def test_a_pharmacist_decides_from_the_queue_and_the_order_page_shows_the_lifecycle(
    rx_server: Server, page: Page
) -> None:
    with rx_server.client() as client:
        approved, waiting = place_awaiting(client, 2)

    unlock(page, rx_server, PHARMACIST_KEY)
    queue = page.locator("#verifications")
    row = queue.locator(f'tr[data-order-id="{approved}"]:not(.decide-row)')
    expect(row).to_have_attribute("data-verification", "pending")
    expect(row).to_contain_text("AMOXICILLIN-500 \u00d72")
    expect(row.locator("a.order-link")).to_have_text(f"{approved[:8]}\u2026{approved[-4:]}")
    expect(queue.locator(f'tr[data-order-id="{waiting}"]:not(.decide-row)')).to_be_visible()
    expect(page.locator("#kpi-verification .kpi-value")).not_to_have_text("0")
    expect(page.locator('#status-filter [data-filter="awaiting_verification"]')).to_be_visible()
    orders_row = page.locator(f'table.orders tr[data-order-id="{approved}"]')
    expect(orders_row).to_have_attribute("data-status", "awaiting_verification")
    expect(orders_row.locator(".pill")).to_have_text("awaiting verification")

    # Ask the prescriber first: the order stays in the queue, marked as such.
    decide(page, approved, "Ask prescriber", "ph-7", note="Which strength: 250 or 500 mg?")
    expect(row.locator(".decide-message")).to_contain_text("Question sent to the prescriber")
    expect(row).to_have_attribute("data-verification", "clarification_requested")
    expect(row).to_contain_text("by ph-7")

    # The inline form survives the page's refreshes while it is filled in.
    row.get_by_role("button", name="Approve").click()
    form = queue.locator(f'tr.decide-row[data-order-id="{approved}"] form')
    form.locator('input[name="pharmacist_id"]').fill("ph-12")
    form.locator('[name="note"]').fill("Dose checked against the label")
    page.wait_for_timeout(2500)  # a refresh or more
    expect(form.locator('input[name="pharmacist_id"]')).to_have_value("ph-12")
    screenshot(page, "dashboard-queue.png", also=QUEUE_SHOT)
    form.locator('button[type="submit"]').click()
    expect(row.locator(".decide-message")).to_contain_text("Approved")
    # 202: the order leaves the queue on a refresh; the other one still waits.
    expect(queue.locator(f'tr[data-order-id="{approved}"]')).to_have_count(0)
    expect(page.locator("#queue-notice")).to_contain_text("left the queue")
    expect(queue.locator(f'tr[data-order-id="{waiting}"]:not(.decide-row)')).to_be_visible()

    # The simulated carrier picks the parcel up, then delivers it; a late update arrives.
    with rx_server.client() as client:
        order = poll(
            lambda: client.get(f"/orders/{approved}").json(),
            lambda o: o["status"] == "delivered",
        )
        assert order["status"] == "delivered", order
        number = order["shipment"]["tracking_number"]
    late = signed_update(
        rx_server,
        {
            "event_id": f"late-{number}",
            "tracking_number": number,
            "status": "in_transit",
            "occurred_at": datetime.now(UTC).isoformat(),
            "location": "Heathrow hub",
        },
    )
    assert late.json() == {"accepted": True}, late.text

    page.locator(f'table.orders tr[data-order-id="{approved}"] a.order-link').click()
    expect(page).to_have_url(f"{rx_server.url}/#/orders/{approved}")
    life = page.locator("#lifecycle")
    verification = life.locator('[data-part="verification"]')
    expect(verification).to_contain_text("approved")
    expect(verification).to_contain_text("by ph-12")
    decisions = verification.locator("li.decision")
    expect(decisions).to_have_count(2)
    expect(decisions.nth(0)).to_contain_text("Asked the prescriber (ph-7)")
    expect(decisions.nth(0).locator(".note")).to_have_text("Which strength: 250 or 500 mg?")
    expect(decisions.nth(1)).to_contain_text("Approved by ph-12")
    expect(decisions.nth(1)).to_contain_text("key rx-desk")
    expect(life.locator('[data-part="pickup"]')).to_contain_text("picked up by the carrier")
    expect(life.locator('[data-part="lots"]')).to_contain_text("AMOXICILLIN-500")
    expect(life.locator('[data-part="lots"]')).to_contain_text("lot default \u00d72")
    expect(life.locator('[data-part="cancellation"]')).to_contain_text("Not requested")
    tracking = page.locator("#tracking tbody tr")
    expect(tracking).to_have_count(4)
    statuses = [tracking.nth(i).get_attribute("data-status") for i in range(4)]
    assert statuses == ["in_transit", "out_for_delivery", "delivered", "in_transit"]
    expect(tracking.nth(3)).to_have_attribute("data-applied", "false")
    expect(tracking.nth(3)).to_contain_text("Heathrow hub")
    expect(tracking.nth(3)).to_contain_text("no: out of order")
    expect(page.locator(".title-row .pill").first).to_have_text("delivered")
    for title in ("Verified by ph-12", "Picked up by the carrier", "Out for delivery", "Delivered"):
        expect(page.locator("#events .ev-title", has_text=title).first).to_be_visible()
    expect(page.locator('#steps .step[data-step="await_pickup"]')).to_have_attribute(
        "data-status", "succeeded"
    )
    screenshot(page, "dashboard-order-lifecycle.png", also=ORDER_SHOT)


def test_a_viewer_key_may_read_the_queue_but_is_told_to_use_a_pharmacist_key(
    rx_server: Server, page: Page
) -> None:
    with rx_server.client() as client:
        (order_id,) = place_awaiting(client)
        asked = client.post(  # the admin key may decide too
            f"/orders/{order_id}/verification",
            json={"decision": "request_clarification", "pharmacist_id": "ph-1", "note": "eGFR?"},
        )
        assert asked.status_code == 202, asked.text

    unlock(page, rx_server, VIEWER_KEY)
    row = page.locator(f'#verifications tr[data-order-id="{order_id}"]:not(.decide-row)')
    expect(row).to_have_attribute("data-verification", "clarification_requested")
    decide(page, order_id, "Approve", "ph-12")
    expect(row.locator(".decide-message")).to_contain_text(
        "This key's role may not decide verifications: use a pharmacist key"
    )
    expect(page.locator(f'tr.decide-row[data-order-id="{order_id}"] form')).to_be_visible()
    with rx_server.client() as client:
        assert client.get(f"/orders/{order_id}").json()["status"] == "awaiting_verification"

    # The viewer sees the decision on the order page, not its note (patient data).
    row.locator("a.order-link").click()
    decision = page.locator('#lifecycle [data-part="verification"] li.decision')
    expect(decision).to_contain_text("Asked the prescriber (ph-1)")
    expect(decision).to_contain_text("this key's role may not read it")
    expect(page.locator("#app")).not_to_contain_text("eGFR?")
    expect(page.locator('#steps .step[data-step="verify_prescription"]')).to_have_attribute(
        "data-status", "waiting"
    )


def test_a_decision_on_an_order_no_longer_waiting_says_so(rx_server: Server, page: Page) -> None:
    with rx_server.client() as client:
        (order_id,) = place_awaiting(client)

    unlock(page, rx_server, PHARMACIST_KEY)
    row = page.locator(f'#verifications tr[data-order-id="{order_id}"]:not(.decide-row)')
    row.get_by_role("button", name="Reject").click()
    form = page.locator(f'tr.decide-row[data-order-id="{order_id}"] form')
    form.locator('input[name="pharmacist_id"]').fill("ph-12")
    form.locator('[name="reason"]').fill("duplicate therapy")
    with rx_server.client() as client:  # meanwhile, the customer cancels it
        cancelled = client.post(f"/orders/{order_id}/cancel", json={"reason": "customer_request"})
        assert cancelled.status_code == 202, cancelled.text
    form.locator('button[type="submit"]').click()
    expect(row.locator(".decide-message")).to_contain_text("No longer waiting for a decision")


# --- a dead job, a step's wait in the queue, times in UTC ----------------------------------------


@pytest.fixture(scope="module")
def stuck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StuckShop]:
    with stuck_shop(tmp_path_factory.mktemp("stuck")) as shop:
        yield shop


def test_a_dead_job_its_queue_wait_and_every_time_in_utc_with_the_local_time_in_a_tooltip(
    stuck: StuckShop, browser: Browser
) -> None:
    with open_page(browser, timezone_id=BROWSER_ZONE, locale="en-US") as page:
        page.goto(f"{stuck.server.url}/")
        queue = page.locator("#kpi-queue")
        expect(queue.locator(".kpi-queue-dead")).to_contain_text("1 dead")
        expect(queue.locator(".kpi-queue-dead")).to_have_class("kpi-queue-dead bad")
        expect(queue.locator(".kpi-value")).to_have_text("0")  # nothing left to run
        expect(page.locator("#live-text")).to_contain_text(" UTC")

        page.goto(f"{stuck.server.url}/#/orders/{stuck.dead}")
        shipment = page.locator('#steps .step[data-step="initiate_shipment"]')
        expect(shipment).to_have_attribute("data-status", "dead")
        expect(shipment.locator(".pill")).to_have_text("\u2298 dead")
        expect(shipment).not_to_contain_text("running")
        expect(shipment.locator(".job")).to_contain_text(BUG)
        retry = f"fulfillment jobs retry {stuck.dead}"
        expect(shipment.locator(".action code")).to_have_text(retry)
        expect(page.locator("#dead-job")).to_contain_text(retry)
        # The steps before it: their wait in the queue, then their run, each shown.
        first = page.locator('#steps .step[data-step="create_prescription"]')
        for stat in ("queued", "ran"):
            expect(first.locator(f"dd.{stat}")).to_have_text(re.compile(r"^[0-9.]+ (ms|s)$"))
        expect(page.locator("#gantt .g-bar.g-queue").first).to_be_attached()

        times = page.locator("#app time")
        expect(times.first).to_be_attached()
        shown = times.evaluate_all(
            "els => els.map(e => [e.getAttribute('datetime'), e.textContent, e.title])"
        )
        assert len(shown) >= 6, shown  # placed, and each event
        for iso, text, title in shown:
            at = datetime.fromisoformat(iso)
            local = at.astimezone(ZoneInfo(BROWSER_ZONE)).strftime("%Y-%m-%d %H:%M:%S")
            assert f"local time ({BROWSER_ZONE}): {local}" in title, (iso, title)
            utc = at.astimezone(UTC).strftime("%H:%M:%S")
            assert text.endswith(" ago") or text.endswith("now") or f"{utc}" in text, (iso, text)
        events = [t for iso, t, _ in shown if re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} UTC", t)]
        assert events, shown  # the event history's times, in UTC and saying so
        screenshot(page, "dashboard-dead-job.png", also=DEAD_JOB_SHOT)
