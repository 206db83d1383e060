"""Jobs: a case's inputs (per case), a model's predictions and metrics (per (case, model)), the
report and the leaderboard, and an observation of the models' weights. Dagster runs one
partitions definition per job, so the chain is two jobs; the automation (defs/automation.py)
runs the second when the first has fetched."""

import dagster as dg

from .cases import case_inputs
from .leaderboard import leaderboard
from .report import metrics_report
from .scoring import case_metrics
from .segmentation import case_prediction

CASE_CHAIN = [case_inputs, case_prediction, case_metrics]
MODEL_CHAIN = [case_prediction, case_metrics]

case_inputs_job = dg.define_asset_job(
    "case_inputs_job",
    selection=dg.AssetSelection.assets(case_inputs),
    description="Fetch the selected cases' inputs (a partition or a range of them), once for every model.",
)
model_chain_job = dg.define_asset_job(
    "model_chain",
    selection=dg.AssetSelection.assets(*MODEL_CHAIN),
    description="Segment and score the selected (case, model) partitions: a range of cases for one model.",
)
report_job = dg.define_asset_job(
    "report_job",
    selection=dg.AssetSelection.assets(metrics_report, leaderboard),
    description="Rebuild the report and the leaderboard across cases and models.",
)
observe_model_weights_job = dg.define_asset_job(
    "observe_model_weights",
    selection=dg.AssetSelection.assets("model_weights"),
    description="Observe every registered model's fingerprint (its weights by content, and its settings).",
)
