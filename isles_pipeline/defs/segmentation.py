"""``case_prediction``: the segmenter's lesion mask for a case, on the input grid.

It runs in the ``gpu`` pool (limited to one at a time by the instance config), and the
segmenter resource builds the model once per run, however many cases the run carries.
"""

import json

import dagster as dg

from .. import nifti
from ..inputs import read_case_images
from ..predict import predict
from .batching import CaseOutcome, run_cases
from .cases import case_inputs
from .deployment import case_prediction_op_tags
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
    op_tags=case_prediction_op_tags(),
    group_name="cases",
    kinds={"pytorch", "nifti"},
    description="The predicted lesion mask (uint8 NIfTI on the input grid, with its affine and header).",
)
def case_prediction(
    context: dg.AssetExecutionContext, case_store: CaseStoreResource, segmenter: SegmenterResource
) -> dg.MaterializeResult:
    store, model = case_store.store(), segmenter.get()

    def segment(case_id: str) -> CaseOutcome:
        images = read_case_images(store, case_id, ("dwi", "adc"))
        result = predict(model, images["dwi"], images["adc"])
        target = store.case_path(case_id, PREDICTION_FILE)
        sha = store.write_bytes(target, nifti.encode(result.mask))
        info = {"segmenter": model.name, "device": result.device, "seconds": round(result.seconds, 4)}
        store.write_text(store.case_path(case_id, PREDICTION_INFO_FILE), json.dumps(info, indent=2))
        context.log.info(f"case {case_id}: {result.predicted_ml:.2f} ml predicted in {result.seconds:.2f} s on {result.device}")
        return CaseOutcome(
            metadata={
                "segmenter": model.name,
                "device": result.device,
                "seconds": dg.MetadataValue.float(round(result.seconds, 4)),
                "predicted_ml": dg.MetadataValue.float(round(result.predicted_ml, 4)),
                "path": dg.MetadataValue.path(str(target)),
                "sha256": sha,
            }
        )

    return run_cases(context, store, segment)
