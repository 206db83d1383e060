"""End to end through the webserver: ``dagster dev`` on a replica behind the local Hub server,
a backfill of case_inputs for three cases launched and followed over GraphQL, the registered
model (the built-in ``rules``) run on them by Declarative Automation (``chain_automation``), the
report refreshed once after it (``report_automation``), then what the UI reports (partition counts, Dice metadata)
checked against the files on disk.

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
AUTOMATED = {"dagster/from_automation_condition": "true"}


@dataclass
class BackfillOutcome:
    """Everything the tests check, gathered while the stack ran, plus what was left after it stopped."""

    backfill: dict[str, Any]
    runs: list[dict[str, Any]]
    model_runs: list[dict[str, Any]]
    metrics: AssetPartitions
    metrics_on_disk: dict[str, dict[str, Any]]
    report_runs: list[dict[str, Any]]
    automated_runs: list[dict[str, Any]]
    left_in_group: list[int]
    left_with_home: list[int]
    automation: dict[str, Any]


AUTOMATION_QUERY = """
{
  repositoriesOrError { ... on RepositoryConnection { nodes {
    schedules { name }
    sensors { name sensorState { status } }
  } } }
  assetNodes { assetKey { path } pools groupName automationCondition { label } }
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
        metrics = stack.client.wait_for_materialized("case_metrics", KEYS, timeout_s=300)
        model_runs = [stack.client.wait_for_run(run_id) for run_id in sorted({m["runId"] for m in metrics.runs.values()})]
        report_runs = wait_for_the_report(stack.client, after=max(run["endTime"] for run in model_runs))
        automated = [stack.client.run_assets(run["runId"]) for run in stack.client.runs(tags=AUTOMATED)]
        on_disk = {case_id: stack.metrics_on_disk(case_id) for case_id in CASES}
        automation = stack.client.execute(AUTOMATION_QUERY)
        pgid, home = stack.pgid, str(stack.dagster_home)
    return BackfillOutcome(
        backfill, runs, model_runs, metrics, on_disk, report_runs, automated, live_processes_in_group(pgid),
        live_processes_with_env("DAGSTER_HOME", home), automation
    )


def wait_for_the_report(client, after: float, timeout_s: float = 240.0) -> list[dict[str, Any]]:
    """Wait until an automated run of metrics_report has ended, and report_automation has ticked once
    more after it (so that a second report would have been requested); return every such run."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reports = [r for r in (client.run_assets(run["runId"]) for run in client.runs(tags=AUTOMATED)) if "metrics_report" in r["assets"]]
        ended = [r for r in reports if r["status"] in ("SUCCESS", "FAILURE") and r["startTime"] >= after]
        ticks = [t for t in client.sensor_ticks("report_automation") if ended and t["timestamp"] > max(r["endTime"] for r in ended)]
        if ticks and all(t["status"] != "STARTED" for t in ticks):
            return reports
        time.sleep(2)
    raise AssertionError(f"no report run after the model runs within {timeout_s:.0f} s")


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


def test_the_automation_runs_the_model_on_the_three_cases_in_one_run(outcome):
    assert len(outcome.model_runs) == 1, outcome.model_runs
    (run,) = outcome.model_runs
    assert run["status"] == "SUCCESS"
    assert run["tags"].get("dagster/from_automation_condition") == "true"
    assert (run["tags"][RANGE_START], run["tags"][RANGE_END]) == (KEYS[0], KEYS[-1])
    assert run["materialized"] == sorted((asset, key) for asset in MODEL_ASSETS for key in KEYS)


def test_the_model_is_observed_before_it_runs(outcome):
    observations = [r for r in outcome.automated_runs if r["assets"] == ["model_weights"]]
    assert [r["status"] for r in observations] == ["SUCCESS"]
    assert observations[0]["endTime"] <= outcome.model_runs[0]["startTime"]


def test_the_report_is_refreshed_once_after_the_model_run(outcome):
    (report,) = outcome.report_runs
    assert report["status"] == "SUCCESS"
    assert report["assets"] == ["leaderboard", "metrics_report"]
    (model_run,) = outcome.model_runs
    assert report["startTime"] >= model_run["endTime"]
    # nothing else ran by itself: the observation, the model run and the report
    assert len(outcome.automated_runs) == 3, [r["assets"] for r in outcome.automated_runs]


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
        assert outcome.metrics.metadata[key]["fingerprint"] == on_disk["fingerprint"]


def test_no_process_of_the_stack_is_left(outcome):
    assert outcome.left_in_group == []
    assert outcome.left_with_home == []


def test_the_ui_shows_the_automation_sensors_probe_and_gpu_pool(outcome):
    repository = outcome.automation["repositoriesOrError"]["nodes"][0]
    assert repository["schedules"] == []
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
    assert sensors == {"arrow_issue_sensor": "STOPPED", "nightly_fetch": "STOPPED", "chain_automation": "RUNNING",
                       "report_automation": "RUNNING", "model_registry_sensor": "RUNNING"}
    nodes = {"/".join(n["assetKey"]["path"]): n for n in outcome.automation["assetNodes"]}
    assert nodes["case_prediction"]["pools"] == ["gpu"]
    assert nodes["pyarrow_hang_probe"]["groupName"] == "upstream"
    assert nodes["case_inputs"]["automationCondition"]["label"] == "missing, nightly"
    assert outcome.automation["instance"]["poolConfig"]["defaultPoolLimit"] == 1
