"""The dashboard as an operator keeps it open: it recovers by itself, reads right, draws its plots.

- an outage longer than 10 s (the stack stopped, then started again on the same port): the page
  keeps retrying (never `closed`) and shows new events once the stack is back;
- a token the server refuses (401 or 403 at the handshake): the page stops retrying and says why;
- the plots: events per second per channel and delivery latency, a point for each live event the
  test published (history read back when a feed is added is not live);
- newest first across feeds after a reload, when every feed's history is read back;
- the row count follows the filter;
- no red (invalid) field before anything was typed;
- at 420 px wide: no horizontal scroll, the key controls on screen.

Screenshots go to the test's temporary folder (pytest's tmp_path), so the tree stays clean.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import jwt
import pytest
from playwright.sync_api import Browser, Page, expect

from realtime_transport import tokens
from realtime_transport.secrets import DEVELOPMENT_SECRET
from tests.browser.conftest import TIMEOUT_MS
from tests.browser.test_dashboard import (
    assert_exactly_once_in_order,
    open_dashboard,
    publish,
    publish_batch,
    record_states,
    rows,
    unique_feed,
    wait_for_rows,
)
from tests.integration.conftest import Stack, start_stack, stop_stack

pytestmark = pytest.mark.browser

# Longer than the ~10 s after which the old page settled in `closed` (5 failed attempts).
OUTAGE_S = 12
# The page's backoff ceiling (RETRY.maxMs in dashboard.js) plus a handshake, with room to spare.
BACK_WITHIN_MS = 10_000 + 15_000
NARROW = 420


def channels_top_to_bottom(page: Page) -> list[tuple[str, int]]:
    return page.eval_on_selector_all(
        '[data-testid="events-table"] tr.event',
        "rows => rows.map(row => [row.dataset.channel, Number(row.dataset.seq)])",
    )


def count_websockets(page: Page) -> list[str]:
    """Every WebSocket the page opens (attempts included) from now on, by URL."""
    opened: list[str] = []
    page.on("websocket", lambda socket: opened.append(socket.url))
    return opened


# --- recovery ---------------------------------------------------------------------------------


@pytest.fixture
def own_stack() -> Iterator[list[Stack]]:
    """Stacks this test starts and stops itself (the outage); whatever still runs stops at the end."""
    stacks: list[Stack] = []
    yield stacks
    for running in stacks:
        if running.process.poll() is None:
            stop_stack(running)


def test_recovers_by_itself_after_an_outage(page: Page, own_stack: list[Stack], tmp_path: Path) -> None:
    first = start_stack()
    own_stack.append(first)
    port = urlparse(first.url).port
    assert port
    # Two feeds: the stack keeps its tables in memory, so after the restart every feed starts at
    # seq 1 again; `before` has seqs the page already holds (new ones would be duplicates to it),
    # `after` was empty, so its events after the restart are new to the page.
    before, after = unique_feed("before"), unique_feed("after")
    open_dashboard(page, first, before, after)
    assert publish_batch(first, before, 3) == [1, 2, 3]
    assert_exactly_once_in_order(page, before, 3)

    record_states(page)
    attempts = count_websockets(page)
    assert stop_stack(first) == 0, "".join(first.output)
    status = page.get_by_test_id("status")
    expect(status).to_have_attribute("data-state", "reconnecting")
    page.wait_for_timeout(OUTAGE_S * 1000)

    # Still trying: backoff delays are at most 0.5, 1, 2 and 4 s before the cap, so at least four
    # attempts fit in the outage; and the page never settled in `closed`.
    states: list[str] = page.evaluate("window.__states")
    assert states, states
    assert all(state.startswith("reconnecting") for state in states), states
    assert len(attempts) >= 4, attempts
    expect(status).to_have_attribute("data-state", "reconnecting")
    expect(status.locator(".status-reason")).to_contain_text("attempt")
    page.screenshot(path=str(tmp_path / "outage.png"))

    # The new run has a new /dev secret, so the page's cookie is stale: it must fetch a new one
    # (GET /) to renew its dev token, which it asks for at every attempt.
    dev_tokens: list[int] = []
    page.on("response", lambda response: "/dev/token" in response.url and dev_tokens.append(response.status))
    second = start_stack("--port", str(port))
    own_stack.append(second)
    assert second.url == first.url
    expect(status).to_have_attribute("data-state", "open", timeout=BACK_WITHIN_MS)
    assert 200 in dev_tokens, dev_tokens
    assert publish_batch(second, after, 3) == [1, 2, 3]
    assert_exactly_once_in_order(page, after, 3)
    assert rows(page, f"feed_{before}") == [3, 2, 1]  # what it had stays, once
    assert stop_stack(second) == 0, "".join(second.output)


def other_secret_token() -> str:
    """Well formed, but signed with a secret the stack does not have: $connect answers 401."""
    return tokens.issue(b"another-secret-entirely-32-bytes-long!", sub="x", channels=["feed_*"])


def no_channels_token() -> str:
    """Signed with the stack's secret, but granting nothing: $connect answers 403."""
    now = int(time.time())
    return jwt.encode({"sub": "nobody", "iat": now, "exp": now + 600, "channels": []}, DEVELOPMENT_SECRET, "HS256")


