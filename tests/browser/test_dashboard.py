"""The dashboard (web/dashboard.html) in a real Chromium against `realtime-transport dev`.

Live events land in the table once each and in seq order; a connection the server drops
(``POST /dev/connections/drop``: no close frame, as a lost network) is re-opened and the
events published meanwhile are caught up, still once each and in order; the send form
publishes. The last test takes the README's screenshot: into a temporary folder, or where
DASHBOARD_SCREENSHOT says (`make screenshot` retakes docs/dashboard.png), so a test run leaves the
tree clean.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.integration.conftest import Stack

pytestmark = pytest.mark.browser

SCREENSHOT_TARGET = os.environ.get("DASHBOARD_SCREENSHOT")
SCREENSHOT_MAX_BYTES = 300_000
# Longer than the client's reorder window (300 ms): a late duplicate would have shown by then.
SETTLE_MS = 800

expect.set_options(timeout=15_000)


# --- helpers --------------------------------------------------------------------------------


def unique_feed(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def http(stack: Stack, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - loopback only
        stack.url + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return response.status, json.loads(response.read() or b"null")


def publish(stack: Stack, feed: str, type_: str, payload: Any, source: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"eventId": f"e-{uuid.uuid4().hex[:12]}", "type": type_, "payload": payload}
    if source:
        body["source"] = source
    status, answer = http(stack, "POST", f"/feeds/{feed}/events", body)
    assert status == 201, answer
    return answer["event"]


def publish_batch(stack: Stack, feed: str, count: int) -> list[int]:
    return [publish(stack, feed, "order.updated", {"n": n})["seq"] for n in range(count)]


def drop_connections(stack: Stack) -> int:
    status, answer = http(stack, "POST", "/dev/connections/drop", {})
    assert status == 200, answer
    return int(answer["dropped"])


def rows(page: Page, channel: str) -> list[int]:
    """The seqs of a channel's rows, top to bottom (the table shows the newest first)."""
    return page.eval_on_selector_all(
        f'[data-testid="events-table"] tr.event[data-channel="{channel}"]',
        "rows => rows.map(row => Number(row.dataset.seq))",
    )


def wait_for_rows(page: Page, channel: str, count: int) -> None:
    page.wait_for_function(
        """([channel, count]) => document.querySelectorAll(
             `[data-testid="events-table"] tr.event[data-channel="${channel}"]`).length >= count""",
        arg=[channel, count],
    )


def assert_exactly_once_in_order(page: Page, feed: str, count: int) -> None:
    """Seqs 1..count, each once, newest on top: no duplicate, no gap, no reordering."""
    channel = f"feed_{feed}"
    wait_for_rows(page, channel, count)
    page.wait_for_timeout(SETTLE_MS)
    assert rows(page, channel) == list(range(count, 0, -1))
    counter = page.get_by_test_id(f"counter-{feed}")
    expect(counter).to_have_attribute("data-events", str(count))
    expect(counter).to_have_attribute("data-last-seq", str(count))
    expect(counter).to_have_attribute("data-lost", "0")


def open_dashboard(page: Page, stack: Stack, *feeds: str) -> None:
    page.goto(f"{stack.url}/?feeds={','.join(feeds)}")
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "open")
    for feed in feeds:
        expect(page.get_by_test_id(f"counter-{feed}")).to_be_attached()


def record_states(page: Page) -> None:
    """From now on, every connection state the top bar shows goes to window.__states."""
    page.evaluate(
        """() => {
          window.__states = [];
          const status = document.querySelector('[data-testid="status"]');
          new MutationObserver(() => window.__states.push(
            `${status.dataset.state}: ${status.querySelector('.status-reason').textContent}`,
          )).observe(status, { attributes: true, attributeFilter: ['data-state'] });
        }"""
    )


# --- tests ------------------------------------------------------------------------------------


