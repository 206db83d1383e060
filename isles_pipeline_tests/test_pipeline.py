"""The Dagster layer: definitions, the case chain on one partition and on a batch with a bad case,
the report, and the nightly automation — on a real instance, against the local Hub."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import dagster as dg
import pyarrow.parquet as pq
import pytest

from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID, shard_path
from isles_pipeline.definitions import build_defs
from isles_pipeline.defs.cases import case_inputs
from isles_pipeline.defs.jobs import MODEL_CHAIN
from isles_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG, case_model_key, range_tags
from isles_pipeline.defs.report import metrics_report
from isles_pipeline.defs.scoring import inputs_on_one_grid, metrics_in_range
from isles_pipeline.hub import replica
from isles_pipeline.hub.server import HubServer
from isles_pipeline.metrics import score_files
from isles_pipeline.settings import Settings
from isles_pipeline_tests.chain import Automation, register_models, resources_for

CHECKS = [inputs_on_one_grid, metrics_in_range]
RANGE_TAGS = (RANGE_START_TAG, RANGE_END_TAG)


RULES = "rules"


def rules_dir(root, case_id: str):
    """Where the rules model's prediction and metrics of a case live."""
    return root / "cases" / case_id / "models" / RULES


def run_chain(instance, resources, cases: list[str], checks: bool = False, **kwargs):
    """case_inputs for the cases (one run), then the rules model on them (one run): the chain as
    the backfill runs it. Returns the last result."""
    register_models(instance, [RULES])
    where = {"partition_key": cases[0]} if len(cases) == 1 else {"tags": range_tags(cases)}
    fetched = dg.materialize([case_inputs, *(CHECKS[:1] if checks else [])], instance=instance, resources=resources, **where, **kwargs)
    if not fetched.success:
        return fetched
    where = {"partition_key": case_model_key(cases[0], RULES)} if len(cases) == 1 else {"tags": range_tags(cases, RULES)}
    return dg.materialize([*MODEL_CHAIN, *(CHECKS[1:] if checks else [])], instance=instance, resources=resources, **where, **kwargs)


def materializations(instance: dg.DagsterInstance, asset: str, partition: str) -> list[dg.AssetMaterialization]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=10
    ).records
    return [r.asset_materialization for r in records]


def meta(materialization: dg.AssetMaterialization) -> dict:
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_definitions_have_149_case_partitions_and_the_gpu_pool():
    defs = build_defs(Settings())
    case_inputs = defs.resolve_assets_def("case_inputs")
    assert case_inputs.partitions_def.get_partition_keys() == list(CASE_IDS)
    assert len(CASE_IDS) == 149
    assert defs.resolve_assets_def("case_prediction").op.pool == "gpu"
    assert {j.name for j in defs.jobs} >= {"case_inputs_job", "model_chain", "report_job", "observe_model_weights", "pyarrow_probe_job"}
    assert {s.name for s in defs.sensors} == {"arrow_issue_sensor", "model_registry_sensor", "nightly_fetch", "chain_automation",
                                              "report_automation"}
    assert not list(defs.schedules or [])


