"""``case_prediction``: the segmenter's lesion mask for a case, on the input grid.

It runs in the ``gpu`` pool (limited to one at a time by the instance config), and the
segmenter resource builds the model once per run, however many cases the run carries.
"""

import json

import dagster as dg

from .. import nifti
from ..inputs import read_case_images
from ..predict import INFERRED_KEYS, predict_images
from ..segment.channels import input_columns_for
from .batching import CaseOutcome, run_cases
from .cases import case_inputs
from .partitions import case_backfill_policy, case_partitions
from .resources import CaseStoreResource, SegmenterResource

PREDICTION_FILE = "prediction.nii.gz"
# How the prediction was made, beside it: the metrics record and the report carry it on.
PREDICTION_INFO_FILE = "prediction.json"


@dg.asset(
    partitions_def=case_partitions,
    backfill_policy=case_backfill_policy,
    deps=[case_inputs],
    pool="gpu",
    group_name="cases",
    kinds={"pytorch", "nifti"},
    description="The predicted lesion mask (uint8 NIfTI on the input grid, with its affine and header).",
)
def case_prediction(
    context: dg.AssetExecutionContext, case_store: CaseStoreResource, segmenter: SegmenterResource
) -> dg.MaterializeResult:
    store, model = case_store.store(), segmenter.get()

    def segment(case_id: str) -> CaseOutcome:
        result = predict_images(model, read_case_images(store, case_id, input_columns_for(segmenter.name, segmenter.checkpoint)))
        target = store.case_path(case_id, PREDICTION_FILE)
        sha = store.write_bytes(target, nifti.encode(result.mask))
        info = {"segmenter": model.name, **result.record()}
        store.write_text(store.case_path(case_id, PREDICTION_INFO_FILE), json.dumps(info, indent=2))
        context.log.info(f"case {case_id}: {result.predicted_ml:.2f} ml predicted in {result.seconds:.2f} s on {result.device}")
        return CaseOutcome(
            metadata={
                "segmenter": model.name,
                "device": result.device,
                "requested_device": result.requested_device,
                "fallbacks": dg.MetadataValue.text("; ".join(result.fallbacks) or "none"),
                **{key: value for key, value in result.record().items() if key in INFERRED_KEYS},
                "seconds": dg.MetadataValue.float(round(result.seconds, 4)),
                "predicted_ml": dg.MetadataValue.float(round(result.predicted_ml, 4)),
                "path": dg.MetadataValue.path(str(target)),
                "sha256": sha,
            }
        )

    return run_cases(context, store, segment)
