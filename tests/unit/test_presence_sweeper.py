"""functions/presence_sweeper and functions/rooms_outbox: the handlers around the presence library, on moto."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import LambdaContext, load_function


class ClockContext(LambdaContext):
    """A Lambda context whose remaining time runs on a fake clock that the handler's sleeps advance."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.elapsed_s = 0.0
        self.sleeps: list[float] = []

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self.timeout_ms - self.elapsed_s * 1000))

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.elapsed_s += seconds


@pytest.fixture
def sweeper(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("WEBSOCKET_MANAGEMENT_URL", "https://abc123.execute-api.us-east-1.amazonaws.com/live")
    module = load_function("presence_sweeper")
    yield module
    get_settings.cache_clear()


class _Registry:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.passes: list[float] = []

    def sweep(self, now: float, probe: Any, deadline: Any = None) -> Any:
        self.passes.append(now)
        if len(self.passes) <= self.failures:
            raise RuntimeError("connections table: throttled")
        return {"examined": 0}


def test_an_invocation_passes_every_interval_while_a_pass_still_fits(sweeper: Any) -> None:
    sweeper.registry = registry = _Registry()
    context = ClockContext(timeout_ms=70_000)

    passes = sweeper.sweep_until_out_of_time(context, 10.0, sleep=context.sleep)

    # At 0, 10, ..., 60 s: the pass at 60 s still has 10 s (more than PASS_BUDGET_MS); one at 70 s would not.
    assert passes == len(registry.passes) == 7
    assert len(context.sleeps) == 6 and all(9.0 < s <= 10.0 for s in context.sleeps)
    assert context.get_remaining_time_in_millis() >= sweeper.PASS_BUDGET_MS


def test_a_short_invocation_passes_once(sweeper: Any) -> None:
    sweeper.registry = registry = _Registry()
    context = ClockContext(timeout_ms=9_000)
    assert sweeper.sweep_until_out_of_time(context, 10.0, sleep=context.sleep) == 1
    assert len(registry.passes) == 1 and context.sleeps == []


def test_a_failed_pass_is_retried_by_the_next_and_only_all_failing_is_an_error(sweeper: Any) -> None:
    sweeper.registry = _Registry(failures=2)
    context = ClockContext(timeout_ms=40_000)
    assert sweeper.sweep_until_out_of_time(context, 10.0, sleep=context.sleep) == 4

    sweeper.registry = _Registry(failures=100)
    context = ClockContext(timeout_ms=40_000)
    with pytest.raises(RuntimeError, match="throttled"):  # the Errors alarm sees an invocation that did nothing
        sweeper.sweep_until_out_of_time(context, 10.0, sleep=context.sleep)


class _ManagementApi:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def get_connection(self, ConnectionId: str) -> Any:
        self.asked.append(ConnectionId)
        if isinstance(self.answer, Exception):
            raise self.answer
        return {"LastActiveAt": self.answer}


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Get"
    )