@pytest.mark.parametrize(
    ("token", "status"),
    [
        pytest.param(other_secret_token, 401, id="401"),
        pytest.param(no_channels_token, 403, id="403"),
    ],
)
def test_a_refused_token_stops_retrying_with_the_reason(
    page: Page, stack: Stack, token: Callable[[], str], status: int
) -> None:
    attempts = count_websockets(page)
    feed = unique_feed("refused")
    page.goto(f"{stack.url}/?feeds={feed}&token={token()}")
    state = page.get_by_test_id("status")
    expect(state).to_have_attribute("data-state", "closed")
    expect(state).to_have_attribute("data-final", "true")
    expect(state.locator(".status-reason")).to_contain_text(f"token refused (HTTP {status}")
    expect(page.get_by_test_id("reconnect")).to_be_visible()
    expect(page.get_by_test_id("connection-panel")).to_have_attribute("open", "")
    # Stopped: no attempt after the refusal, even when the tab comes back or the network does.
    tried = len(attempts)
    assert tried >= 1
    page.evaluate("dispatchEvent(new Event('online'))")
    page.wait_for_timeout(2_000)
    assert len(attempts) == tried, attempts
    expect(state).to_have_attribute("data-state", "closed")


def test_a_fixed_token_that_expires_stops_retrying_with_the_reason(page: Page, stack: Stack) -> None:
    feed = unique_feed("expiring")
    token = tokens.issue(DEVELOPMENT_SECRET.encode(), sub="short-lived", channels=["feed_*"], ttl_seconds=2)
    page.goto(f"{stack.url}/?feeds={feed}&token={token}")
    state = page.get_by_test_id("status")
    expect(state).to_have_attribute("data-state", "open")
    attempts = count_websockets(page)
    # Past its exp (whole seconds) and the server's leeway for clock skew (tokens._LEEWAY_SECONDS).
    page.wait_for_timeout((2 + tokens._LEEWAY_SECONDS + 1.5) * 1000)
    # The fan-out finds the token expired at the next delivery: token_expired, and the connection goes.
    publish(stack, feed, "t.after-expiry", {})
    expect(state).to_have_attribute("data-state", "closed")
    expect(state).to_have_attribute("data-final", "true")
    expect(state.locator(".status-reason")).to_contain_text("token expired")
    expect(page.get_by_test_id("connection-panel")).to_have_attribute("open", "")
    page.wait_for_timeout(1_500)
    assert attempts == [], attempts  # no attempt with a token that cannot work


# --- plots --------------------------------------------------------------------------------------


