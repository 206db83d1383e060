"""Where the pipeline runs: ``ISLES_DEPLOYMENT=local|cluster|k8s`` and its instance config.

- ``local``: one workstation, ``dagster dev`` or the demo; SQLite; ``deploy/local/dagster.yaml``.
- ``cluster``: shared PostgreSQL and storage (``ISLES_DATA_DIR`` required, e.g. ``s3://...``);
  ``deploy/cluster/dagster.yaml``.
- ``k8s``: ``cluster`` plus one Kubernetes pod per step, ``case_prediction`` on a GPU node;
  Dagster's Helm chart with ``deploy/k8s/values.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path

DEPLOYMENTS = ("local", "cluster", "k8s")
DEPLOYMENT_ENV = "ISLES_DEPLOYMENT"
# deploy/ sits beside the package in a checkout (pip install -e .) and in the image (deploy/k8s/Dockerfile).
DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy"


def deployment_from_env() -> str:
    name = os.environ.get(DEPLOYMENT_ENV, "").strip().lower() or "local"
    if name not in DEPLOYMENTS:
        raise ValueError(f"{DEPLOYMENT_ENV}={name!r}: expected one of {', '.join(DEPLOYMENTS)}")
    return name


def instance_config_path(deployment: str) -> Path:
    """The ``dagster.yaml`` of a deployment (k8s instances are configured by the Helm chart)."""
    path = DEPLOY_DIR / ("cluster" if deployment == "k8s" else deployment) / "dagster.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no instance config at {path}: run from a checkout of isles_pipeline (pip install -e .)")
    return path
