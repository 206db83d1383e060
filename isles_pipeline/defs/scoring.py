"""``case_metrics``: the official ISLES numbers for a case, and the checks on both ends of it."""

import json
import math

import dagster as dg

from .. import nifti
from ..inputs import check_stored_inputs, read_case_images
from ..metrics import score_images
from .batching import CaseOutcome, run_cases
from .cases import case_inputs
from .partitions import case_backfill_policy, case_partitions
from .resources import CaseStoreResource
from .segmentation import PREDICTION_FILE, PREDICTION_INFO_FILE, case_prediction

METRICS_FILE = "metrics.json"
# Bounds every metric must respect; the volumes and counts only have a floor.
METRIC_RANGES = {
    "dice": (0.0, 1.0),
    "f1_isles22": (0.0, 1.0),
    "f1_isles24": (0.0, 1.0),
    "avd_ml": (0.0, math.inf),
    "lesion_count_diff": (0.0, math.inf),
    "gt_ml": (0.0, math.inf),
    "pred_ml": (0.0, math.inf),
}


@dg.asset(
    partitions_def=case_partitions,
    backfill_policy=case_backfill_policy,
    deps=[case_prediction],
    group_name="cases",
    kinds={"python"},
    description="Dice, absolute volume difference (ml), lesion count difference, lesion-wise F1 "
    "(ISLES'22 and ISLES'24 rules), true and predicted volume: the prediction against the expert mask.",
)
def case_metrics(context: dg.AssetExecutionContext, case_store: CaseStoreResource) -> dg.MaterializeResult:
    store = case_store.store()

    def score(case_id: str) -> CaseOutcome:
        gt = read_case_images(store, case_id, ("lesion_mask",))["lesion_mask"]
        pred = nifti.decode(store.read_bytes(store.case_path(case_id, PREDICTION_FILE)), f"case {case_id} prediction")
        numbers = score_images(pred, gt).as_dict()
        info_path = store.case_path(case_id, PREDICTION_INFO_FILE)
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        record = {"case_id": case_id, **numbers, **info}
        store.write_text(store.case_path(case_id, METRICS_FILE), json.dumps(record, indent=2))
        context.log.info(f"case {case_id}: dice {numbers['dice']:.3f}, f1 (ISLES'24) {numbers['f1_isles24']:.3f}")
        return CaseOutcome(metadata={key: dg.MetadataValue.float(float(value)) for key, value in numbers.items()})

    return run_cases(context, store, score)


def _keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    return list(context.op_execution_context.partition_keys)


@dg.asset_check(
    asset=case_inputs,
    partitions_def=case_partitions,
    blocking=True,
    description="The stored DWI, ADC and mask are the bytes the manifest names and share one 3-D grid.",
)
def inputs_on_one_grid(context: dg.AssetCheckExecutionContext, case_store: CaseStoreResource) -> dg.AssetCheckResult:
    store, problems = case_store.store(), {}
    for case_id in _keys(context):
        try:
            check_stored_inputs(store, case_id)
        except (nifti.NiftiError, FileNotFoundError, ValueError) as exc:
            problems[case_id] = str(exc)
    return dg.AssetCheckResult(passed=not problems, metadata={"cases": len(_keys(context)), "problems": dg.MetadataValue.json(problems)})


@dg.asset_check(asset=case_metrics, partitions_def=case_partitions, description="Every metric is finite and within its range.")
def metrics_in_range(context: dg.AssetCheckExecutionContext, case_store: CaseStoreResource) -> dg.AssetCheckResult:
    store, problems = case_store.store(), {}
    for case_id in _keys(context):
        path = store.case_path(case_id, METRICS_FILE)
        numbers = json.loads(path.read_text()) if path.exists() else None
        if numbers is None:
            problems[case_id] = "no metrics record"
            continue
        bad = [f"{k}={numbers.get(k)}" for k, (lo, hi) in METRIC_RANGES.items() if not _within(numbers.get(k), lo, hi)]
        if bad:
            problems[case_id] = ", ".join(bad)
    return dg.AssetCheckResult(passed=not problems, metadata={"cases": len(_keys(context)), "problems": dg.MetadataValue.json(problems)})


def _within(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high