def test_plots_draw_a_point_for_each_live_event(page: Page, stack: Stack, tmp_path: Path) -> None:
    busy, quiet, old = unique_feed("busy"), unique_feed("quiet"), unique_feed("old")
    publish_batch(stack, old, 4)  # history: read back, never plotted
    open_dashboard(page, stack, busy, quiet, old)
    wait_for_rows(page, f"feed_{old}", 4)
    assert publish_batch(stack, busy, 6) == [1, 2, 3, 4, 5, 6]
    assert publish_batch(stack, quiet, 2) == [1, 2]
    assert publish_batch(stack, old, 1) == [5]
    for feed, count in ((busy, 6), (quiet, 2)):
        wait_for_rows(page, f"feed_{feed}", count)
    wait_for_rows(page, f"feed_{old}", 5)

    rate = page.get_by_test_id("rate-plot")
    for feed, total in ((busy, 6), (quiet, 2), (old, 1)):
        series = rate.locator(f'g.series[data-channel="feed_{feed}"]')
        expect(series).to_have_attribute("data-total", str(total))
        counts = series.locator("circle").evaluate_all("points => points.map(p => Number(p.dataset.count))")
        assert sum(counts) == total and all(count > 0 for count in counts), counts
    expect(page.get_by_test_id("rate-legend").locator(f'li[data-channel="feed_{busy}"]')).to_contain_text("6 in 5 min")

    latency = page.get_by_test_id("latency-plot")
    points = latency.locator("circle").evaluate_all(
        """points => points.map(p => ({channel: p.dataset.channel, seq: Number(p.dataset.seq), ms: Number(p.dataset.ms),
                                        cx: Number(p.getAttribute('cx')), cy: Number(p.getAttribute('cy'))}))"""
    )
    by_channel: dict[str, list[int]] = {}
    for point in points:
        by_channel.setdefault(point["channel"], []).append(point["seq"])
    assert by_channel == {f"feed_{busy}": [1, 2, 3, 4, 5, 6], f"feed_{quiet}": [1, 2], f"feed_{old}": [5]}, points
    width, height = (int(latency.get_attribute(name) or 0) for name in ("width", "height"))
    for point in points:
        assert point["ms"] >= 0, point  # one machine, one clock: nothing arrives before it was received
        assert 0 < point["cx"] <= width and 0 < point["cy"] < height, point  # inside the plot
    expect(page.get_by_test_id("latency-summary")).to_contain_text("9 events · p50 ")
    page.screenshot(path=str(tmp_path / "plots.png"))


# --- the table -------------------------------------------------------------------------------------


def test_newest_first_across_feeds_after_a_reload(page: Page, stack: Stack) -> None:
    a, b = unique_feed("a"), unique_feed("b")
    open_dashboard(page, stack, a, b)
    published: list[tuple[str, int]] = []
    for n in range(4):
        for feed in (a, b) if n % 2 == 0 else (b, a):
            published.append((f"feed_{feed}", publish(stack, feed, "t.step", {"n": n})["seq"]))
            time.sleep(0.01)  # distinct publish times (milliseconds)
    newest_first = list(reversed(published))
    wait_for_rows(page, f"feed_{a}", 4)
    wait_for_rows(page, f"feed_{b}", 4)
    assert channels_top_to_bottom(page) == [list(item) for item in newest_first]

    # A reload reads both histories back, one feed after the other: still one timeline.
    page.reload()
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "open")
    wait_for_rows(page, f"feed_{a}", 4)
    wait_for_rows(page, f"feed_{b}", 4)
    page.wait_for_timeout(800)
    assert channels_top_to_bottom(page) == [list(item) for item in newest_first]

    # A live event goes on top.
    live = publish(stack, a, "t.live", {})["seq"]
    wait_for_rows(page, f"feed_{a}", 5)
    assert channels_top_to_bottom(page)[0] == [f"feed_{a}", live]


