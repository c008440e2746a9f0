"""Failover benchmark: drflow on Temporal against the same steps as a plain Python script, same sandbox.

Run by hand from the repository root (never from the tests):

    .venv/bin/python benchmarks/failover.py --runs 5

Each run builds two fresh sandboxes (BIND pair, PostgreSQL primary + streaming standby, region apps, on free
ports): one for a drflow failover, one for the script. For drflow it also starts a fresh Temporal dev server
(SQLite file by default, ``--memory`` for in-memory) and an in-process worker
(``workers.worker.build_worker``), starts a planned failover of sandbox-app to region-b, polls the ``status``
query and approves the gate with the ``approve`` Update as soon as it opens. The approval wait is reported
apart and is not part of the RTO comparison.

Figures (seconds unless said otherwise):

- RTO after approval: from sending the approve Update until the workflow's result reached the client (the
  operator's view). The script's equivalent: from "go" (the DNS plan is computed, which is what the operator
  approves) until the last step returned.
- Irreducible waits: promotion (``PromoteResult.duration_ms``) + propagation
  (``PropagationResult.elapsed_ms``) + max(served TTL, health minimum). The TTL wait and health validation
  run concurrently, so only the longer of the two is on the critical path; the TTL and the health minimum
  (interval x (consecutive successes - 1)) are the nominal values: any time a timer or a probe takes beyond
  them is not irreducible.
- Overhead: RTO after approval - irreducible (the same formula for the script, from its own measurements).
- Billable actions per failover: from the Failover's history and the ServiceLock's history (start, activity
  attempts, timers, signals sent and received, Updates, search-attribute upserts, markers), plus heartbeats
  that reached the server, counted by the dev server's own request metrics (``--metrics-port``) and
  cross-checked with an estimate from the SDK's throttling (see ``failover_bench/history.py``).

Targets are reported (PASS / MISS), never asserted.

This file parses the flags and alternates the runs; the parts live in ``failover_bench/`` beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from failover_bench.baseline import run_script
from failover_bench.drflow_run import run_drflow
from failover_bench.figures import report
from failover_bench.records import Run


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="failovers of each kind (default 5)")
    parser.add_argument("--memory", action="store_true", help="dev server in memory instead of a SQLite file")
    parser.add_argument(
        "--poll", type=float, default=0.05, help="status query interval while waiting for the gate"
    )
    parser.add_argument(
        "--script-ttl-then-health",
        action="store_true",
        help="the script sleeps out the TTL, then validates health (default: concurrently, as drflow does)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)

    runs: list[Run] = []
    for index in range(1, args.runs + 1):
        drflow_first = index % 2 == 1  # alternate, so that warm-up or drift favours neither
        order = "drflow first" if drflow_first else "script first"
        print(f"run {index}/{args.runs} ({order}) ...", flush=True)
        if drflow_first:
            drflow_run = await run_drflow(args.memory, args.poll)
            script_run = await run_script(args.script_ttl_then_health)
        else:
            script_run = await run_script(args.script_ttl_then_health)
            drflow_run = await run_drflow(args.memory, args.poll)
        run = Run(index, order, drflow_run, script_run)
        runs.append(run)
        print(
            f"  drflow {drflow_run.rto_after_approval_s:.3f}s after approval "
            f"(overhead {drflow_run.overhead_s * 1000:.0f} ms, {drflow_run.actions_total} actions); "
            f"script {script_run.rto_s:.3f}s (overhead {script_run.overhead_s * 1000:.0f} ms)",
            flush=True,
        )
    report(runs, args)
    if args.json is not None:
        payload: list[dict[str, Any]] = [
            {
                **asdict(r),
                "ratio": r.ratio,
                "drflow_overhead_s": r.drflow.overhead_s,
                "script_overhead_s": r.script.overhead_s,
                "drflow_actions_total": r.drflow.actions_total,
            }
            for r in runs
        ]
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
