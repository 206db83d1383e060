"""The cluster deployment's instance (deploy/cluster/dagster.yaml) on a real PostgreSQL server:
the one `.ci/run` starts on 127.0.0.1 and names with DAGSTER_PG_* (skipped without it; CI fails
if these tests skip). The webserver end-to-end tests also run on it there (dagster_dev.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID
from isles_pipeline.deployments import instance_config_path
from isles_pipeline.defs.jobs import CASE_CHAIN
from isles_pipeline.defs.resources import CaseStoreResource, SegmenterResource, ShardSourceResource

from .dagster_dev import stack_deployment

pytestmark = pytest.mark.skipif(not os.environ.get("DAGSTER_PG_HOST"), reason="no PostgreSQL: .ci/run starts one (eval \"$(bash .ci/postgres.sh)\")")


@pytest.fixture()
def cluster_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A DAGSTER_HOME with the cluster config verbatim, on a new database of the server."""
    deployment, pg_env = stack_deployment()
    assert deployment == "cluster"
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(instance_config_path("cluster"), home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_the_cluster_instance_keeps_runs_events_and_schedules_in_postgres(cluster_instance) -> None:
    kinds = {type(s).__name__ for s in (cluster_instance.run_storage, cluster_instance.event_log_storage, cluster_instance.schedule_storage)}
    assert kinds == {"PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}


def test_a_case_goes_through_the_chain_on_the_cluster_instance(cluster_instance, hub, tmp_path: Path) -> None:
    case_id = CASE_IDS[1]
    resources = {
        "shard_source": ShardSourceResource(repo_id=DEFAULT_REPO_ID, endpoint=hub.url),
        "case_store": CaseStoreResource(data_dir=str(tmp_path / "data")),
        "segmenter": SegmenterResource(name="rules", device="cpu"),
    }
    result = dg.materialize(CASE_CHAIN, partition_key=case_id, instance=cluster_instance, resources=resources)
    assert result.success
    stored = {
        asset.key.to_user_string(): cluster_instance.get_materialized_partitions(asset.key)
        for asset in CASE_CHAIN
    }
    assert stored == {"case_inputs": {case_id}, "case_prediction": {case_id}, "case_metrics": {case_id}}
    assert cluster_instance.get_run_records()[0].dagster_run.status == dg.DagsterRunStatus.SUCCESS
