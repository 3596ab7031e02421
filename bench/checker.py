"""The Jepsen-style checker (realtime_devstack.chaos) for about 30 s under its default nemesis.

Prints the operations recorded and checked per second (of the whole run, and of the checker's own
pass over the history), the violations it found, the faults it injected and what the workload
reached. Figures only: the run is in-process moto on a shared machine, nothing here is timed
against a goal. `--seconds` and `--seed` change the run (the seed fixes the workload and the fault
schedule; thread interleavings vary).
"""

from __future__ import annotations

import argparse

from _common import fake_aws_env, table

fake_aws_env()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    from realtime_devstack.chaos import ChaosConfig, run

    result = run(ChaosConfig(seed=args.seed, seconds=args.seconds))
    check_rate = result.ops_checked / result.check_s if result.check_s else float("inf")
    print(f"seed {args.seed}, {args.seconds:g} s of workload, {result.elapsed_s:.1f} s with quiescence")
    table(
        ["figure", "value"],
        [
            ["operations checked", result.ops_checked],
            ["operations/s (run)", round(result.ops_per_s, 1)],
            ["operations/s (checker pass)", round(check_rate)],
            ["violations", len(result.violations)],
            ["503s", len(result.fivexx)],
        ],
    )
    print()
    table(["fault injected", "count"], sorted(result.fault_kinds().items()))
    print()
    table(["reached", "count"], sorted((*result.coverage().items(), *result.log.items())))
    if result.violations:
        print()
        print(result.report())


if __name__ == "__main__":
    main()
