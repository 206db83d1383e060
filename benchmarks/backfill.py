"""N cases as a partition backfill through ``dagster dev`` (deploy/local/dagster.yaml, SQLite),
side by side with the in-process demo on the same replica, interleaved so that a busy machine
slows both alike.

    python benchmarks/backfill.py --cases 12 24 --repeats 2

Demo: ``isles-pipeline demo`` itself (``run_demo``) in a fresh interpreter (imports included) on
the same replica: every case through the chain with the built-in ``rules`` model, then the report
and the leaderboard. Backfill: what the README has a user do in the UI, over GraphQL: a
partition backfill of ``case_inputs``; Declarative Automation (``chain_automation``) runs the
registered model on the fetched cases and refreshes the report and the leaderboard once nothing of
the chain is in progress. Timed from the launch until the first report run has finished (then the
report runs are counted 45 s later); ``dagster dev`` is started
before the clock starts (a one-off, reported apart). ``--executor multiprocess`` puts the code
location on ISLES_DEPLOYMENT=cluster's executor (a process per step) for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REPORT_SETTLE_S = 45
sys.path.insert(0, str(REPO_ROOT))

from isles_devkit.dagster_dev import dagster_dev_stack  # noqa: E402
from isles_pipeline.catalogue import CASE_IDS  # noqa: E402
from isles_pipeline.demo import ensure_replica  # noqa: E402

DEMO_WORKER = """
import sys
from pathlib import Path
from isles_pipeline.demo import run_demo
home, n, grid, ctp_mb = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sys.exit(run_demo(home, cases=n, grid=grid, ctp_mb=ctp_mb, models=["rules"]))
"""

def time_demo(work: Path, replica: Path, n: int, grid: str, ctp_mb: float) -> float:
    """The demo on ``work``, its replica the shared one (same cases, grid and ctp size: reused)."""
    work.mkdir(parents=True)
    (work / "replica").symlink_to(replica, target_is_directory=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", DEMO_WORKER, str(work), str(n), grid, str(ctp_mb)], check=True, cwd=REPO_ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_backfill(work: Path, replica: Path, n: int, executor: str) -> dict:
    extra_env = {"ISLES_DEPLOYMENT": "cluster"} if executor == "multiprocess" else {}
    started_stack = time.perf_counter()
    with dagster_dev_stack(work, replica, deployment="local", extra_env=extra_env) as stack:
        startup = time.perf_counter() - started_stack
        client = stack.client
        launched_at = time.time()
        backfill_id = client.launch_asset_backfill(["case_inputs"], list(CASE_IDS[:n]), title=f"bench-{n}")
        client.wait_for_backfill(backfill_id, timeout_s=3600, poll_s=0.5)
        fetched_at = time.time()
        report, automated = None, []
        while report is None and time.time() - fetched_at < 1800:
            automated = [{**r, **client.run_assets(r["runId"])} for r in client.runs(tags={"dagster/from_automation_condition": "true"})]
            reports = [r for r in automated if "metrics_report" in r["assets"] and r["status"] in ("SUCCESS", "FAILURE")]
            report = reports[0] if reports else None
            time.sleep(0.5)
        time.sleep(REPORT_SETTLE_S)  # would a second report follow? (the daemons loop every 30 s)
        automated = [{**r, **client.run_assets(r["runId"])} for r in client.runs(tags={"dagster/from_automation_condition": "true"})]
        fetch_runs = client.runs(tags={"dagster/backfill": backfill_id})
        model_runs = [r for r in automated if "case_prediction" in r["assets"]]
        report_runs = [r for r in automated if "metrics_report" in r["assets"]]
    if report is None or report["status"] != "SUCCESS":
        raise RuntimeError(f"backfill {backfill_id}: no successful report run ({report})")
    timed = [r for r in fetch_runs + model_runs if r["endTime"] and r["startTime"]]
    return {
        # launch -> first run's process started; last run ended -> report run started
        "to_first_run_s": min(r["startTime"] for r in timed) - launched_at,
        "after_last_run_s": report["startTime"] - max(r["endTime"] for r in timed),
        # the automation's reaction: last fetch run ended -> first model run started
        "models_after_fetch_s": min(r["startTime"] for r in model_runs) - max(r["endTime"] for r in fetch_runs),
        "startup_s": startup,
        "fetch_backfill_s": fetched_at - launched_at,
        "total_s": report["endTime"] - launched_at,
        "fetch_runs": len(fetch_runs),
        "model_runs": len(model_runs),
        "report_runs": len(report_runs),
        "run_seconds": sum(r["endTime"] - r["startTime"] for r in timed),
    }


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grid", default="demo")
    parser.add_argument("--ctp-mb", type=float, default=20.0)
    parser.add_argument("--executor", choices=["in_process", "multiprocess"], default="in_process")
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="isles-backfill-bench-") as tmp:
        root = Path(tmp)
        for n in args.cases:
            replica = root / f"replica-{n}"
            ensure_replica(replica, list(CASE_IDS[:n]), args.grid, args.ctp_mb)
            for repeat in range(args.repeats):
                demo_s = time_demo(root / f"demo-{n}-{repeat}", replica, n, args.grid, args.ctp_mb)
                backfill = time_backfill(root / f"backfill-{n}-{repeat}", replica, n, args.executor)
                row = {"cases": n, "repeat": repeat, "demo_s": demo_s, **backfill, "ratio": backfill["total_s"] / demo_s,
                       "overhead_s": backfill["total_s"] - demo_s}
                rows.append(row)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n| cases | executor | demo s (median) | backfill s (median) | ratio (median) | overhead s (median) "
          "| fetch + model + report runs | dagster dev start s |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.cases:
        mine = [r for r in rows if r["cases"] == n]
        print(f"| {n} | {args.executor} | {_median(mine, 'demo_s'):.1f} | {_median(mine, 'total_s'):.1f} | "
              f"{_median(mine, 'ratio'):.2f} | {_median(mine, 'overhead_s'):.1f} | {mine[0]['fetch_runs']} + {mine[0]['model_runs']} + {mine[0]['report_runs']} "
              f"| {_median(mine, 'startup_s'):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
