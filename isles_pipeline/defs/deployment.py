"""What differs between deployments, in one place: the executor of the case chain and, on
Kubernetes, the pod that ``case_prediction`` asks for (``ISLES_DEPLOYMENT``, see settings.py).

The asset definitions stay the same everywhere; only the executor changes, the way Dagster's
``project_fully_featured`` picks resources per deployment.
"""

from __future__ import annotations

import dagster as dg

from ..settings import Settings

# A GPU node: the label NVIDIA's GPU feature discovery puts on nodes with a card, and the taint
# that GPU node pools usually carry so that nothing else lands there.
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
GPU_STEPS = ("case_prediction",)


def gpu_pod_config() -> dict:
    """The Kubernetes config of a step that needs one GPU (dagster-k8s' user-defined k8s config)."""
    return {
        "container_config": {
            "resources": {
                "requests": {"cpu": "2", "memory": "12Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": {"node_selector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS},
    }


def _k8s_installed() -> bool:
    try:
        import dagster_k8s  # noqa: F401
    except ImportError:
        return False
    return True


def case_chain_executor(settings: Settings) -> dg.ExecutorDefinition:
    """local: every step of a run in the run's own process (no process start per step; the GPU
    pool still holds, steps run one after another); cluster: a pod per step on Kubernetes (the
    GPU steps on a GPU node), else a process per step so that fetching and scoring of one case
    overlap the GPU step of another."""
    if settings.deployment == "local":
        return dg.in_process_executor
    if settings.on_kubernetes and _k8s_installed():
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({"per_step_k8s_config": {step: gpu_pod_config() for step in GPU_STEPS}})
    return dg.multiprocess_executor