def test_one_partition_through_the_chain(hub, replica_dir, tmp_path, instance):
    case_id = CASE_IDS[0]
    fetched = dg.materialize([case_inputs, CHECKS[0]], partition_key=case_id, instance=instance, resources=resources_for(hub.url, tmp_path))
    register_models(instance, [RULES])
    result = dg.materialize([*MODEL_CHAIN, CHECKS[1]], partition_key=case_model_key(case_id, RULES), instance=instance,
                            resources=resources_for(hub.url, tmp_path))
    assert fetched.success and result.success
    inputs = meta(materializations(instance, "case_inputs", case_id)[0])
    cell = pq.read_table(replica_dir / shard_path(case_id), columns=["dwi"]).column("dwi")[0].as_py()["bytes"]
    assert inputs["sha256_dwi"] == hashlib.sha256(cell).hexdigest()
    assert inputs["range_requests"] <= 4 and inputs["skipped_download"] is False
    assert inputs["shape"] == "(48, 48, 16)"
    shard_sha = hashlib.sha256((replica_dir / shard_path(case_id)).read_bytes()).hexdigest()
    assert materializations(instance, "case_inputs", case_id)[0].tags["dagster/data_version"] == shard_sha
    prediction = meta(materializations(instance, "case_prediction", case_model_key(case_id, RULES))[0])
    assert (prediction["segmenter"], prediction["device"], prediction["model"]) == ("rules", "cpu", RULES)
    scored = meta(materializations(instance, "case_metrics", case_model_key(case_id, RULES))[0])
    case_dir = tmp_path / "cases" / case_id
    direct = score_files(rules_dir(tmp_path, case_id) / "prediction.nii.gz", case_dir / "lesion_mask.nii.gz").as_dict()
    assert {k: scored[k] for k in direct} == pytest.approx(direct, abs=5e-3)  # the UI shows 3 (Dice) or 2 (ml) decimals
    assert json.loads((rules_dir(tmp_path, case_id) / "metrics.json").read_text())["dice"] == direct["dice"]
    checks = {e.check_name: e.passed for e in [*fetched.get_asset_check_evaluations(), *result.get_asset_check_evaluations()]}
    assert checks == {"inputs_on_one_grid": True, "metrics_in_range": True}


def test_rerun_on_an_unchanged_shard_skips_the_download(hub, tmp_path, instance):
    case_id = CASE_IDS[2]
    for _ in range(2):
        assert dg.materialize([case_inputs], partition_key=case_id, instance=instance, resources=resources_for(hub.url, tmp_path)).success
    latest, first = materializations(instance, "case_inputs", case_id)[:2]
    assert (meta(first)["skipped_download"], meta(latest)["skipped_download"]) == (False, True)
    assert meta(latest)["bytes_transferred"] == 0
    assert latest.tags["dagster/data_version"] == first.tags["dagster/data_version"]


@pytest.fixture()
def repo_with_a_bad_case(tmp_path):
    """Three consecutive cases; the middle one's ADC is on another grid."""
    repo = tmp_path / "repo"
    for index, case_id in enumerate(CASE_IDS[:3]):
        row = replica.case_row(case_id, grid="tiny", ctp_mb=0.05)
        if index == 1:
            row = {**row, "adc": replica.cropped_cell(row["adc"])}
        replica.write_shard(repo / shard_path(case_id), row)
    with HubServer() as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, repo)
        yield server


