"""ISLES_DEPLOYMENT: each deployment's code location, loaded in a fresh process as a deployment
would load it, with its executor, its resources and (on Kubernetes) case_prediction's GPU pod,
rendered by dagster-k8s's own job builder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from isles_pipeline.deployments import DEPLOY_DIR, instance_config_path

INSPECT = """
import json, dagster as dg
from isles_pipeline.definitions import defs
repo = defs.get_repository_def()
job = repo.get_job("case_chain")
node = next(n for n in job.graph.nodes if n.name == "case_prediction")
store = defs.resources["case_store"]
print(json.dumps({
    "executor": job.executor_def.name,
    "op_tags": dict(node.definition.tags),
    "data_dir": [type(store.data_dir).__name__, getattr(store.data_dir, "env_var_name", store.data_dir)],
}))
"""


def load_location(deployment: str, **env: str) -> subprocess.CompletedProcess:
    child = {k: v for k, v in os.environ.items() if not k.startswith("ISLES_")}
    child.update(ISLES_DEPLOYMENT=deployment, **env)
    return subprocess.run([sys.executable, "-c", INSPECT], capture_output=True, text=True, env=child, timeout=300)


def location(deployment: str, **env: str) -> dict:
    done = load_location(deployment, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_local_runs_the_case_chain_in_one_process_and_defaults_its_data_folder() -> None:
    found = location("local")
    assert (found["executor"], found["op_tags"], found["data_dir"]) == ("in_process", {}, ["str", ".isles/data"])


def test_cluster_runs_a_process_per_step_and_reads_its_storage_from_the_environment_at_run_time() -> None:
    found = location("cluster", ISLES_DATA_DIR="s3://lab-bucket/isles")
    assert found["executor"] == "multiprocess"
    assert found["data_dir"] == ["EnvVar", "ISLES_DATA_DIR"]


def test_a_shared_deployment_without_storage_is_one_clear_error() -> None:
    done = load_location("cluster")
    assert done.returncode != 0
    assert "ISLES_DEPLOYMENT=cluster needs ISLES_DATA_DIR" in done.stderr


def test_an_unknown_deployment_is_named() -> None:
    done = load_location("laptop")
    assert "ISLES_DEPLOYMENT='laptop': expected one of local, cluster, k8s" in done.stderr


def test_on_kubernetes_case_prediction_asks_for_a_gpu_on_a_gpu_node() -> None:
    pytest.importorskip("dagster_k8s", reason="dagster-k8s comes with the cluster extra: pip install -e '.[cluster]'")
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    found = location("k8s", ISLES_DATA_DIR="s3://lab-bucket/isles")
    assert found["executor"] == "k8s"
    user_config = get_user_defined_k8s_config(found["op_tags"])
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="isles-pipeline:latest", dagster_home="/opt/dagster/dagster_home", instance_config_map="dagster-instance"),
        args=["dagster", "api", "execute_step"],
        job_name="case-prediction-step",
        user_defined_k8s_config=user_config,
    ).to_dict()
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule", "toleration_seconds": None, "value": None}]


def test_the_helm_values_run_this_image_with_the_k8s_launcher_and_the_cluster_deployment() -> None:
    values = yaml.safe_load((DEPLOY_DIR / "k8s" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "isles_pipeline.definitions"]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["ISLES_DEPLOYMENT"] == "k8s"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert "FROM " in (DEPLOY_DIR / "k8s" / "Dockerfile").read_text()


@pytest.mark.parametrize("deployment", ["local", "cluster"])
def test_each_instance_config_limits_the_gpu_pool_to_one_step(deployment: str) -> None:
    config = yaml.safe_load(instance_config_path(deployment).read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    if deployment == "cluster":
        db = config["storage"]["postgres"]["postgres_db"]
        assert {k: v for k, v in db.items() if k != "scheme"} == {
            "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"}, "username": {"env": "DAGSTER_PG_USERNAME"},
            "password": {"env": "DAGSTER_PG_PASSWORD"}, "db_name": {"env": "DAGSTER_PG_DB"},
        }
