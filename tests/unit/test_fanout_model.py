"""The arithmetic of bench/fanout_model.py, the discrete-event model of a fan-out on AWS, on small cases
whose answers are known without it."""

from __future__ import annotations

import math
import random
import sys
from dataclasses import replace

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import fanout_model  # the bench folder is not a package: on sys.path above
from fanout_model import AWS, Measured, Scenario, TokenBucket, simulate

# One worker whose core is the bound: 1 ms of CPU a delivery, 1,000/s, latency negligible beside it.
CPU_BOUND = Measured(cpu_ms=1.0, latency_s=0.001, concurrency=4)
# One worker whose requests in flight are the bound: 10 in flight, 10 ms each: 1,000/s.
LATENCY_BOUND = Measured(cpu_ms=0.001, latency_s=0.010, concurrency=10)
FREE = 64.0  # local cores (a core per worker): no stream, read or invocation, the workers start at 0


@pytest.mark.parametrize("measured", [CPU_BOUND, LATENCY_BOUND])
def test_one_worker_without_a_throttle_takes_n_over_its_rate(measured: Measured) -> None:
    result = simulate(Scenario(2000, 2000, math.inf, 0.0, local_cores=FREE), measured)
    assert result.delivered == 2000 and result.throttled == 0 and result.workers == 1
    assert result.last_s == pytest.approx(2000 / measured.worker_rate, rel=0.02)


def test_workers_with_a_core_each_divide_the_time() -> None:
    one = simulate(Scenario(4000, 4000, math.inf, 0.0, local_cores=FREE), CPU_BOUND)
    four = simulate(Scenario(4000, 1000, math.inf, 0.0, local_cores=FREE), CPU_BOUND)
    assert four.workers == 4 and four.delivered == 4000
    assert four.last_s == pytest.approx(one.last_s / 4, rel=0.02)


def test_shared_cores_stretch_the_workers() -> None:
    # Four CPU-bound workers on one core go no faster than one worker.
    shared = simulate(Scenario(4000, 1000, math.inf, 0.0, local_cores=1.0), replace(CPU_BOUND, endpoint_cpu_ms=0.0))
    assert shared.last_s == pytest.approx(4000 * CPU_BOUND.cpu_ms / 1000, rel=0.02)


def test_the_token_bucket_never_admits_more_than_burst_plus_rate_times_t() -> None:
    bucket = TokenBucket(rate=100.0, burst=20.0)
    rnd = random.Random(7)
    now, admitted = 0.0, 0
    for _ in range(5000):
        now += rnd.expovariate(400.0)  # offered at 4x the rate
        admitted += bucket.take(now)
        assert admitted <= 20 + 100 * now + 1e-9
    assert admitted >= 100 * now * 0.95  # and it admits what it may


def test_a_throttled_fan_out_is_held_to_the_quota_and_loses_nothing() -> None:
    # Two latency-bound workers offer 2,000/s to a quota of 500/s with a burst of 100.
    s = Scenario(3000, 1500, 500.0, 100.0, local_cores=FREE)
    result = simulate(s, LATENCY_BOUND)
    assert result.delivered == 3000 and result.throttled > 0
    floor = (3000 - 100) / 500
    assert floor <= result.last_s <= floor * 1.15


def test_the_aws_path_adds_stream_read_and_start_before_delivery() -> None:
    # Cold: the workers read their buckets (two requests of 8 buckets each), then deliver.
    s = Scenario(2000, 1000, math.inf, 0.0, cold=True, cached=False)
    result = simulate(s, LATENCY_BOUND)
    assert result.stream_s == AWS.stream_s and result.read_s > AWS.versions_s
    assert result.start_s == pytest.approx(AWS.invoke_s + AWS.cold_start_s)
    assert result.last_s == pytest.approx(result.stream_s + result.read_s + result.start_s + result.deliver_s)
    warm = simulate(replace(s, cold=False, cached=True), LATENCY_BOUND)
    assert warm.read_s == pytest.approx(AWS.versions_s), "warm: the versions' BatchGetItem alone"
    assert warm.last_s == pytest.approx(result.last_s - (result.read_s - warm.read_s) - AWS.cold_start_s)


def test_a_cold_read_is_planned_as_the_fan_out_plans_it() -> None:
    # 100,000 over 16 buckets: 6,250 each, past K = 2,000, so 4 ranges each: 64 requests.
    requests = fanout_model.read_plan(100_000, 2000, AWS)
    assert len(requests) == 64 and all(sum(units) <= 2000 for units in requests)
    assert sum(sum(units) for units in requests) == 100_000, "everyone read once"
    # Small buckets share a worker, up to K.
    small = fanout_model.read_plan(2000, 1000, AWS)
    assert [len(units) for units in small] == [8, 8] and [sum(u) for u in small] == [1000, 1000]
    # A worker's read: its core parses every entry (here the bound), pages and partitions aside.
    assert fanout_model.read_seconds([1000, 1000], 0.05, AWS) == pytest.approx(0.1)


def test_lambda_scaling_spaces_out_environments_past_its_burst() -> None:
    aws = replace(AWS, scale_burst=10, scale_per_s=10.0, invoke_parallel=1000)
    s = Scenario(30, 1, math.inf, 0.0, cold=False, cached=True)
    starts = fanout_model.worker_plan(s, LATENCY_BOUND, aws).starts
    # 10 at once, then one every 0.1 s: the 30th a little under 2 s later.
    assert starts[9] == pytest.approx(starts[0])
    assert starts[-1] - starts[0] == pytest.approx(2.0, abs=0.01)
