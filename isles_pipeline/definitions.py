"""The code location: every asset, check, job, sensor and schedule, with the resources that the
environment selects (see README: ISLES_DATA_DIR, ISLES_HF_REPO, HF_ENDPOINT, ISLES_SEGMENTER ...)."""

import warnings

import dagster as dg

# backfill_policy is marked beta in dagster 1.13; it is what batches cases per run.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from .defs.cases import case_inputs  # noqa: E402
from .defs.partitions import case_partitions  # noqa: E402
from .defs.report import metrics_report  # noqa: E402
from .defs.resources import CaseStoreResource, SegmenterResource, ShardSourceResource  # noqa: E402
from .defs.scoring import case_metrics, inputs_on_one_grid, metrics_in_range  # noqa: E402
from .defs.segmentation import case_prediction  # noqa: E402

CASE_CHAIN = [case_inputs, case_prediction, case_metrics]

case_chain_job = dg.define_asset_job(
    "case_chain",
    selection=dg.AssetSelection.assets(*CASE_CHAIN),
    partitions_def=case_partitions,
    description="Fetch, segment and score the selected cases (a partition or a range of them).",
)
report_job = dg.define_asset_job("report_job", selection=dg.AssetSelection.assets(metrics_report), description="Rebuild the report across cases.")

defs = dg.Definitions(
    assets=[*CASE_CHAIN, metrics_report],
    asset_checks=[inputs_on_one_grid, metrics_in_range],
    jobs=[case_chain_job, report_job],
    resources={
        "shard_source": ShardSourceResource.from_env(),
        "case_store": CaseStoreResource.from_env(),
        "segmenter": SegmenterResource.from_env(),
    },
)
