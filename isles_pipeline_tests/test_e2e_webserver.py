"""End to end through the webserver: ``dagster dev`` on a replica behind the local Hub server,
a backfill of case_inputs for three cases launched and followed over GraphQL, the registered
model (the built-in ``rules``) run on them by the ``models_after_inputs`` sensor, then what the
UI reports (partition counts, Dice metadata) checked against the files on disk.

The module fixture does all of it and stops the stack before the tests look at the outcome, so
the last test can check that nothing of the stack is left running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from isles_devkit.dagster_dev import (
    MODEL_ASSETS,
    AssetPartitions,
    dagster_dev_stack,
    live_processes_in_group,
    live_processes_with_env,
    model_keys,
)
from isles_pipeline.catalogue import CASE_IDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CASES = list(CASE_IDS[:3])
KEYS = model_keys(CASES)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@dataclass
class BackfillOutcome:
    """Everything the tests check, gathered while the stack ran, plus what was left after it stopped."""

    backfill: dict[str, Any]
    runs: list[dict[str, Any]]
    model_runs: list[dict[str, Any]]
    metrics: AssetPartitions
    metrics_on_disk: dict[str, dict[str, Any]]
    report_runs: list[dict[str, Any]]
    report_skips: list[str]
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
        backfill_id = stack.client.launch_asset_backfill(["case_inputs"], CASES, title="e2e: first three cases")
        backfill = stack.client.wait_for_backfill(backfill_id, timeout_s=300)
        runs = [stack.client.run_assets(run["runId"]) for run in backfill["runs"]]
        metrics = stack.client.wait_for_materialized("case_metrics", KEYS, timeout_s=240)
        model_runs = [stack.client.wait_for_run(run_id) for run_id in sorted({m["runId"] for m in metrics.runs.values()})]
        report_runs, report_skips = wait_for_the_report(stack.client, backfill_id)
        on_disk = {case_id: stack.metrics_on_disk(case_id) for case_id in CASES}
        automation = stack.client.execute(AUTOMATION_QUERY)
        pgid, home = stack.pgid, str(stack.dagster_home)
    return BackfillOutcome(
        backfill, runs, model_runs, metrics, on_disk, report_runs, report_skips, live_processes_in_group(pgid), live_processes_with_env("DAGSTER_HOME", home), automation
    )


def wait_for_the_report(client, backfill_id: str, timeout_s: float = 180.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Wait until report_after_backfill's run has ended and report_after_success has looked at the
    model run (and skipped it); return every report_job run and that sensor's skip reasons."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = client.runs("report_job")
        mine = [r for r in runs if r["tags"].get("dagster/run_key") == f"report-after-backfill-{backfill_id}"]
        skips = [t["skipReason"] or "" for t in client.sensor_ticks("report_after_success") if t["status"] == "SKIPPED"]
        if mine and mine[0]["status"] in ("SUCCESS", "FAILURE") and any(backfill_id in s for s in skips):
            return runs, skips
        time.sleep(2)
    raise AssertionError(f"no report after backfill {backfill_id} within {timeout_s:.0f} s")


def test_backfill_completes_over_all_three_cases(outcome):
    assert outcome.backfill["status"] == "COMPLETED_SUCCESS"
    assert outcome.backfill["numPartitions"] == len(CASES)
    assert outcome.backfill["error"] is None


def test_backfill_policy_puts_three_contiguous_cases_in_one_run(outcome):
    assert len(outcome.runs) == 1, f"expected one run for {len(CASES)} contiguous cases, got {len(outcome.runs)}"
    (run,) = outcome.runs
    assert run["status"] == "SUCCESS"
    assert (run["tags"][RANGE_START], run["tags"][RANGE_END]) == (CASES[0], CASES[-1])
    assert run["assets"] == ["case_inputs"]
    assert run["materialized"] == [("case_inputs", case_id) for case_id in CASES]


def test_the_sensor_runs_the_model_on_the_three_cases_in_one_run(outcome):
    assert len(outcome.model_runs) == 1, outcome.model_runs
    (run,) = outcome.model_runs
    assert run["status"] == "SUCCESS"
    assert (run["tags"][RANGE_START], run["tags"][RANGE_END], run["tags"]["isles/model"]) == (KEYS[0], KEYS[-1], "rules")
    assert run["materialized"] == sorted((asset, key) for asset in MODEL_ASSETS for key in KEYS)


def test_the_report_is_refreshed_once_after_the_backfill_and_its_model_run(outcome):
    backfill_id = outcome.backfill["id"]
    (report,) = outcome.report_runs
    assert report["tags"]["dagster/run_key"] == f"report-after-backfill-{backfill_id}"
    assert report["status"] == "SUCCESS"
    (model_run,) = outcome.model_runs
    assert model_run["tags"]["isles/after_backfill"] == backfill_id
    assert report["startTime"] >= model_run["endTime"]
    # the model run's own success was seen and left to report_after_backfill
    assert any(f"backfill {backfill_id}" in reason for reason in outcome.report_skips)


def test_partition_stats_count_three_of_149_materialized(outcome):
    stats = outcome.metrics.stats
    # 149 cases x 1 registered model
    assert (stats["numMaterialized"], stats["numPartitions"], stats["numFailed"]) == (3, len(CASE_IDS), 0)
    assert len(CASE_IDS) == 149


def test_dice_metadata_of_each_partition_equals_metrics_json_to_the_digits_shown(outcome):
    assert sorted(outcome.metrics.metadata) == KEYS
    for case_id, key in zip(CASES, KEYS, strict=True):
        on_disk = outcome.metrics_on_disk[case_id]
        assert (on_disk["case_id"], on_disk["model"]) == (case_id, "rules")
        assert 0.0 <= on_disk["dice"] <= 1.0
        # the UI shows Dice to 3 decimals and volumes to 2; metrics.json keeps every digit
        assert outcome.metrics.metadata[key]["dice"] == round(on_disk["dice"], 3), case_id
        assert outcome.metrics.metadata[key]["gt_ml"] == round(on_disk["gt_ml"], 2), case_id


def test_no_process_of_the_stack_is_left(outcome):
    assert outcome.left_in_group == []
    assert outcome.left_with_home == []


def test_the_ui_shows_the_schedule_sensors_probe_and_gpu_pool(outcome):
    repository = outcome.automation["repositoriesOrError"]["nodes"][0]
    schedules = {s["name"]: (s["cronSchedule"], s["scheduleState"]["status"]) for s in repository["schedules"]}
    assert schedules == {"case_backfill_schedule": ("0 2 * * *", "STOPPED"), "model_backfill_schedule": ("0 2 * * *", "STOPPED")}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
    assert sensors == {"arrow_issue_sensor": "STOPPED", "report_after_success": "RUNNING", "report_after_failure": "RUNNING",
                       "model_registry_sensor": "RUNNING", "models_after_inputs": "RUNNING",
                       "report_after_backfill": "RUNNING"}
    nodes = {"/".join(n["assetKey"]["path"]): n for n in outcome.automation["assetNodes"]}
    assert nodes["case_prediction"]["pools"] == ["gpu"]
    assert nodes["pyarrow_hang_probe"]["groupName"] == "upstream"
    assert outcome.automation["instance"]["poolConfig"]["defaultPoolLimit"] == 1
