"""Small helpers shared by the benchmarks: environment, tables, goals, the local stack."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from realtime_devstack import process
from realtime_devstack.aws_env import LOCAL_AWS_ENV, use_local_aws
from realtime_devstack.process import StackProcess

REPO = Path(__file__).resolve().parents[1]  # realtime_transport and realtime_devstack: the editable install

# Fake credentials (realtime_devstack.aws_env) and quiet Powertools, as tests/conftest.py sets them.
FAKE_AWS_ENV = {
    **LOCAL_AWS_ENV,
    "POWERTOOLS_METRICS_NAMESPACE": "RealtimeTransportBench",
    "POWERTOOLS_SERVICE_NAME": "bench",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "EVENTS_TABLE_NAME": "bench-events",
    "CONNECTIONS_TABLE_NAME": "bench-connections",
}


def fake_aws_env() -> None:
    """Set the fake environment in this process (before boto3 reads it)."""
    use_local_aws(os.environ)
    os.environ.update(FAKE_AWS_ENV)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain left/right aligned table (numbers right-aligned)."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]
    for n, row in enumerate(cells):
        aligned = (c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        print("  ".join(aligned).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle or waiting on I/O) since boot (Linux)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def goal(met: bool, text: str) -> None:
    print(f"GOAL {'MET' if met else 'MISSED'}: {text}")


# --- the local stack as a subprocess (as tests/integration/conftest.py runs it) ----------------

# The stack signs cursors and checks subscriber tokens with this (REALTIME_TOKEN_SECRET).
STACK_SECRET = "bench-secret-for-the-local-stack-only"  # noqa: S105


def reader_token(channels: list[str]) -> str:
    """A subscriber token for the stack's history route (`Authorization: Bearer`)."""
    from realtime_transport import tokens

    return tokens.issue(STACK_SECRET.encode(), sub="bench", channels=channels)


Stack = StackProcess


def start_stack(*args: str) -> Stack:
    """The local stack as a child process, signing tokens with STACK_SECRET; its output goes to stderr."""
    return process.start(*args, env={"REALTIME_TOKEN_SECRET": STACK_SECRET}, echo=True)


def stop_stack(stack: Stack) -> int:
    return stack.stop()


if __name__ == "__main__":
    print("helpers for the benchmarks in bench/; nothing to measure here")
