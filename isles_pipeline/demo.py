"""``isles-pipeline demo``: the whole pipeline on a local replica, offline, in a few minutes.

It builds a synthetic replica of N cases (once), serves it on 127.0.0.1 with the local Hub
server, materialises case_inputs -> case_prediction -> case_metrics for each case and then
metrics_report into a persistent DAGSTER_HOME, so that ``dagster dev -w workspace.yaml``
afterwards shows the runs, partitions and metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .catalogue import CASE_IDS, DEFAULT_REPO_ID
from .deployment import instance_config


def prepare_dagster_home(home: Path, deployment: str = "local") -> Path:
    """A DAGSTER_HOME holding ``deploy/<deployment>/dagster.yaml`` (local: SQLite, GPU pool of 1,
    modest run concurrency; cluster: the same limits on PostgreSQL from DAGSTER_PG_*)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(instance_config(deployment).read_text())
    return home


def ensure_replica(folder: Path, case_ids: list[str], grid: str, ctp_mb: float) -> dict:
    """Build the replica unless one with the same cases and grid is already there."""
    from .hub.replica import build_replica

    manifest_path = folder / "replica.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("case_ids") == case_ids and manifest.get("grid", {}).get("name") == grid and manifest.get("ctp_mb") == ctp_mb:
            print(f"replica: reusing {folder} ({len(case_ids)} cases, grid {grid})")
            return manifest
        shutil.rmtree(folder)
    print(f"replica: building {len(case_ids)} synthetic cases (grid {grid}) in {folder} ...", flush=True)
    started = time.perf_counter()
    manifest = build_replica(folder, case_ids, grid=grid, ctp_mb=ctp_mb)
    print(f"replica: done in {time.perf_counter() - started:.1f} s")
    return manifest


@contextmanager
def environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_demo(home: Path, cases: int = 8, grid: str = "demo", ctp_mb: float = 20.0, segmenter: str | None = None) -> int:
    from .hub.server import HubServer

    home = home.resolve()
    if not 1 <= cases <= len(CASE_IDS):
        raise ValueError(f"--cases must be between 1 and {len(CASE_IDS)}, got {cases}")
    case_ids = list(CASE_IDS[:cases])
    replica = home / "replica"
    ensure_replica(replica, case_ids, grid, ctp_mb)
    dagster_home = prepare_dagster_home(home / "dagster_home")
    data_dir = home / "data"
    server = HubServer(host="127.0.0.1", port=0)
    server.add_repo("dataset", DEFAULT_REPO_ID, replica)
    with server:
        print(f"hub: serving {replica} at {server.url}")
        env = {
            "HF_ENDPOINT": server.url,
            "ISLES_DATA_DIR": str(data_dir),
            "DAGSTER_HOME": str(dagster_home),
            "ISLES_HF_REPO": DEFAULT_REPO_ID,
        }
        if segmenter:
            env["ISLES_SEGMENTER"] = segmenter
        with environment(env):
            failed = _materialise(case_ids)
    _print_outcome(home, data_dir, dagster_home, failed)
    return 1 if failed else 0


def _materialise(case_ids: list[str]) -> list[str]:
    """Run the chain for each case, then the report; return the cases that failed."""
    from .defs.runner import materialise_cases, materialise_report

    started, failed = time.perf_counter(), []
    for index, case_id in enumerate(case_ids, start=1):
        line = materialise_cases([case_id])
        failed += line.failed
        print(f"[{index}/{len(case_ids)}] {line.text}  ({time.perf_counter() - started:.0f} s)", flush=True)
    report_text = materialise_report()
    print()
    print(report_text)
    return failed


def _print_outcome(home: Path, data_dir: Path, dagster_home: Path, failed: list[str]) -> None:
    report = data_dir / "report"
    print(
        f"\nfiles:   {data_dir / 'cases'}\n"
        f"report:  {report / 'summary.md'}, {report / 'metrics.csv'}, {report / 'metrics.parquet'}\n"
        f"plots:   {report / 'dice_per_case.png'}, {report / 'volume_pred_vs_true.png'}\n"
        f"\nBrowse the runs, partitions and metadata in the Dagster UI:\n"
        f"  isles-pipeline hub serve {home / 'replica'} --port 8000 &\n"
        f"  DAGSTER_HOME={dagster_home} ISLES_DATA_DIR={data_dir} HF_ENDPOINT=http://127.0.0.1:8000 "
        f"dagster dev -w workspace.yaml"
    )
    if failed:
        print(f"\n{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
