"""Cold import of the HTTP handler (functions/http_api/app.py) against a bare `import boto3`.

Each sample is a fresh interpreter that times only the import (time.perf_counter around it), as a
Lambda cold start's init phase would, with the function's folder first on sys.path and its
environment set. The two kinds alternate, RUNS of each. Goal: the handler import costs at most 1.5x
a bare boto3 import (the median of the ratios within adjacent pairs, which resists machine load).
One extra run under `-X importtime` shows what the handler import pulls in.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from _common import FAKE_AWS_ENV, REPO, STACK_SECRET, goal, table

RUNS = 15
GOAL_RATIO = 1.5
CODE_DIR = REPO / "functions" / "http_api"

HANDLER = f"""
import sys, time
sys.path.insert(0, {str(CODE_DIR)!r})
started, cpu = time.perf_counter(), time.process_time()
import app
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
heavy = [m for m in ("boto3", "botocore.session", "botocore.client", "jwt", "aiohttp", "moto") if m in sys.modules]
print(elapsed, cpu, len(sys.modules), ",".join(heavy) or "-")
"""
BOTO3 = """
import sys, time
started, cpu = time.perf_counter(), time.process_time()
import boto3
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
print(elapsed, cpu, len(sys.modules), "-")
"""


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "PYTHON"))}
    env.update(FAKE_AWS_ENV, AWS_LAMBDA_FUNCTION_NAME="bench-http-api", REALTIME_TOKEN_SECRET=STACK_SECRET)
    return env


def sample(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter on our own code
        [sys.executable, *flags, "-c", code],
        env=environment(),
        cwd=CODE_DIR,
        capture_output=True,
        text=True,
        check=True,
    )


def below_app(stderr: str) -> list[tuple[str, int, int]]:
    """(module, cumulative us, self us) of the heaviest imports below `app`, from -X importtime.

    importtime prints a module after its children, indented two spaces a level: `app`'s imports
    are the indented lines just before its own unindented line.
    """
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            own, cumulative, name = line.removeprefix("import time:").split("|")
            rows.append((name[1:].rstrip(), int(cumulative), int(own)))
    end = next(i for i, row in enumerate(rows) if row[0] == "app")
    start = end
    while start > 0 and rows[start - 1][0].startswith(" "):
        start -= 1
    return rows[start:end]


def main() -> None:
    for code in (HANDLER, BOTO3):
        sample(code)  # warm the OS file cache and the .pyc files of both sides once
    handler_runs: list[tuple[float, float, int, str]] = []
    boto3_runs: list[tuple[float, float, int, str]] = []
    for _ in range(RUNS):
        for code, runs in ((HANDLER, handler_runs), (BOTO3, boto3_runs)):
            seconds, cpu, modules, heavy = sample(code).stdout.split()
            runs.append((float(seconds), float(cpu), int(modules), heavy))
    handler = statistics.median(r[0] for r in handler_runs)
    boto3 = statistics.median(r[0] for r in boto3_runs)
    # Each handler sample ran right before its boto3 sample: the ratio within a pair shrugs off the
    # load other processes put on a shared machine over the run.
    paired = statistics.median(h[0] / b[0] for h, b in zip(handler_runs, boto3_runs, strict=True))
    fastest = min(r[0] for r in handler_runs) / min(r[0] for r in boto3_runs)
    cpu_ratio = statistics.median(r[1] for r in handler_runs) / statistics.median(r[1] for r in boto3_runs)

    print(f"Cold import, fresh interpreter per sample, {RUNS} alternating samples each\n")
    rows: list[list[object]] = []
    for label, runs in (("import app (functions/http_api)", handler_runs), ("import boto3", boto3_runs)):
        times = sorted(r[0] * 1000 for r in runs)
        cpu = statistics.median(r[1] * 1000 for r in runs)
        rows.append([label, statistics.median(times), times[0], times[-1], cpu, runs[0][2], runs[0][3]])
    headers = ["import", "median ms", "min ms", "max ms", "median cpu ms", "modules", "heavy modules loaded"]
    table(headers, rows)
    print(f"\nratio handler / boto3: {handler / boto3:.2f}x of the medians, {paired:.2f}x median of the paired ratios,")
    print(f"                       {fastest:.2f}x of the fastest samples, {cpu_ratio:.2f}x of the median CPU times")

    traced = sample(HANDLER, "-X", "importtime")
    print("\nheaviest imports under `import app` (-X importtime, one run; cumulative includes children):\n")
    imports = below_app(traced.stderr)
    top = sorted(imports, key=lambda r: -r[1])[:5]
    table(["module", "cumulative ms", "self ms"], [[n, c / 1000, s / 1000] for n, c, s in top])
    by_package: dict[str, list[int]] = {}
    for name, _, own in imports:
        entry = by_package.setdefault(name.strip().split(".")[0], [0, 0])
        entry[0], entry[1] = entry[0] + 1, entry[1] + own
    print("\nself time by top-level package (the 6 heaviest):\n")
    heaviest = sorted(by_package.items(), key=lambda kv: -kv[1][1])[:6]
    table(["package", "modules", "self ms"], [[name, n, own / 1000] for name, (n, own) in heaviest])
    botocore = [line.split("|")[-1].strip() for line in traced.stderr.splitlines() if "| " in line]
    botocore = [m for m in botocore if m == "botocore" or m.startswith(("botocore.", "boto3"))]
    print(f"\nbotocore/boto3 modules imported by the handler: {len(botocore)} ({', '.join(botocore[:6]) or 'none'})\n")
    goal(paired <= GOAL_RATIO, f"handler import is {paired:.2f}x a bare boto3 import (paired median, <= {GOAL_RATIO})")


if __name__ == "__main__":
    main()
