"""Jobs: the case chain over a partition or a range of partitions, and the report."""

import dagster as dg

from .cases import case_inputs
from .report import metrics_report
from .scoring import case_metrics
from .segmentation import case_prediction

CASE_CHAIN = [case_inputs, case_prediction, case_metrics]

case_chain_job = dg.define_asset_job(
    "case_chain",
    selection=dg.AssetSelection.assets(*CASE_CHAIN),
    description="Fetch, segment and score the selected cases (a partition or a range of them).",
)
report_job = dg.define_asset_job(
    "report_job", selection=dg.AssetSelection.assets(metrics_report), description="Rebuild the report across cases."
)
