"""What differs between deployments, in one place: the executor of the case chain and what
``case_prediction`` asks of Kubernetes (``ISLES_DEPLOYMENT``, see isles_pipeline/deployment.py).

The asset definitions stay the same everywhere; only these choices change, the way Dagster's
``project_fully_featured`` picks resources per deployment.
"""

from __future__ import annotations

import os

import dagster as dg

from ..deployment import deployment_name

# A GPU node: the label NVIDIA's GPU feature discovery puts on nodes with a card, and the taint
# that GPU node pools usually carry so that nothing else lands there.
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def gpu_pod_config() -> dict:
    """The ``dagster-k8s/config`` tag value of a step that needs one GPU."""
    return {
        "container_config": {
            "resources": {
                "requests": {"cpu": "2", "memory": "12Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": {"node_selector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS},
    }


def case_prediction_op_tags(deployment: str | None = None) -> dict | None:
    """On a cluster the `gpu` pool maps to a GPU pod; on one machine there is nothing to ask for."""
    if (deployment or deployment_name()) == "cluster":
        return {"dagster-k8s/config": gpu_pod_config()}
    return None


def on_kubernetes() -> bool:
    """Inside a pod, with dagster-k8s installed: steps can be pods of their own."""
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return False
    try:
        import dagster_k8s  # noqa: F401
    except ImportError:
        return False
    return True


def case_chain_executor(deployment: str | None = None) -> dg.ExecutorDefinition:
    """local: every step of a run in the run's own process (no process start per step; the GPU
    pool still holds, steps run one after another); cluster: a pod per step on Kubernetes, else a
    process per step so that fetching and scoring of one case overlap the GPU step of another."""
    if (deployment or deployment_name()) == "local":
        return dg.in_process_executor
    if on_kubernetes():
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return dg.multiprocess_executor
