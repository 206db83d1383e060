"""``case_metrics``: the official ISLES numbers for a (case, model), its overlay picture, and the
checks on both ends of it."""

import base64
import json
import math

import dagster as dg
import numpy as np

from .. import nifti
from ..formatting import fmt_metric, rounded
from ..inputs import check_stored_inputs, read_case_images, read_manifest
from ..metrics import score_images
from ..models import result_path
from ..overlay import render_case_overlay
from ..provenance import data_fields
from .batching import CaseOutcome, run_cases
from .cases import case_inputs
from .partitions import case_backfill_policy, case_model_partitions, case_partitions, split_key, weights_of_model
from .resources import CaseStoreResource
from .segmentation import PREDICTION_FILE, PREDICTION_INFO_FILE, case_prediction, content_version, model_subject

METRICS_FILE = "metrics.json"
OVERLAY_FILE = "overlay.png"
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
    partitions_def=case_model_partitions,
    backfill_policy=case_backfill_policy,
    # model_weights: a changed model makes its metrics out of date too (Dagster does not pass
    # staleness on through case_prediction until case_prediction is recomputed)
    deps=[case_prediction, dg.AssetDep("model_weights", partition_mapping=weights_of_model)],
    group_name="cases",
    kinds={"python"},
    description="Dice, absolute volume difference (ml), lesion count difference, lesion-wise F1 "
    "(ISLES'22 and ISLES'24 rules), true and predicted volume: the model's prediction against the expert "
    "mask, per (case, model); and a PNG overlay of the slices where the lesion is largest.",
)
def case_metrics(context: dg.AssetExecutionContext, case_store: CaseStoreResource) -> dg.MaterializeResult:
    store = case_store.store()

    def score(key: str) -> CaseOutcome:
        case_id, model = split_key(key)
        images = read_case_images(store, case_id, ("dwi", "lesion_mask"))
        gt = images["lesion_mask"]
        pred = nifti.decode(store.read_bytes(result_path(store, case_id, model, PREDICTION_FILE)), f"case {case_id}, model {model} prediction")
        numbers = score_images(pred, gt).as_dict()
        info_path = result_path(store, case_id, model, PREDICTION_INFO_FILE)
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        # what made the prediction (model fingerprint, device ...) as scalars, and the data it was scored on
        made = {key: value for key, value in info.items() if not isinstance(value, (dict, list))}
        record = {"case_id": case_id, **numbers, **made, "model": model, **data_fields(read_manifest(store, case_id))}
        store.write_text(result_path(store, case_id, model, METRICS_FILE), json.dumps(record, indent=2))
        png = render_case_overlay(nifti.as_float32(images["dwi"]), np.asarray(gt.dataobj), np.asarray(pred.dataobj), record)
        overlay = result_path(store, case_id, model, OVERLAY_FILE)
        store.write_bytes(overlay, png)
        context.log.info(f"case {case_id}, model {model}: dice {fmt_metric('dice', numbers['dice'])}, "
                         f"f1 (ISLES'24) {fmt_metric('f1_isles24', numbers['f1_isles24'])}")
        return CaseOutcome(metadata={**metrics_metadata(numbers), "model": model, "fingerprint": str(made.get("fingerprint", "")),
                                     "data_revision": str(record.get("data_revision") or ""),
                                     "overlay_path": dg.MetadataValue.path(str(overlay)),
                                     "overlay": dg.MetadataValue.md(overlay_markdown(png, record))},
                           data_version=content_version(store.sha256(result_path(store, case_id, model, PREDICTION_FILE)),
                                                        *(str(record.get(k)) for k in METRIC_RANGES)))

    return run_cases(context, store, score, model_subject("case_metrics"))


def metrics_metadata(numbers: dict) -> dict:
    """The numbers as a person reads them in the UI (Dice 3 decimals, ml 2); metrics.json keeps all."""
    return {key: dg.MetadataValue.float(float(rounded(key, value))) for key, value in numbers.items()}


def overlay_markdown(png: bytes, record: dict) -> str:
    """The picture inline (a data: URI), under a one-line summary."""
    line = ", ".join(f"{key} {fmt_metric(key, record.get(key))}" for key in ("dice", "f1_isles24", "gt_ml", "pred_ml"))
    return f"**{record['case_id']} · {record['model']}**: {line}\n\n![overlay](data:image/png;base64,{base64.b64encode(png).decode()})\n"


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


@dg.asset_check(asset=case_metrics, partitions_def=case_model_partitions, description="Every metric is finite and within its range.")
def metrics_in_range(context: dg.AssetCheckExecutionContext, case_store: CaseStoreResource) -> dg.AssetCheckResult:
    store, problems = case_store.store(), {}
    for key in _keys(context):
        case_id, model = split_key(key)
        path = result_path(store, case_id, model, METRICS_FILE)
        numbers = json.loads(path.read_text()) if path.exists() else None
        if numbers is None:
            problems[key] = "no metrics record"
            continue
        bad = [f"{k}={numbers.get(k)}" for k, (lo, hi) in METRIC_RANGES.items() if not _within(numbers.get(k), lo, hi)]
        if bad:
            problems[key] = ", ".join(bad)
    return dg.AssetCheckResult(passed=not problems, metadata={"partitions": len(_keys(context)), "problems": dg.MetadataValue.json(problems)})


def _within(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high
