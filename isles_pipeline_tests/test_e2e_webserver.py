"""End to end through the webserver: ``dagster dev`` on a replica behind the local Hub server,
a backfill of the case chain for three cases launched and followed over GraphQL, then what the
UI reports (partition counts, Dice metadata) checked against the files on disk.

The module fixture does all of it and stops the stack before the tests look at the outcome, so
the last test can check that nothing of the stack is left running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from isles_pipeline.catalogue import CASE_IDS

from .dagster_dev import (
    CHAIN_ASSETS,
    AssetPartitions,
    dagster_dev_stack,
    live_processes_in_group,
    live_processes_with_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CASES = list(CASE_IDS[:3])
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@dataclass
class BackfillOutcome:
    """Everything the tests check, gathered while the stack ran, plus what was left after it stopped."""

    backfill: dict[str, Any]
    runs: list[dict[str, Any]]
    metrics: AssetPartitions
    metrics_on_disk: dict[str, dict[str, Any]]
    left_in_group: list[int]
    left_with_home: list[int]
    automation: dict[str, Any]


AUTOMATION_QUERY = """
{
  repositoriesOrError { ... on RepositoryConnection { nodes {
    schedules { name cronSchedule scheduleState { status } }
    sensors { name sensorState { status } }
  } } }
  assetNodes { assetKey { path } pools groupName }
  instance { poolConfig { defaultPoolLimit } }
}
"""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, replica_dir) -> BackfillOutcome:
    """Start the stack, backfill the chain for CASES, read the results back, stop the stack."""
    work_dir = tmp_path_factory.mktemp("dagster_dev")
    with dagster_dev_stack(work_dir, replica_dir) as stack:
        backfill_id = stack.client.launch_asset_backfill(CHAIN_ASSETS, CASES, title="e2e: first three cases")
        backfill = stack.client.wait_for_backfill(backfill_id, timeout_s=420)
        runs = [stack.client.run_assets(run["runId"]) for run in backfill["runs"]]
        metrics = stack.client.asset_partitions("case_metrics", CASES)
        on_disk = {case_id: stack.metrics_on_disk(case_id) for case_id in CASES}
        automation = stack.client.execute(AUTOMATION_QUERY)
        pgid, home = stack.pgid, str(stack.dagster_home)
    return BackfillOutcome(
        backfill, runs, metrics, on_disk, live_processes_in_group(pgid), live_processes_with_env("DAGSTER_HOME", home), automation
    )


def test_backfill_completes_over_all_three_cases(outcome):
    assert outcome.backfill["status"] == "COMPLETED_SUCCESS"
    assert outcome.backfill["numPartitions"] == len(CASES)
    assert outcome.backfill["error"] is None


def test_backfill_policy_puts_three_contiguous_cases_in_one_run(outcome):
    assert len(outcome.runs) == 1, f"expected one run for {len(CASES)} contiguous cases, got {len(outcome.runs)}"
    (run,) = outcome.runs
    assert run["status"] == "SUCCESS"
    assert (run["tags"][RANGE_START], run["tags"][RANGE_END]) == (CASES[0], CASES[-1])
    assert run["assets"] == sorted(CHAIN_ASSETS)
    assert run["materialized"] == sorted((asset, case_id) for asset in CHAIN_ASSETS for case_id in CASES)


def test_partition_stats_count_three_of_149_materialized(outcome):
    stats = outcome.metrics.stats
    assert (stats["numMaterialized"], stats["numPartitions"], stats["numFailed"]) == (3, len(CASE_IDS), 0)
    assert len(CASE_IDS) == 149


def test_dice_metadata_of_each_partition_equals_metrics_json(outcome):
    assert sorted(outcome.metrics.metadata) == CASES
    for case_id in CASES:
        on_disk = outcome.metrics_on_disk[case_id]
        assert on_disk["case_id"] == case_id
        assert 0.0 <= on_disk["dice"] <= 1.0
        assert outcome.metrics.metadata[case_id]["dice"] == on_disk["dice"], case_id
        assert outcome.metrics.metadata[case_id]["gt_ml"] == on_disk["gt_ml"], case_id


def test_no_process_of_the_stack_is_left(outcome):
    assert outcome.left_in_group == []
    assert outcome.left_with_home == []


def test_the_ui_shows_the_schedule_sensors_probe_and_gpu_pool(outcome):
    repository = outcome.automation["repositoriesOrError"]["nodes"][0]
    schedules = {s["name"]: (s["cronSchedule"], s["scheduleState"]["status"]) for s in repository["schedules"]}
    assert schedules == {"case_backfill_schedule": ("0 2 * * *", "STOPPED")}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
    assert sensors == {"arrow_issue_sensor": "STOPPED", "report_after_success": "RUNNING", "report_after_failure": "RUNNING", "report_after_backfill": "RUNNING"}
    nodes = {"/".join(n["assetKey"]["path"]): n for n in outcome.automation["assetNodes"]}
    assert nodes["case_prediction"]["pools"] == ["gpu"]
    assert nodes["pyarrow_hang_probe"]["groupName"] == "upstream"
    assert outcome.automation["instance"]["poolConfig"]["defaultPoolLimit"] == 1
