"""``python -m realtime_devstack.chaos --seed N --seconds S``: run the checker, exit 1 on a violation."""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m realtime_devstack.chaos",
        description="Jepsen-style checker: workload + nemesis + checker over the recorded history.",
    )
    parser.add_argument("--seed", type=int, default=None, help="fixes the workload and faults (default: random)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the workload runs")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--subscribers", type=int, default=6)
    parser.add_argument("--late-subscribers", type=int, default=2, help="subscribers that stay away past the window")
    parser.add_argument("--history-limit", type=int, default=30)
    parser.add_argument("--ttl", type=int, default=20, help="history TTL in seconds")
    parser.add_argument("--fault-rate", type=float, default=0.02, help="DynamoDB throttles and 5xx per request")
    parser.add_argument("--lost-rate", type=float, default=0.02, help="lost DynamoDB responses per write")
    parser.add_argument("--writer-kill-rate", type=float, default=0.03)
    parser.add_argument("--fanout-kill-rate", type=float, default=0.1)
    parser.add_argument("--lost-ack-rate", type=float, default=0.05)
    parser.add_argument("--drop-rate", type=float, default=0.7, help="connection drops per subscriber-second")
    parser.add_argument("--histories", type=int, default=3, help="violations printed with their minimal history")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    from ..aws_env import use_local_aws

    # Before the library is imported: fake credentials, no metrics or info logs on stdout.
    use_local_aws(os.environ)
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "chaos")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Chaos")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    from .runner import ChaosConfig, run

    config = ChaosConfig(
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31),
        seconds=args.seconds,
        channels=args.channels,
        producers=args.producers,
        readers=args.readers,
        subscribers=args.subscribers,
        late_subscribers=min(args.late_subscribers, args.subscribers),
        history_limit=args.history_limit,
        history_ttl_s=args.ttl,
        fault_rate=args.fault_rate,
        lost_rate=args.lost_rate,
        writer_kill_rate=args.writer_kill_rate,
        fanout_kill_rate=args.fanout_kill_rate,
        lost_ack_rate=args.lost_ack_rate,
        drop_rate=args.drop_rate,
    )
    result = run(config)
    print(result.report(histories=args.histories), flush=True)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
