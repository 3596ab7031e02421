"""Rooms in the dashboard (web/dashboard.html's room view) in a real Chromium against `realtime-transport dev`.

Two pages, two members (tokens for `alice` and `bob`, with the `write` claim for room channels),
join one room: each lists both, both edit the shared document at the same time and each sees the
other's change, both end with the same document at the same version; a page that closes is seen
leaving by the other (`presence.leave`, reason `disconnected`, once the stack's short grace
period has passed and its sweeper has run).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import TIMEOUT_MS, VIEWPORT
from tests.integration.conftest import Stack, start_stack, stop_stack

pytestmark = pytest.mark.browser

expect.set_options(timeout=15_000)

# A closed tab leaves after the grace period, found by the sweeper's next pass: short ones here.
GRACE_SECONDS = 1
SWEEP_SECONDS = 1
# Grace + sweep interval + stream polling, with room to spare on a slow machine.
LEAVE_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = start_stack(
        "--presence-grace-seconds", str(GRACE_SECONDS), "--presence-sweep-seconds", str(SWEEP_SECONDS)
    )
    yield running
    assert stop_stack(running) == 0, "".join(running.output)


def member_token(sub: str) -> str:
    """A token for `sub`, signed as the stack signs (REALTIME_TOKEN_SECRET, else the development secret)."""
    from realtime_transport.secrets import DEVELOPMENT_SECRET
    from realtime_transport.tokens import issue

    secret = os.environ.get("REALTIME_TOKEN_SECRET") or DEVELOPMENT_SECRET
    return issue(secret.encode(), sub=sub, channels=["feed_*", "room_*"], write=["room_*"], ttl_seconds=3600)


@pytest.fixture
def second_page(browser: Browser) -> Iterator[Page]:
    """Another page in its own context (another tab of another user); page errors fail the test."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    errors: list[Any] = []
    opened.on("pageerror", lambda error: errors.append(error))
    yield opened
    context.close()
    assert not errors, f"uncaught errors on the second page: {errors}"


def open_room(page: Page, stack: Stack, room: str, sub: str) -> None:
    query = urlencode({"room": room, "token": member_token(sub), "name": sub.title()})
    page.goto(f"{stack.url}/?{query}")
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "open")
    expect(page.get_by_test_id("room-view")).to_have_attribute("data-status", "joined")


def wait_for_members(page: Page, expected: list[str]) -> None:
    page.wait_for_function(
        """(expected) => {
             const items = document.querySelectorAll('[data-testid="room-members"] li');
             const ids = [...items].map((li) => li.dataset.memberId);
             return JSON.stringify(ids.sort()) === JSON.stringify([...expected].sort());
           }""",
        arg=expected,
        timeout=LEAVE_TIMEOUT_MS,
    )


def document_of(page: Page) -> tuple[int, Any]:
    """The version and the state document the page shows."""
    state = page.get_by_test_id("room-state")
    return int(state.get_attribute("data-version") or "0"), json.loads(state.text_content() or "null")


def wait_for_document(page: Page, expected: Any) -> None:
    page.wait_for_function(
        """(expected) => {
             try {
               return JSON.stringify(JSON.parse(document.querySelector('[data-testid="room-state"]').textContent))
                 === JSON.stringify(expected);
             } catch { return false; }
           }""",
        arg=expected,
    )


def send_patch(page: Page, patch: Any) -> None:
    page.get_by_test_id("patch-input").fill(json.dumps(patch))
    page.get_by_test_id("patch-send").click()


def test_two_pages_share_a_room_document_and_see_each_other_come_and_go(
    page: Page, second_page: Page, stack: Stack
) -> None:
    room = f"board-{uuid.uuid4().hex[:8]}"
    alice, bob = page, second_page
    open_room(alice, stack, room, "alice")
    open_room(bob, stack, room, "bob")

    # Presence: each lists both, and marks its own member.
    for each in (alice, bob):
        wait_for_members(each, ["alice", "bob"])
        expect(each.get_by_test_id("room-member-count")).to_have_text("2")
    expect(alice.locator('[data-testid="room-members"] li[data-member-id="alice"] .you')).to_have_count(1)
    expect(bob.locator('[data-testid="room-members"] li[data-member-id="bob"] .you')).to_have_count(1)

    # Both edit at once (different paths, so neither conflicts): each sees the other's change.
    alice.get_by_test_id("patch-input").fill(json.dumps({"cards": {"c1": {"title": "Write spec", "by": "alice"}}}))
    bob.get_by_test_id("patch-input").fill(json.dumps({"cards": {"c2": {"title": "Review", "by": "bob"}}}))
    alice.get_by_test_id("patch-send").click()
    bob.get_by_test_id("patch-send").click()
    for each in (alice, bob):
        expect(each.get_by_test_id("patch-result")).to_have_attribute("data-outcome", "patched")
    both = {"cards": {"c1": {"title": "Write spec", "by": "alice"}, "c2": {"title": "Review", "by": "bob"}}}
    for each in (alice, bob):
        wait_for_document(each, both)

    # One after the other: bob moves alice's card, alice sees it; the same document, the same version.
    send_patch(bob, {"cards": {"c1": {"state": "done"}}, "title": "Sprint 12"})
    expect(bob.get_by_test_id("patch-result")).to_have_attribute("data-outcome", "patched")
    done = {"title": "Write spec", "by": "alice", "state": "done"}
    final = {"cards": {"c1": done, "c2": {"title": "Review", "by": "bob"}}, "title": "Sprint 12"}
    for each in (alice, bob):
        wait_for_document(each, final)
    assert document_of(alice) == document_of(bob)
    assert document_of(alice)[0] >= 3, "three changes, one version each"
    expect(alice.locator('[data-testid="room-activity"] li[data-type="room.state"]')).not_to_have_count(0)

    # Bob's page closes: alice sees bob leave.
    bob.context.close()
    wait_for_members(alice, ["alice"])
    leave = alice.locator('[data-testid="room-activity"] li[data-type="presence.leave"][data-member="bob"]')
    expect(leave).to_have_count(1)
    expect(leave).to_contain_text("disconnected")
    expect(alice.get_by_test_id("room-member-count")).to_have_text("1")
