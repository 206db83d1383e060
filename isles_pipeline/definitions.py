"""The code location: every asset, check, job, sensor and schedule, with the resources that the
environment selects (see README: ISLES_DATA_DIR, ISLES_HF_REPO, HF_ENDPOINT, ISLES_SEGMENTER ...)."""

import dagster as dg

from .defs.deployment import case_chain_executor
from .defs.jobs import CASE_CHAIN, case_inputs_job, model_chain_job, report_job
from .defs.leaderboard import leaderboard
from .defs.models import MODEL_SENSORS
from .defs.report import metrics_report
from .defs.resources import (
    CaseStoreResource,
    ModelRegistryResource,
    SegmenterResource,
    ShardSourceResource,
    env_or_default,
)
from .defs.schedules import (
    build_backfill_schedules,
    report_after_backfill,
    report_after_failure,
    report_after_success,
)
from .defs.scoring import inputs_on_one_grid, metrics_in_range
from .defs.training import segmenter_checkpoint, train_segmenter_job
from .defs.upstream import (
    UPSTREAM_ASSETS,
    UPSTREAM_JOBS,
    UPSTREAM_RESOURCES,
    UPSTREAM_SENSORS,
)

# The segmenter's settings that travel as dg.EnvVar (the network options are parsed numbers).
SEGMENTER_ENV = {"name": ("ISLES_SEGMENTER", "rules"), "device": ("ISLES_DEVICE", "auto"), "checkpoint": ("ISLES_CHECKPOINT", None)}


def segmenter_resource() -> SegmenterResource:
    parsed = SegmenterResource.from_env().model_dump()
    travelling = {field: env_or_default(key, parsed.get(field, default)) for field, (key, default) in SEGMENTER_ENV.items()}
    return SegmenterResource(**{**parsed, **travelling})


def build_defs() -> dg.Definitions:
    """Everything, with the executor and resources of ISLES_DEPLOYMENT and the schedules' cron and
    status read now (each load of the code location), so nothing is fixed when modules import."""
    return dg.Definitions(
        assets=[*CASE_CHAIN, metrics_report, leaderboard, segmenter_checkpoint, *UPSTREAM_ASSETS],
        asset_checks=[inputs_on_one_grid, metrics_in_range],
        jobs=[case_inputs_job, model_chain_job, report_job, train_segmenter_job, *UPSTREAM_JOBS],
        schedules=build_backfill_schedules(),
        sensors=[*UPSTREAM_SENSORS, report_after_success, report_after_failure, report_after_backfill, *MODEL_SENSORS],
        executor=case_chain_executor(),
        resources={
            **UPSTREAM_RESOURCES,
            "shard_source": ShardSourceResource.from_env(),
            "case_store": CaseStoreResource.from_env(),
            "segmenter": segmenter_resource(),
            "models": ModelRegistryResource.from_env(),
        },
    )


defs = build_defs()