def test_live_events_once_and_in_order_across_a_dropped_connection(page: Page, stack: Stack) -> None:
    feed = unique_feed("orders")
    channel = f"feed_{feed}"
    open_dashboard(page, stack, feed)

    assert publish_batch(stack, feed, 5) == [1, 2, 3, 4, 5]
    assert_exactly_once_in_order(page, feed, 5)

    # The server cuts the socket (1006, no close frame) while the page is offline, so it cannot
    # reconnect before the next events are published: they can only arrive by catch-up.
    record_states(page)
    page.context.set_offline(True)
    assert drop_connections(stack) >= 1
    expect(page.get_by_test_id("status")).not_to_have_attribute("data-state", "open")
    assert publish_batch(stack, feed, 5) == [6, 7, 8, 9, 10]
    page.wait_for_timeout(SETTLE_MS)
    assert rows(page, channel) == [5, 4, 3, 2, 1]  # nothing arrived while disconnected
    page.context.set_offline(False)  # the page's `online` handler reconnects at once
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "open")
    states = page.evaluate("window.__states")
    assert any(state.startswith("reconnecting") and "1006" in state for state in states), states
    assert states[-1].startswith("open"), states

    # Live again.
    assert publish_batch(stack, feed, 5) == [11, 12, 13, 14, 15]
    assert_exactly_once_in_order(page, feed, 15)

    # A drop with no outage: the page reconnects within its backoff while events keep coming,
    # so they arrive live, by catch-up, or both (duplicates are the client's to drop).
    assert drop_connections(stack) >= 1
    assert publish_batch(stack, feed, 5) == [16, 17, 18, 19, 20]
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "open")
    assert_exactly_once_in_order(page, feed, 20)


def test_send_form_publishes_an_event_that_appears(page: Page, stack: Stack) -> None:
    feed = unique_feed("payments")
    channel = f"feed_{feed}"
    open_dashboard(page, stack, feed)
    form = page.get_by_test_id("send-form")
    expect(form.locator('input[name="feedId"]')).to_have_value(feed)  # the first feed, preselected
    event_id = form.locator('input[name="eventId"]').input_value()
    assert event_id

    form.locator('input[name="type"]').fill("payment.captured")
    form.locator('textarea[name="payload"]').fill('{"paymentId": "pay-7731", "amount": 1250, "currency": "EUR"}')
    form.get_by_role("button", name="Send", exact=True).click()

    expect(page.get_by_test_id("send-result")).to_have_text(f"201 stored: {channel} seq 1")
    row = page.locator(f'[data-testid="events-table"] tr.event[data-channel="{channel}"]')
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-seq", "1")
    expect(row.locator("td.type")).to_have_text("payment.captured")
    expect(row.locator("td.source")).to_have_text("dashboard")
    expect(row.locator("td.payload")).to_have_text('{"paymentId":"pay-7731","amount":1250,"currency":"EUR"}')

    # Stored under the form's event id, and the form moved on to a fresh one.
    status, history = http(stack, "GET", f"/feeds/{feed}/events")
    assert status == 200
    [stored] = history["items"]
    assert stored["idempotencyKey"] == event_id and stored["data"]["eventId"] == event_id
    assert stored["data"]["payload"] == {"paymentId": "pay-7731", "amount": 1250, "currency": "EUR"}
    expect(form.locator('input[name="eventId"]')).not_to_have_value(event_id)

    # A second send is the next seq, shown once.
    form.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_test_id("send-result")).to_have_text(f"201 stored: {channel} seq 2")
    assert_exactly_once_in_order(page, feed, 2)


