"""Failures in the Dagster layer: what is retried (transient Hub faults, per step, in batch runs
too) and what is final (bad data, missing inputs, an unwritable store, an unknown host), with the
cause in the run log, the step's metadata and the failure notes the report reads."""

from __future__ import annotations

import dagster as dg
import pytest

from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID, shard_path
from isles_pipeline.defs.cases import case_inputs
from isles_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG, case_model_key
from isles_pipeline.defs.segmentation import case_prediction
from isles_pipeline.failures import read_failure
from isles_pipeline.hub import replica
from isles_pipeline.hub.server import HubServer
from isles_pipeline.store import CaseStore
from isles_pipeline_tests.chain import register_models, resources_for

CLIENT_RETRIES = 5
GOOD, BAD, FLAKY = CASE_IDS[:3]


def events(result: dg.ExecuteInProcessResult, kind: str) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type_value == kind]


def step_failure(result: dg.ExecuteInProcessResult):
    return next(e for e in result.all_events if e.is_step_failure).step_failure_data


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture()
def mixed_hub(tmp_path):
    """GOOD is fine, BAD's ADC is on another grid, FLAKY's shard answers 503 long enough for
    the client's own retries to give up once."""
    repo = tmp_path / "repo"
    for case_id in (GOOD, BAD, FLAKY):
        row = replica.case_row(case_id, grid="tiny", ctp_mb=0.05)
        if case_id == BAD:
            row = {**row, "adc": replica.cropped_cell(row["adc"])}
        replica.write_shard(repo / shard_path(case_id), row)
    with HubServer(faults=True) as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, repo)
        server.faults.add("resolve", "status", times=1 + CLIENT_RETRIES, status=503, path_contains=shard_path(FLAKY))
        yield server


def reads_of(server: HubServer, case_id: str) -> int:
    return sum(1 for r in server.stats.log if r.route_kind == "resolve" and r.path.endswith(shard_path(case_id)) and r.status < 400)


def test_a_batch_retries_its_transient_case_and_not_its_bad_one(mixed_hub, tmp_path, instance, monkeypatch):
    monkeypatch.setenv("ISLES_RETRY_WAIT_S", "0.2")  # the user's knob for the wait before a step retry
    tags = {RANGE_START_TAG: GOOD, RANGE_END_TAG: FLAKY}
    result = dg.materialize([case_inputs], instance=instance, resources=resources_for(mixed_hub.url, tmp_path / "data"),
                            tags=tags, raise_on_error=False)

    assert len(events(result, "STEP_UP_FOR_RETRY")) == 1  # attempt 1 met FLAKY's outage; attempt 2 rode it out
    assert instance.get_materialized_partitions(dg.AssetKey("case_inputs")) == {GOOD, FLAKY}
    failure = step_failure(result)
    assert failure.error.message.startswith("dagster._core.definitions.events.Failure: 1 of 3 cases failed: "
                                            f"case {BAD}: adc shape (48, 48, 14) differs from dwi shape (48, 48, 16)")
    assert failure.user_failure_data.metadata["failed_cases"].value == {BAD: f"case {BAD}: adc shape (48, 48, 14) differs from dwi shape (48, 48, 16)"}
    # BAD was read in attempt 1 only, as often as GOOD (whose retry found its files current)
    assert reads_of(mixed_hub, BAD) == reads_of(mixed_hub, GOOD) > 0
    store = CaseStore(tmp_path / "data")
    note = read_failure(store, BAD, "case_inputs")
    assert (note["transient"], note["run_id"]) == (False, result.run_id)
    assert read_failure(store, FLAKY, "case_inputs") is None  # its success cleared its note
    logged = [e.message for e in result.all_events if e.event_type_value == "ENGINE_EVENT" or e.is_step_failure]
    assert logged  # the run log holds the failure too
    assert any(f"case {FLAKY}: HTTP 503 from the Hub" in (r.user_message or "") for r in instance.all_logs(result.run_id))


def test_bad_data_in_one_case_runs_is_not_retried(mixed_hub, tmp_path, instance):
    result = dg.materialize([case_inputs], partition_key=BAD, instance=instance,
                            resources=resources_for(mixed_hub.url, tmp_path / "data"), raise_on_error=False)
    assert not result.success and events(result, "STEP_UP_FOR_RETRY") == []
    assert f"case {BAD}: adc shape (48, 48, 14)" in step_failure(result).error.message


def test_missing_inputs_an_unknown_host_and_an_unwritable_store_fail_at_once(hub, tmp_path, instance):
    register_models(instance, ["rules"])
    missing = dg.materialize([case_prediction], partition_key=case_model_key(GOOD, "rules"), instance=instance,
                             resources=resources_for(hub.url, tmp_path / "empty"), raise_on_error=False)
    assert events(missing, "STEP_UP_FOR_RETRY") == []
    assert f"case {GOOD}, model rules: no input files in" in step_failure(missing).error.message
    note = read_failure(CaseStore(tmp_path / "empty"), GOOD, "case_prediction.rules")
    assert note["cause"].startswith(f"case {GOOD}, model rules: no input files in")

    unknown = dg.materialize([case_inputs], partition_key=GOOD, instance=instance,
                             resources=resources_for("http://isles-hub.invalid", tmp_path / "data"), raise_on_error=False)
    assert events(unknown, "STEP_UP_FOR_RETRY") == []
    assert f"case {GOOD}: cannot resolve the host 'isles-hub.invalid'" in step_failure(unknown).error.message

    blocker = tmp_path / "a-file"
    blocker.write_text("where the data folder should be")
    unwritable = dg.materialize([case_inputs], partition_key=GOOD, instance=instance,
                                resources=resources_for(hub.url, blocker / "data"), raise_on_error=False)
    assert events(unwritable, "STEP_UP_FOR_RETRY") == []
    message = step_failure(unwritable).error.message
    assert f"case {GOOD}: NotADirectoryError" in message and str(blocker) in message
