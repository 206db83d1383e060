"""Deployments: the ISLES_DEPLOYMENT switch, settings that travel in the run config, the
case_prediction pod that dagster-k8s renders, the chain on PostgreSQL and on an S3 API (moto)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pytest

from isles_devkit.dagster_dev import free_port
from isles_devkit.postgres import fresh_database
from isles_pipeline.catalogue import CASE_IDS
from isles_pipeline.definitions import build_defs
from isles_pipeline.defs.cases import case_inputs
from isles_pipeline.defs.jobs import MODEL_CHAIN
from isles_pipeline.defs.partitions import case_model_key
from isles_pipeline.defs.report import metrics_report
from isles_pipeline.deployment import instance_config
from isles_pipeline.settings import SettingsError, postgres_configured, read_settings
from isles_pipeline_tests.chain import register_models, resources_for

CASE = CASE_IDS[0]
needs_postgres = pytest.mark.skipif(
    not postgres_configured(), reason="no PostgreSQL: set DAGSTER_PG_* (eval \"$(bash scripts/postgres.sh)\")"
)


def test_the_switch_selects_the_executor(monkeypatch):
    monkeypatch.delenv("ISLES_DEPLOYMENT", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert build_defs().resolve_job_def("model_chain").executor_def.name == "in_process"
    monkeypatch.setenv("ISLES_DEPLOYMENT", "cluster")
    assert build_defs().resolve_job_def("model_chain").executor_def.name == "multiprocess"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert build_defs().resolve_job_def("model_chain").executor_def.name == "k8s"
    monkeypatch.setenv("ISLES_DEPLOYMENT", "laptop")
    with pytest.raises(SettingsError, match="ISLES_DEPLOYMENT='laptop': expected one of local, cluster"):
        build_defs()


def _chain_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_the_run_config_wins_over_a_workers_environment(hub, tmp_path, monkeypatch):
    launcher_dir, worker_dir = tmp_path / "launcher", tmp_path / "worker"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("ISLES_DATA_DIR", str(launcher_dir))
    job = build_defs().resolve_job_def("case_inputs_job")
    # The worker's environment differs from the launcher's; the run config says where files go.
    monkeypatch.setenv("ISLES_DATA_DIR", str(worker_dir))
    run_config = {"resources": {"case_store": {"config": {"data_dir": str(launcher_dir)}}}}
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(run_config=run_config, partition_key=CASE, instance=instance).success
        assert not worker_dir.exists()
        assert {"dwi.nii.gz", "adc.nii.gz", "lesion_mask.nii.gz", "source.json"} <= {Path(f).name for f in _chain_files(launcher_dir)}
        # Without it, the EnvVar is resolved where the resource is built (this "worker"), not at import.
        assert job.execute_in_process(partition_key=CASE, instance=instance).success
    assert _chain_files(worker_dir) == _chain_files(launcher_dir)


def test_case_prediction_pod_asks_for_a_gpu_node_through_dagster_k8s(monkeypatch):
    """The pods as dagster-k8s renders them from the k8s executor's per-step config (what its step
    handler merges into each step's pod), in a cluster deployment inside Kubernetes."""
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    monkeypatch.setenv("ISLES_DEPLOYMENT", "cluster")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    executor = build_defs().resolve_job_def("model_chain").executor_def
    per_step = executor.config_schema.resolve_config({}).value["config"]["per_step_k8s_config"]
    pods = {}
    for step in ("case_inputs", "case_prediction"):
        job = construct_dagster_k8s_job(DagsterK8sJobConfig(job_image="isles:test", dagster_home="/opt/dagster/dagster_home"),
                                        ["dagster", "api", "execute_step"], f"{step.replace('_', '-')}-step",
                                        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(per_step.get(step, {})))
        pods[step] = job.to_dict()["spec"]["template"]["spec"]
    gpu_pod = pods["case_prediction"]
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert gpu_pod["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu_pod["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists", "toleration_seconds": None, "value": None}]
    assert pods["case_inputs"]["containers"][0]["resources"] == {"claims": None, "limits": None, "requests": None}
    assert pods["case_inputs"]["node_selector"] is None
    assert read_settings().on_kubernetes


def run_chain(instance: dg.DagsterInstance, resources: dict, case_id: str) -> None:
    """The case's inputs, then the built-in rules model on it."""
    register_models(instance, ["rules"])
    assert dg.materialize([case_inputs], partition_key=case_id, instance=instance, resources=resources).success
    assert dg.materialize(MODEL_CHAIN, partition_key=case_model_key(case_id, "rules"), instance=instance, resources=resources).success


@needs_postgres
def test_the_case_chain_and_the_report_on_postgres(hub, tmp_path, monkeypatch):
    """deploy/cluster/dagster.yaml with only DAGSTER_PG_* set: runs, events and partitions in PostgreSQL."""
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text(instance_config("cluster").read_text())
    with fresh_database() as db_name:
        monkeypatch.setenv("DAGSTER_PG_DB", db_name)
        with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            resources = resources_for(hub.url, str(tmp_path / "data"))
            for case_id in CASE_IDS[:2]:
                run_chain(instance, resources, case_id)
            assert dg.materialize([metrics_report], instance=instance, resources=resources).success
            assert len(instance.get_run_records()) == 5
            materialized = instance.get_materialized_partitions(dg.AssetKey("case_metrics"))
            assert materialized == {case_model_key(case_id, "rules") for case_id in CASE_IDS[:2]}


# --------------------------------------------------------------------------------------------
# Object storage: a real S3 API (moto's server) on 127.0.0.1, configured by AWS_* only.


@pytest.fixture()
def s3_bucket(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # an earlier endpoint must not be reused
    client = boto3.client("s3")
    client.create_bucket(Bucket="isles")
    try:
        yield client
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def _objects(client, bucket: str, prefix: str) -> dict[str, str]:
    """key below prefix -> sha256 of its bytes."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix):]] = hashlib.sha256(body).hexdigest()
    return found


def _report_numbers(result: dg.ExecuteInProcessResult) -> dict:
    [materialization] = result.asset_materializations_for_node("metrics_report")
    numbers = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return {k: v for k, v in numbers.items() if isinstance(v, (int, float)) and "seconds" not in k}


def test_the_case_chain_and_the_report_on_s3(hub, tmp_path, s3_bucket):
    """The same cases on a local folder and on s3://isles/run: the same files, byte for byte, and
    the same report numbers."""
    outcomes = {}
    for name, data_dir in (("local", str(tmp_path / "local")), ("s3", "s3://isles/run")):
        resources = resources_for(hub.url, data_dir)
        with dg.instance_for_test() as instance:
            for case_id in CASE_IDS[:2]:
                run_chain(instance, resources, case_id)
            outcomes[name] = _report_numbers(dg.materialize([metrics_report], instance=instance, resources=resources))
    local_root = tmp_path / "local"
    local = {p: hashlib.sha256((local_root / p).read_bytes()).hexdigest() for p in _chain_files(local_root)}
    on_s3 = _objects(s3_bucket, "isles", "run/")
    assert sorted(on_s3) == sorted(local)
    # NIfTI volumes byte for byte; the JSON records equal but for the time the segmenter took.
    volumes = [key for key in local if key.endswith(".nii.gz")]
    assert len(volumes) == 2 * 4 and all(on_s3[key] == local[key] for key in volumes)
    for key in (k for k in local if k.endswith(".json")):
        text = s3_bucket.get_object(Bucket="isles", Key=f"run/{key}")["Body"].read()
        assert _timeless(json.loads(text)) == _timeless(json.loads((local_root / key).read_text())), key
    assert outcomes["s3"] == outcomes["local"] and outcomes["local"]
    assert not [key for key in on_s3 if ".tmp" in key]


def _timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if "seconds" not in k}
