"""Which deployment this process belongs to (``ISLES_DEPLOYMENT=local|cluster``) and the instance
config of each, kept as files under ``deploy/`` at the project root."""

from __future__ import annotations

import os
from pathlib import Path

DEPLOYMENTS = ("local", "cluster")
DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"
POSTGRES_VARS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")


def deployment_name() -> str:
    """``ISLES_DEPLOYMENT`` (default ``local``); an unknown name is one line naming the choices."""
    name = os.environ.get("ISLES_DEPLOYMENT", "").strip().lower() or "local"
    if name not in DEPLOYMENTS:
        raise ValueError(f"ISLES_DEPLOYMENT={name!r}: expected one of {', '.join(DEPLOYMENTS)}")
    return name


def instance_config(name: str = "local") -> Path:
    """``deploy/<name>/dagster.yaml``."""
    if name not in DEPLOYMENTS:
        raise ValueError(f"deployment {name!r}: expected one of {', '.join(DEPLOYMENTS)}")
    return DEPLOY_DIR / name / "dagster.yaml"


def postgres_configured() -> bool:
    """Every DAGSTER_PG_* variable that deploy/cluster/dagster.yaml reads is set."""
    return all(os.environ.get(key) for key in POSTGRES_VARS)
