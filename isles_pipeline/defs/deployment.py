"""What ``ISLES_DEPLOYMENT`` selects in the code location: the executor, the resources and the
GPU placement of ``case_prediction`` (the way Dagster's ``project_fully_featured`` picks its
resources per deployment).

Resource settings given as ``dg.EnvVar`` are read where the resource is built, in each run's
process, not frozen into the code location when it is imported.
"""

from __future__ import annotations

import os

import dagster as dg

from ..deployments import deployment_from_env
from .resources import DEFAULT_DATA_DIR, CaseStoreResource, SegmenterResource, ShardSourceResource

# case_prediction's pod on Kubernetes: one GPU, on a node that has one (the label and taint the
# NVIDIA GPU operator sets); what turns the `gpu` pool's slots into real GPU nodes.
K8S_GPU_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def executor_for(deployment: str) -> dg.ExecutorDefinition:
    """local: the case chain in one process per run (a step process costs seconds to start, more than
    a case's work); cluster: a process per step; k8s: a pod per step."""
    if deployment == "local":
        return dg.in_process_executor
    if deployment == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return dg.multiprocess_executor


def gpu_op_tags(deployment: str) -> dict:
    return {"dagster-k8s/config": K8S_GPU_CONFIG} if deployment == "k8s" else {}


def _setting(key: str, default: str | None = None):
    """``dg.EnvVar(key)`` when the variable is set, else ``default`` (a plain value)."""
    return dg.EnvVar(key) if os.environ.get(key) else default


def resources_for(deployment: str) -> dict[str, dg.ConfigurableResource]:
    """The shard source, the case store and the segmenter; a shared deployment must name its
    storage (ISLES_DATA_DIR), a workstation defaults to ``.isles/data``."""
    if deployment != "local" and not os.environ.get("ISLES_DATA_DIR"):
        raise ValueError(f"ISLES_DEPLOYMENT={deployment} needs ISLES_DATA_DIR: shared storage every worker reaches (s3://bucket/prefix, a shared path)")
    source = {"repo_id": _setting("ISLES_HF_REPO"), "revision": _setting("ISLES_HF_REVISION"), "endpoint": _setting("HF_ENDPOINT")}
    return {
        "shard_source": ShardSourceResource(**{k: v for k, v in source.items() if v is not None}),
        "case_store": CaseStoreResource(data_dir=_setting("ISLES_DATA_DIR", DEFAULT_DATA_DIR)),
        "segmenter": SegmenterResource.from_env(),
    }


DEPLOYMENT = deployment_from_env()