def test_the_probe_reads_last_active_at_and_takes_410_for_gone(sweeper: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    active = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    api = _ManagementApi(active)
    monkeypatch.setattr(sweeper, "management_api", lambda: api)
    assert sweeper.probe("c1") == active.timestamp()
    assert api.asked == ["c1"]

    api.answer = _client_error("GoneException", 410)
    assert sweeper.probe("c1") is None
    api.answer = _client_error("LimitExceededException", 429)
    with pytest.raises(sweeper.ProbeFailed):  # unknown: the registry decides nothing about it this pass
        sweeper.probe("c1")


def test_the_management_client_is_the_stages_endpoint(sweeper: Any) -> None:
    client = sweeper.management_api()
    assert client.meta.endpoint_url == "https://abc123.execute-api.us-east-1.amazonaws.com/live"
    assert client.meta.service_model.service_name == "apigatewaymanagementapi"


def test_the_handler_takes_a_vanished_connection_out_of_its_room(sweeper: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime_transport.rooms import Presence

    presence = Presence(sweeper.realtime, "R")
    presence.join("vanished", "alice")
    presence.join("alive", "bob")
    lease = sweeper.realtime.settings.presence_lease_seconds
    later = time.time() + lease + 1
    monkeypatch.setattr(sweeper, "clock", lambda: later)  # both leases are over
    # bob's socket was active just now (no heartbeat reached us, but API Gateway saw traffic)
    monkeypatch.setattr(sweeper, "probe", lambda connection_id: None if connection_id == "vanished" else later)

    assert sweeper.lambda_handler({}, LambdaContext()) == {"passes": 1}  # 10 s left: one pass

    assert presence.member("alice") is None  # its lease ran out and API Gateway says it is gone: timeout
    assert presence.member("bob") is not None  # active within the lease: renewed


def test_the_rooms_outbox_handler_publishes_both_streams_and_reports_failures(aws: Any) -> None:
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    outbox = load_function("rooms_outbox")
    room = {
        "pk": {"S": "transport#room#R"},
        "sk": {"N": "0"},
        "kind": {"S": "room"},
        "lastChange": {"S": json.dumps({"version": 1, "kind": "room.metadata", "metadata": {"a": 1}, "paths": []})},
    }
    member = {
        "pk": {"S": "room#transport#R"},
        "sk": {"S": "member#alice"},
        "memberId": {"S": "alice"},
        "member": {"S": "{}"},
        "session": {"S": "0001700000000000.abcd1234"},
        "rev": {"N": "1"},
        "joinedAt": {"N": "1700000000000"},
    }

    def record(image: dict[str, Any], number: str, name: str = "INSERT") -> dict[str, Any]:
        keys = {"pk": image["pk"], "sk": image["sk"]}
        return {"eventName": name, "dynamodb": {"Keys": keys, "NewImage": image, "SequenceNumber": number}}

    event = {"Records": [record(room, "1", "MODIFY"), record(member, "2")]}
    assert outbox.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    history = outbox.realtime.channel("room_R").history(limit=10)
    assert [item.type for item in history.items] == ["room.metadata", "presence.join"]
    # A retry of the same records replays their keys: nothing twice.
    assert outbox.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert len(outbox.realtime.channel("room_R").history(limit=10).items) == 2

    # A failure of the room's record is reported for Lambda to retry from it.
    broken = {**room, "lastChange": {"S": json.dumps({"version": 2, "kind": "room.metadata", "metadata": {}})}}
    outbox.rooms.realtime = _FailingRealtime()
    try:
        response = outbox.lambda_handler({"Records": [record(broken, "3", "MODIFY")]}, LambdaContext())
    finally:
        outbox.rooms.realtime = outbox.realtime
    assert response == {"batchItemFailures": [{"itemIdentifier": "3"}]}
    get_settings.cache_clear()


class _FailingRealtime:
    name = "transport"

    def channel(self, name: str) -> _Failing:
        return _Failing()


class _Failing:
    def publish(self, **kwargs: Any) -> Any:
        from realtime_transport.errors import StoreUnavailable

        raise StoreUnavailable("events table: throttled")


def test_the_sample_stream_events_pass_their_mappings_filters_and_publish(aws: Any) -> None:
    from realtime_devstack import template
    from realtime_devstack.stream_poller import parse_filter_criteria, passes
    from realtime_transport.settings import get_settings
    from tests.conftest import sample_event

    mappings = {m["event"]: m for m in template.event_source_mappings(template.load_template())}
    room_event, member_event = (
        sample_event("dynamodb_stream_room_change"),
        sample_event("dynamodb_stream_member_insert"),
    )
    rooms = parse_filter_criteria(mappings["RoomChanges"]["filter_criteria"])
    members = parse_filter_criteria(mappings["PresenceChanges"]["filter_criteria"])
    assert all(passes(rooms, r) and not passes(members, r) for r in room_event["Records"])
    assert all(passes(members, r) and not passes(rooms, r) for r in member_event["Records"])

    get_settings.cache_clear()
    outbox = load_function("rooms_outbox")
    for event in (room_event, member_event):
        assert outbox.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    items = outbox.realtime.channel("room_R").history(limit=10).items
    assert [(item.type, item.data.get("by") or item.data.get("memberId")) for item in items] == [
        ("room.state", "alice"),
        ("presence.join", "alice"),
    ]
    get_settings.cache_clear()
