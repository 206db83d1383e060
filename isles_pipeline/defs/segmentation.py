"""``case_prediction``: a model's lesion mask for a case, on the input grid, per (case, model).

It runs in the ``gpu`` pool (limited to one at a time by the instance config). A run builds each
model it carries once, however many cases, and fingerprints it once (``weights.py``); the
``models`` resource gives the registry and the device.
"""

import hashlib
import json

import dagster as dg

from .. import nifti
from ..inputs import read_case_images, read_manifest
from ..models import result_path
from ..predict import INFERRED_KEYS, predict_images
from ..provenance import data_fields
from ..segment.options import options_that_ran
from ..weights import fingerprint
from .batching import CaseOutcome, Subject, run_cases
from .cases import case_inputs
from .partitions import case_backfill_policy, case_model_partitions, inputs_of_case, split_key, weights_of_model
from .resources import CaseStoreResource, ModelRegistryResource
from .training import segmenter_checkpoint

PREDICTION_FILE = "prediction.nii.gz"
# How the prediction was made, beside it: the metrics record and the report carry it on.
PREDICTION_INFO_FILE = "prediction.json"


def model_subject(step: str):
    def subject(key: str) -> Subject:
        case_id, model = split_key(key)
        return Subject(case_id, model, f"{step}.{model.replace(':', '_')}")

    return subject


def content_version(*parts: str) -> str:
    """A data version from what decided the content (16 hex digits of their sha256)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dg.asset(
    partitions_def=case_model_partitions,
    backfill_policy=case_backfill_policy,
    # segmenter_checkpoint: lineage to the trained model that network models may run
    deps=[dg.AssetDep(case_inputs, partition_mapping=inputs_of_case), dg.AssetDep("model_weights", partition_mapping=weights_of_model),
          segmenter_checkpoint],
    pool="gpu",
    group_name="cases",
    kinds={"pytorch", "nifti"},
    description="The model's predicted lesion mask (uint8 NIfTI on the input grid, with its affine and header), "
    "per (case, model); models come from the registry (models.yaml), and prediction.json records the model's "
    "fingerprint, options, the settings that ran and the data (repo, revision) it ran on.",
)
def case_prediction(context: dg.AssetExecutionContext, case_store: CaseStoreResource, models: ModelRegistryResource) -> dg.MaterializeResult:
    store, registry, built = case_store.store(), models.registry(), {}

    def segment(key: str) -> CaseOutcome:
        case_id, name = split_key(key)
        spec = registry.get(name)
        if name not in built:
            built[name] = (fingerprint(spec, models.endpoint), models.build(spec))
        made_by, model = built[name]
        manifest = read_manifest(store, case_id)
        result = predict_images(model, read_case_images(store, case_id, spec.input_columns()))
        target = result_path(store, case_id, name, PREDICTION_FILE)
        sha = store.write_bytes(target, nifti.encode(result.mask))
        ran = options_that_ran(spec.segmenter, dict(result.info))
        info = {"model": name, "fingerprint": made_by.value, "weights": made_by.weights, "segmenter": model.name,
                "options": spec.options, "ran_with": ran, **data_fields(manifest), **result.record()}
        store.write_text(result_path(store, case_id, name, PREDICTION_INFO_FILE), json.dumps(info, indent=2))
        context.log.info(f"case {case_id}, model {name}: {result.predicted_ml:.2f} ml predicted in {result.seconds:.2f} s on {result.device}")
        return CaseOutcome(
            metadata={
                "model": name,
                "fingerprint": made_by.value,
                "weights": made_by.weights or "none",
                "segmenter": model.name,
                "options": dg.MetadataValue.json(spec.options),
                "ran_with": dg.MetadataValue.json(ran),
                "data_revision": str(info["data_revision"] or ""),
                "device": result.device,
                "requested_device": result.requested_device,
                "fallbacks": dg.MetadataValue.text("; ".join(result.fallbacks) or "none"),
                **{field: value for field, value in result.record().items() if field in INFERRED_KEYS},
                "seconds": dg.MetadataValue.float(round(result.seconds, 4)),
                "predicted_ml": dg.MetadataValue.float(round(result.predicted_ml, 4)),
                "path": dg.MetadataValue.path(str(target)),
                "sha256": sha,
            },
            data_version=content_version(made_by.value, manifest.shard_oid if manifest else ""),
        )

    return run_cases(context, store, segment, model_subject("case_prediction"))
