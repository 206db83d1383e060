"""Bytes a case fetch moves when a model needs other columns: the MRI pair or CT perfusion maps.

    python benchmarks/fetch_columns.py                 # demo grid, ctp 20 MB, 2 cases
    python benchmarks/fetch_columns.py --grid real --ctp-mb 200

For each column set, ``fetch_case(reader, store, case, columns=...)`` against the project's local
Hub server on 127.0.0.1 serving a replica; the bytes are the server's own count
(``HubServer.stats.bytes_sent``), "needed" is the sum of those columns' chunks in the shard's footer.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID, shard_path  # noqa: E402
from isles_pipeline.hub.replica import build_replica  # noqa: E402
from isles_pipeline.hub.server import HubServer  # noqa: E402
from isles_pipeline.inputs import fetch_case  # noqa: E402
from isles_pipeline.source import ShardReader, ShardSource, column_chunk_bytes  # noqa: E402
from isles_pipeline.store import CaseStore  # noqa: E402

COLUMN_SETS = {
    "MRI model (dwi, adc)": ("dwi", "adc", "lesion_mask"),
    "CT perfusion model (tmax, cbf)": ("tmax", "cbf", "lesion_mask"),
    "all four perfusion maps": ("tmax", "mtt", "cbf", "cbv", "lesion_mask"),
}


def chunk_bytes(shard: Path, columns) -> int:
    return column_chunk_bytes(pq.read_metadata(shard), tuple(columns))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="demo")
    parser.add_argument("--ctp-mb", type=float, default=20.0)
    parser.add_argument("--cases", type=int, default=2)
    args = parser.parse_args()
    case_ids = list(CASE_IDS[: args.cases])
    with tempfile.TemporaryDirectory() as tmp:
        replica = Path(tmp) / "replica"
        build_replica(replica, case_ids, grid=args.grid, ctp_mb=args.ctp_mb, seed=0)
        print("| columns fetched (+ lesion_mask) | shard MB | needed chunks MB | served MB | served / needed | requests |")
        print("|---|---|---|---|---|---|")
        with HubServer() as server:
            server.app.add_repo("dataset", DEFAULT_REPO_ID, replica)
            for name, columns in COLUMN_SETS.items():
                shard_mb, needed, served, requests = 0.0, 0, 0, 0
                for case_id in case_ids:
                    shard = replica / shard_path(case_id)
                    server.reset_stats()
                    fetch_case(ShardReader(ShardSource(DEFAULT_REPO_ID, "main", server.url)), CaseStore(Path(tmp) / name), case_id, columns=columns)
                    stats = server.stats
                    shard_mb += shard.stat().st_size / 1e6
                    needed += chunk_bytes(shard, columns)
                    served += stats.bytes_sent
                    requests += stats.total_requests
                n = len(case_ids)
                print(f"| {name} | {shard_mb / n:.2f} | {needed / n / 1e6:.3f} | {served / n / 1e6:.3f} | {served / needed:.3f} | {requests / n:.1f} |")
    print(f"\nper case, mean of {len(case_ids)} ({args.grid} grid, ctp {args.ctp_mb:g} MB)")
    print(f"command: python benchmarks/fetch_columns.py {shlex.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