def test_row_count_follows_the_filter(page: Page, stack: Stack) -> None:
    feed = unique_feed("mixed")
    open_dashboard(page, stack, feed)
    for type_ in ("order.created", "payment.captured", "order.paid", "payment.failed", "order.shipped"):
        publish(stack, feed, type_, {"id": uuid.uuid4().hex[:6]})
    wait_for_rows(page, f"feed_{feed}", 5)
    count, total = page.get_by_test_id("row-count"), page.get_by_test_id("row-total")
    expect(count).to_have_text("5")
    expect(total).to_be_hidden()

    page.get_by_test_id("filter").fill("payment")
    expect(count).to_have_text("2")
    expect(total).to_have_text("of 5")
    visible = page.locator('[data-testid="events-table"] tr.event:visible')
    expect(visible).to_have_count(2)

    # Rows arriving while filtered count where they match.
    publish(stack, feed, "payment.refunded", {})
    publish(stack, feed, "order.cancelled", {})
    wait_for_rows(page, f"feed_{feed}", 7)
    expect(count).to_have_text("3")
    expect(total).to_have_text("of 7")
    expect(visible).to_have_count(3)

    page.get_by_test_id("filter").fill("nothing-matches-this")
    expect(count).to_have_text("0")
    expect(page.get_by_test_id("empty")).to_have_text("No rows match the filter.")
    page.get_by_test_id("filter").fill("")
    expect(count).to_have_text("7")
    expect(total).to_be_hidden()


RED_FIELDS = """() => {
  const probe = document.createElement('div');
  probe.style.borderColor = 'var(--err)';
  document.body.appendChild(probe);
  const red = getComputedStyle(probe).borderTopColor;
  probe.remove();
  return [...document.querySelectorAll('input, textarea')]
    .filter((field) => field.getClientRects().length && getComputedStyle(field).borderTopColor === red)
    .map((field) => field.dataset.testid || field.name);
}"""


def test_no_red_field_before_anything_was_typed(page: Page, stack: Stack) -> None:
    # No feeds: the send form's required feed field starts empty, which is what turned it red.
    page.goto(stack.url + "/")
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "open")
    for panel in ("send-panel", "control-panel", "connection-panel"):
        page.get_by_test_id(panel).evaluate("details => { details.open = true; }")
    assert page.evaluate(RED_FIELDS) == []

    # Typed and submitted, an invalid id is red (so the check above can see red).
    page.get_by_test_id("feed-input").fill("not a feed id!")
    page.get_by_test_id("add-feed").click()
    assert page.evaluate(RED_FIELDS) == ["feed-input"]


# --- narrow ------------------------------------------------------------------------------------------


def test_narrow_layout_at_420_px(browser: Browser, stack: Stack, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": NARROW, "height": 860}, device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[object] = []
    page.on("pageerror", lambda error: errors.append(error))
    try:
        feeds = [unique_feed("orders"), unique_feed("payments")]
        open_dashboard(page, stack, *feeds)
        for n in range(6):
            publish(stack, feeds[n % 2], "order.created", {"orderId": f"ord-{n}", "customer": "c-2291", "total": 84.5})
        for feed in feeds:
            wait_for_rows(page, f"feed_{feed}", 3)
        page.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)

        overflow = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert overflow[0] <= overflow[1] == NARROW, overflow
        for testid in ("status", "feed-input", "add-feed", "pause", "filter", "row-count", "rate-plot", "latency-plot"):
            control = page.get_by_test_id(testid)
            control.scroll_into_view_if_needed()
            expect(control).to_be_visible()
            box = control.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= NARROW and box["width"] > 0, (testid, box)
        # The table keeps feed, seq, type and a readable payload within the width.
        cells = page.locator('[data-testid="events-table"] tr.event').first.locator("td")
        for cls in ("fid", "num", "type", "payload"):
            box = cells.and_(page.locator(f"td.{cls}")).bounding_box()
            assert box and box["width"] >= 30 and box["x"] + box["width"] <= NARROW, (cls, box)
    finally:
        context.close()
    assert not errors, errors
