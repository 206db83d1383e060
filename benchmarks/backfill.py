"""N cases as a partition backfill through ``dagster dev`` (deploy/local/dagster.yaml, SQLite),
side by side with the in-process demo on the same replica, interleaved so that a busy machine
slows both alike.

    python benchmarks/backfill.py --cases 12 24 --repeats 2

Demo: ``isles-pipeline demo``'s own functions in a fresh interpreter (imports included), one
run per case, then the report. Backfill: from launchPartitionBackfill over GraphQL until the
report run that follows the backfill (report_after_backfill) has finished; ``dagster dev`` is
started before the clock starts (a one-off, reported apart). ``--executor multiprocess`` puts
the code location on ISLES_DEPLOYMENT=cluster's executor (a process per step) for comparison.
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
sys.path.insert(0, str(REPO_ROOT))

from isles_pipeline.catalogue import CASE_IDS  # noqa: E402
from isles_pipeline.demo import ensure_replica  # noqa: E402
from isles_pipeline_tests.dagster_dev import CHAIN_ASSETS, dagster_dev_stack  # noqa: E402

DEMO_WORKER = """
import sys, time
from pathlib import Path
from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID
from isles_pipeline.demo import _materialise, environment, prepare_dagster_home
from isles_pipeline.hub.server import HubServer
home, replica, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
server = HubServer(host="127.0.0.1", port=0)
server.add_repo("dataset", DEFAULT_REPO_ID, replica)
with server, environment({"HF_ENDPOINT": server.url, "ISLES_DATA_DIR": str(home / "data"),
                          "DAGSTER_HOME": str(prepare_dagster_home(home / "dagster_home")), "ISLES_HF_REPO": DEFAULT_REPO_ID}):
    failed = _materialise(list(CASE_IDS[:n]))
sys.exit(1 if failed else 0)
"""

REPORT_RUNS = """
query { runsOrError(filter: {pipelineName: "report_job", statuses: [SUCCESS]}) {
  ... on Runs { results { runId endTime } } } }
"""
BACKFILL_RUNS = """
query ($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { runId pipelineName startTime endTime } } } }
"""


def time_demo(work: Path, replica: Path, n: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", DEMO_WORKER, str(work), str(replica), str(n)], check=True, cwd=REPO_ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_backfill(work: Path, replica: Path, n: int, executor: str) -> dict:
    extra_env = {"ISLES_DEPLOYMENT": "cluster"} if executor == "multiprocess" else {}
    started_stack = time.perf_counter()
    with dagster_dev_stack(work, replica, deployment="local", extra_env=extra_env) as stack:
        startup = time.perf_counter() - started_stack
        client = stack.client
        launched_at = time.time()
        backfill_id = client.launch_asset_backfill(CHAIN_ASSETS, list(CASE_IDS[:n]), title=f"bench-{n}")
        client.wait_for_backfill(backfill_id, timeout_s=1800, poll_s=0.5)
        chain_done = time.time()
        report_end = None
        while report_end is None and time.time() - chain_done < 120:
            runs = client.execute(REPORT_RUNS)["runsOrError"]["results"]
            ends = [r["endTime"] for r in runs if r["endTime"] and r["endTime"] > launched_at]
            report_end = min(ends) if ends else None
            time.sleep(0.5)
        runs = client.execute(BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
    run_seconds = sum(r["endTime"] - r["startTime"] for r in runs if r["endTime"] and r["startTime"])
    timed = [r for r in runs if r["endTime"] and r["startTime"]]
    return {
        # launch -> first run's process started; last run ended -> the backfill seen complete
        "to_first_run_s": min(r["startTime"] for r in timed) - launched_at if timed else float("nan"),
        "after_last_run_s": chain_done - max(r["endTime"] for r in timed) if timed else float("nan"),
        "startup_s": startup,
        "chain_s": chain_done - launched_at,
        "total_s": (report_end or float("nan")) - launched_at,
        "runs": len(runs),
        "run_seconds": run_seconds,
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
                demo_s = time_demo(root / f"demo-{n}-{repeat}", replica, n)
                backfill = time_backfill(root / f"backfill-{n}-{repeat}", replica, n, args.executor)
                row = {"cases": n, "repeat": repeat, "demo_s": demo_s, **backfill, "ratio": backfill["total_s"] / demo_s}
                rows.append(row)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n| cases | executor | demo s (median) | backfill s (median) | ratio (median) | runs | dagster dev start s |")
    print("|---|---|---|---|---|---|---|")
    for n in args.cases:
        mine = [r for r in rows if r["cases"] == n]
        print(f"| {n} | {args.executor} | {_median(mine, 'demo_s'):.1f} | {_median(mine, 'total_s'):.1f} | "
              f"{_median(mine, 'ratio'):.2f} | {mine[0]['runs']} | {_median(mine, 'startup_s'):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
