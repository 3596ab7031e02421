"""Cost of one TransactWriteItems on moto's DynamoDB, by table size, unpatched vs patched.

    .venv/bin/python bench/moto_transactions.py

The transaction is the producer's write: 2 Puts guarded by attribute_not_exists, into a
(channel, seq) table with a NEW_IMAGE stream, through boto3 under ``mock_aws``. Each variant runs
in its own fresh interpreter running the same code; the only difference is whether
``realtime_devstack.moto_dynamodb.install()`` is called first.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = (500, 5000)
# (warm-up, measured) transactions per size; unpatched moto costs ~0.5 s per call at 5,000 items.
RUNS = {"unpatched": {500: (3, 25), 5000: (1, 9)}, "patched": {500: (10, 100), 5000: (10, 100)}}
ENV = {
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}


def measure(variant: str) -> dict[int, float]:
    """Median ms of one transaction at each table size (runs inside the worker process)."""
    os.environ.update(ENV)
    import boto3
    from moto import mock_aws

    if variant == "patched":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local"))
        from realtime_devstack import moto_dynamodb

        moto_dynamodb.install()

    def item(channel: str, seq: int) -> dict[str, Any]:
        return {"channel": {"S": channel}, "seq": {"N": str(seq)}, "payload": {"S": "p" * 200}}

    results: dict[int, float] = {}
    with mock_aws():
        ddb: Any = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName="events",
            KeySchema=[
                {"AttributeName": "channel", "KeyType": "HASH"},
                {"AttributeName": "seq", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "channel", "AttributeType": "S"},
                {"AttributeName": "seq", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
        )
        filled, next_seq = 0, 0
        for size in SIZES:
            while filled < size:  # the fill is the same batch writes in both variants
                batch = [{"PutRequest": {"Item": item("fill", filled + i)}} for i in range(25)]
                ddb.batch_write_item(RequestItems={"events": batch})
                filled += 25
            warmup, runs = RUNS[variant][size]
            times = []
            for n in range(warmup + runs):
                puts = [
                    {
                        "Put": {
                            "TableName": "events",
                            "Item": item("bench", next_seq + k),
                            "ConditionExpression": "attribute_not_exists(seq)",
                        }
                    }
                    for k in (0, 1)
                ]
                next_seq += 2
                start = time.perf_counter()
                ddb.transact_write_items(TransactItems=puts)
                if n >= warmup:
                    times.append(time.perf_counter() - start)
            results[size] = statistics.median(times) * 1000
    return results


def run_worker(variant: str) -> dict[int, float]:
    proc = subprocess.run(  # noqa: S603 - this interpreter, this file
        [sys.executable, __file__, "--worker", variant], capture_output=True, text=True, check=True
    )
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(measure(sys.argv[2])))
        return
    started = time.perf_counter()
    res = {variant: run_worker(variant) for variant in ("unpatched", "patched")}
    small, large = SIZES
    print(f"TransactWriteItems (2 conditional Puts, stream on): median ms per call, moto {_moto_version()}")
    print(f"{'table items':>12} | {'unpatched':>10} | {'patched':>10} | {'speedup':>8}")
    for size in SIZES:
        u, p = res["unpatched"][size], res["patched"][size]
        print(f"{size:>12,} | {u:>10.2f} | {p:>10.2f} | {u / p:>7.1f}x")
    for variant in ("unpatched", "patched"):
        ratio = res[variant][large] / res[variant][small]
        print(f"{variant:>9} {large}/{small} ratio: {ratio:.2f}")
    verdict = "OK" if res["patched"][large] <= 1.5 * res["patched"][small] else "MISSED"
    print(f"goal (patched cost at {large:,} within 1.5x of {small:,}): {verdict}")
    print(f"total bench time {time.perf_counter() - started:.0f} s")


def _moto_version() -> str:
    from importlib.metadata import version

    return version("moto")


if __name__ == "__main__":
    main()
