"""The instance config of each deployment (``ISLES_DEPLOYMENT=local|cluster``, see settings.py),
kept as files under ``deploy/`` at the project root."""

from __future__ import annotations

from pathlib import Path

from .settings import DEPLOYMENTS

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"


def instance_config(name: str = "local") -> Path:
    """``deploy/<name>/dagster.yaml``."""
    if name not in DEPLOYMENTS:
        raise ValueError(f"deployment {name!r}: expected one of {', '.join(DEPLOYMENTS)}")
    return DEPLOY_DIR / name / "dagster.yaml"