def test_a_bad_case_in_a_batch_fails_alone_and_is_reported(repo_with_a_bad_case, tmp_path, instance):
    good, bad = [CASE_IDS[0], CASE_IDS[2]], CASE_IDS[1]
    resources = resources_for(repo_with_a_bad_case.url, tmp_path / "data")
    tags = dict(zip(RANGE_TAGS, (CASE_IDS[0], CASE_IDS[2])))
    result = dg.materialize([case_inputs], instance=instance, resources=resources, tags=tags, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert f"case {bad}: adc shape (48, 48, 14) differs from dwi shape (48, 48, 16)" in failure.step_failure_data.error.message
    materialized = instance.get_materialized_partitions(dg.AssetKey("case_inputs"))
    assert materialized == set(good)
    statuses = instance.get_status_by_partition(dg.AssetKey("case_inputs"), list(CASE_IDS[:3]), case_inputs.partitions_def)
    assert statuses[bad] == dg.AssetPartitionStatus.FAILED
    assert not (tmp_path / "data" / "cases" / bad / "dwi.nii.gz").exists()
    # the good cases of the batch go on through the chain in the next run, the bad one does not
    for case_id in good:
        assert run_chain(instance, resources, [case_id]).success
    report = dg.materialize([metrics_report], instance=instance, resources=resources)
    report_meta = meta(report.get_asset_materialization_events()[0].event_specific_data.materialization)
    assert (report_meta["scored"], report_meta["failed"], report_meta["never_run"]) == (2, 1, 146)
    summary = (tmp_path / "data" / "report" / "summary.md").read_text()
    assert bad in summary and "adc shape (48, 48, 14)" in summary
    csv_ids = [line.split(",")[0] for line in (tmp_path / "data" / "report" / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_ids == good
    assert (tmp_path / "data" / "report" / RULES / "dice_per_case.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_nightly_automation_fetches_missing_cases_and_runs_the_models_on_fetched_ones(repo_with_a_bad_case, tmp_path, instance):
    resources = resources_for(repo_with_a_bad_case.url, tmp_path / "data")
    tags = dict(zip(RANGE_TAGS, (CASE_IDS[0], CASE_IDS[2])))
    dg.materialize([case_inputs], instance=instance, resources=resources, tags=tags, raise_on_error=False)
    register_models(instance, [RULES])
    defs = build_defs(Settings(data_dir=str(tmp_path / "data"), hf_endpoint=repo_with_a_bad_case.url, device="cpu"))
    assert defs.resolve_job_def("observe_model_weights").execute_in_process(instance=instance).success
    assert dg.materialize(MODEL_CHAIN, partition_key=case_model_key(CASE_IDS[0], RULES), instance=instance, resources=resources).success

    automation = Automation(defs, instance)
    assert automation.tick(datetime(2026, 11, 27, 1, 30, tzinfo=timezone.utc)) == {}
    night = automation.tick(datetime(2026, 11, 27, 2, 1, tzinfo=timezone.utc))
    # every case not fetched (the one whose data is bad included), and the fetched case the model has not run on
    assert night["case_inputs"] == set(CASE_IDS) - {CASE_IDS[0], CASE_IDS[2]}
    assert night["case_prediction"] == night["case_metrics"] == {case_model_key(CASE_IDS[2], RULES)}
    assert "model_weights" in night  # observed every night: a model whose weights changed gets a new version
    assert {"metrics_report", "leaderboard"}.isdisjoint(night)  # nothing of the chain updated since the last tick


def test_the_hub_token_never_reaches_metadata_logs_or_files(hub, tmp_path, instance, monkeypatch):
    secret = "hf_SECRETtoken0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    fetched = dg.materialize([case_inputs], partition_key=CASE_IDS[1], instance=instance, resources=resources_for(hub.url, tmp_path))
    register_models(instance, [RULES])
    result = dg.materialize(MODEL_CHAIN, partition_key=case_model_key(CASE_IDS[1], RULES), instance=instance,
                            resources=resources_for(hub.url, tmp_path))
    assert fetched.success and result.success
    logs = [*instance.all_logs(fetched.run_id), *instance.all_logs(result.run_id)]
    assert secret not in "".join(repr(e) for e in logs)
    assert all(secret.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    run = instance.get_run_by_id(result.run_id)
    assert secret not in json.dumps(run.run_config, default=str) and secret not in json.dumps(run.tags)


def test_a_good_batch_records_one_materialisation_per_case_with_its_own_metadata(hub, replica_dir, tmp_path, instance):
    # the filesystem IO manager is what `dagster dev` runs with: a batch must not hand it an output
    resources = {**resources_for(hub.url, tmp_path / "data"), "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    assert run_chain(instance, resources, list(CASE_IDS[:3]), checks=True).success
    for case_id in CASE_IDS[:3]:
        inputs = meta(materializations(instance, "case_inputs", case_id)[0])
        cell = pq.read_table(replica_dir / shard_path(case_id), columns=["lesion_mask"]).column(0)[0].as_py()["bytes"]
        assert inputs["sha256_lesion_mask"] == hashlib.sha256(cell).hexdigest()
        scored = meta(materializations(instance, "case_metrics", case_model_key(case_id, RULES))[0])
        on_disk = json.loads((rules_dir(tmp_path / "data", case_id) / "metrics.json").read_text())
        assert scored["dice"] == round(on_disk["dice"], 3)
    assert not (tmp_path / "io").exists() or not any((tmp_path / "io").rglob("*"))
