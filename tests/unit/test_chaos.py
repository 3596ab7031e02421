"""The Jepsen-style checker (realtime_devstack.chaos): no violation under its nemesis, and it catches
bugs planted in the library (a checker that cannot fail proves nothing).

Each run is seeded (workload and fault schedule); thread interleavings still vary, so the
assertions are about what must hold for every interleaving.
"""

from __future__ import annotations

from typing import Any

import pytest

from realtime_devstack.chaos import ChaosConfig, ChaosResult, minimal_history, run

# Every kind of fault the nemesis has, each of which a short run must have injected at least once.
FAULT_KINDS = (
    "throttle",
    "5xx",
    "lost response",
    "transaction conflict",
    "gsi lag",
    "writer killed",
    "fanout killed",
    "subscriber dropped",
    "lost ack",
)


def test_no_violation_under_the_nemesis() -> None:
    # The default DynamoDB fault rates; kills a little more often than the default so that a
    # three-second run is sure to have some of each.
    result = run(ChaosConfig(seed=20240611, seconds=3.0, writer_kill_rate=0.1, fanout_kill_rate=0.3))
    assert result.violations == [], result.report()
    assert result.fivexx == [], result.report()
    kinds = result.fault_kinds()
    missing = [kind for kind in FAULT_KINDS if not kinds.get(kind)]
    assert not missing, f"no {missing} injected: {result.report()}"
    coverage = result.coverage()
    assert coverage.get("publish created", 0) > 20 and coverage.get("publish refused (409)", 0) > 0, coverage
    assert result.log["reader tombstones"] + result.log["writer tombstones"] > 0, result.log


def _drop_every_eleventh_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """History (and so every catch-up) skips seqs 5, 16, 27, ... as if they were tombstones."""
    from realtime_transport import channel

    original = channel._LogReader._event_of

    def event_of(self: Any, position: Any) -> Any:
        event = original(self, position)
        return None if event is not None and event.seq % 11 == 5 else event

    monkeypatch.setattr(channel._LogReader, "_event_of", event_of)


def _skip_tombstoning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader passes an abandoned position without filling it: a late writer could still land there."""
    from realtime_transport import channel

    monkeypatch.setattr(channel.Channel, "_tombstone", lambda self, seq, earliest, latest, now: None)


@pytest.mark.parametrize(
    ("plant", "expected", "options"),
    [
        (_drop_every_eleventh_event, ("a", "page skipped an event"), {}),
        (_skip_tombstoning, ("b", "page passed an unfilled position"), {"writer_kill_rate": 0.3}),
    ],
    ids=["history drops an event", "a reader skips tombstoning"],
)
def test_the_checker_catches_a_planted_bug(
    monkeypatch: pytest.MonkeyPatch, plant: Any, expected: tuple[str, str], options: dict[str, Any]
) -> None:
    plant(monkeypatch)
    result: ChaosResult = run(ChaosConfig(seed=7, seconds=1.5, channels=2, subscribers=4, **options))
    found = {(violation.invariant, violation.check) for violation in result.violations}
    assert expected in found, result.report()
    violation = next(v for v in result.violations if (v.invariant, v.check) == expected)
    history = minimal_history(result.ops, violation)
    assert history, "a violation comes with the operations that show it"
    assert {op.channel for op in history} <= {violation.channel, None}, "only the offending channel"
    report = result.report()
    assert f"seed {result.config.seed}" in report and "minimal history" in report
