"""The code location: every asset, check, job, sensor and schedule, with the resources that the
environment selects (see README: ISLES_DATA_DIR, ISLES_HF_REPO, HF_ENDPOINT, ISLES_SEGMENTER ...)."""

import dagster as dg

from .defs.jobs import CASE_CHAIN, case_inputs_job, model_chain_job, report_job
from .defs.leaderboard import leaderboard
from .defs.models import MODEL_SENSORS
from .defs.report import metrics_report
from .defs.resources import CaseStoreResource, ModelRegistryResource, SegmenterResource, ShardSourceResource
from .defs.schedules import (
    case_backfill_schedule,
    model_backfill_schedule,
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

defs = dg.Definitions(
    assets=[*CASE_CHAIN, metrics_report, leaderboard, segmenter_checkpoint, *UPSTREAM_ASSETS],
    asset_checks=[inputs_on_one_grid, metrics_in_range],
    jobs=[case_inputs_job, model_chain_job, report_job, train_segmenter_job, *UPSTREAM_JOBS],
    schedules=[case_backfill_schedule, model_backfill_schedule],
    sensors=[*UPSTREAM_SENSORS, report_after_success, report_after_failure, *MODEL_SENSORS],
    resources={
        **UPSTREAM_RESOURCES,
        "shard_source": ShardSourceResource.from_env(),
        "case_store": CaseStoreResource.from_env(),
        "segmenter": SegmenterResource.from_env(),
        "models": ModelRegistryResource.from_env(),
    },
)