# Realistic traffic for the screenshot: three feeds, varied types, sources and payloads.
SCREENSHOT_EVENTS: list[tuple[str, str, str, Any]] = [
    ("orders", "order.created", "checkout", {"orderId": "ord-10481", "customer": "c-2291", "items": 3, "total": 84.5}),
    ("payments", "payment.authorized", "psp", {"paymentId": "pay-7731", "orderId": "ord-10481", "amount": 84.5}),
    ("fleet-7", "vehicle.position", "telematics", {"vehicle": "van-12", "lat": 52.52081, "lon": 13.40944, "kmh": 38}),
    ("orders", "order.paid", "checkout", {"orderId": "ord-10481", "paymentId": "pay-7731"}),
    ("payments", "payment.captured", "psp", {"paymentId": "pay-7731", "amount": 84.5, "currency": "EUR"}),
    ("orders", "order.created", "mobile-app", {"orderId": "ord-10482", "customer": "c-0417", "total": 19.9}),
    ("fleet-7", "delivery.eta", "routing", {"vehicle": "van-12", "stop": 14, "eta": "14:05", "delayMin": 3}),
    ("payments", "payment.failed", "psp", {"paymentId": "pay-7732", "code": "insufficient_funds"}),
    ("orders", "order.packed", "warehouse", {"orderId": "ord-10481", "parcels": 2, "weightKg": 3.4}),
    ("fleet-7", "vehicle.position", "telematics", {"vehicle": "van-12", "lat": 52.51734, "lon": 13.38886, "kmh": 21}),
    ("payments", "refund.requested", "support", {"orderId": "ord-10377", "amount": 12.0, "reason": "damaged item"}),
    ("orders", "order.shipped", "warehouse", {"orderId": "ord-10481", "carrier": "DHL", "tracking": "JD014600006"}),
    ("fleet-7", "delivery.completed", "driver-app", {"vehicle": "van-12", "stop": 14, "signedBy": "R. Weber"}),
    ("orders", "order.cancelled", "mobile-app", {"orderId": "ord-10482", "reason": "customer request"}),
    ("payments", "refund.issued", "psp", {"refundId": "ref-0093", "orderId": "ord-10377", "amount": 12.0}),
    ("fleet-7", "vehicle.position", "telematics", {"vehicle": "van-09", "lat": 52.49871, "lon": 13.41822, "kmh": 44}),
    ("orders", "order.created", "checkout", {"orderId": "ord-10483", "customer": "c-1180", "items": 5, "total": 212.4}),
    ("payments", "payment.authorized", "psp", {"paymentId": "pay-7733", "orderId": "ord-10483", "amount": 212.4}),
    ("fleet-7", "vehicle.stopped", "telematics", {"vehicle": "van-09", "reason": "loading", "durationS": 240}),
    ("orders", "order.paid", "checkout", {"orderId": "ord-10483", "paymentId": "pay-7733"}),
    ("payments", "payment.captured", "psp", {"paymentId": "pay-7733", "amount": 212.4, "currency": "EUR"}),
    ("fleet-7", "delivery.eta", "routing", {"vehicle": "van-09", "stop": 3, "eta": "14:40", "delayMin": 0}),
    ("orders", "order.packed", "warehouse", {"orderId": "ord-10483", "parcels": 1, "weightKg": 7.9}),
    ("payments", "chargeback.opened", "psp", {"paymentId": "pay-7511", "amount": 59.0, "reason": "not received"}),
    ("orders", "order.shipped", "warehouse", {"orderId": "ord-10483", "carrier": "UPS", "tracking": "1Z999AA10123"}),
]


def test_dashboard_screenshot(page: Page, stack: Stack, tmp_path: Path) -> None:
    screenshot = Path(SCREENSHOT_TARGET) if SCREENSHOT_TARGET else tmp_path / "dashboard.png"
    feeds = ["orders", "payments", "fleet-7"]
    open_dashboard(page, stack, *feeds)
    for index, (feed, type_, source, payload) in enumerate(SCREENSHOT_EVENTS):
        publish(stack, feed, type_, payload, source=source)
        if index == 9:
            command = {"commandId": "cmd-route-12", "action": "reroute", "target": {"vehicle": "van-12", "via": "A100"}}
            assert http(stack, "POST", "/feeds/fleet-7/control", command)[0] == 201
        time.sleep(0.1)  # spread the publish times a little
    total = len(SCREENSHOT_EVENTS) + 1
    expect(page.get_by_test_id("row-count")).to_have_text(str(total))
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "open")
    page.get_by_test_id("feed-input").fill("")  # no focus ring or caret in the picture
    page.evaluate("document.activeElement?.blur()")
    page.mouse.move(0, 0)

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), type="png")
    size = screenshot.stat().st_size
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert size < SCREENSHOT_MAX_BYTES, f"{screenshot} is {size} bytes"
