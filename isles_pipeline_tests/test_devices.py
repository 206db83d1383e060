"""The device recorded is the device that ran: an out-of-memory fallback to the CPU is told.

No CUDA here, so the test stands a CUDA device in for the segmenter's configured one and makes
every CUDA attempt raise ``torch.OutOfMemoryError`` (what a too-large case raises on a GPU); the
segmenter's own retry plan then runs the case on the CPU, and ``predict`` must record that.
"""

from __future__ import annotations

import json

import dagster as dg
import nibabel as nib
import numpy as np
import torch

from isles_pipeline.defs.resources import ModelRegistryResource
from isles_pipeline.predict import predict
from isles_pipeline.segment.network import NetworkSegmenter
from isles_pipeline_tests.chain import register_models


class _Lesion(torch.nn.Module):
    """Lesion where the DWI channel is above 1.5 (input channels [ADC, DWI])."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:2] - 1.5], dim=1)


class _CudaOutOfMemory(NetworkSegmenter):
    """A network segmenter configured for CUDA whose CUDA attempts run out of memory."""

    def __init__(self):
        super().__init__([_Lesion()], device="cpu", roi_size=(16, 16, 16), overlap=0.25, sw_batch_size=2)
        self.device = torch.device("cuda")
        self.attempts: list[tuple[str, int]] = []

    def _segment_on(self, dwi, adc, affine, models, settings, device, sw_batch_size):
        self.attempts.append((device.type, sw_batch_size))
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._segment_on(dwi, adc, affine, models, settings, device, sw_batch_size)


def _case():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    dwi = np.ones((12, 12, 8), np.float32)
    dwi[3:7, 3:7, 2:5] = 3.0
    adc = np.full((12, 12, 8), 0.8, np.float32)
    return nib.Nifti1Image(dwi, affine), nib.Nifti1Image(adc, affine)


def test_an_out_of_memory_fallback_is_recorded_with_the_device_that_ran():
    segmenter = _CudaOutOfMemory()
    dwi, adc = _case()
    result = predict(segmenter, dwi, adc)
    assert segmenter.attempts == [("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert result.device == "cpu" and result.requested_device == "cuda"
    assert result.fallbacks == ("out of memory on cuda with sw_batch_size=2", "out of memory on cuda with sw_batch_size=1")
    assert result.record() == {
        "device": "cpu",
        "requested_device": "cuda",
        "fallbacks": "out of memory on cuda with sw_batch_size=2; out of memory on cuda with sw_batch_size=1",
        "seconds": round(result.seconds, 4),
    }
    assert int(np.asarray(result.mask.dataobj).sum()) == 4 * 4 * 3


class _OutOfMemoryModels(ModelRegistryResource):
    """The registry resource, building the segmenter above for the registered model (once per run,
    as ``case_prediction`` builds each model)."""

    def build(self, spec):
        return _CudaOutOfMemory()


def test_case_prediction_metadata_and_prediction_json_carry_the_fallback(hub, tmp_path):
    from isles_pipeline.catalogue import DEFAULT_REPO_ID
    from isles_pipeline.defs.partitions import case_model_key
    from isles_pipeline.defs.resources import CaseStoreResource
    from isles_pipeline.defs.segmentation import PREDICTION_INFO_FILE, case_prediction
    from isles_pipeline.inputs import fetch_case
    from isles_pipeline.models import result_path
    from isles_pipeline.source import ShardReader, ShardSource
    from isles_pipeline.store import CaseStore

    case_id = "sub-stroke0001"
    store = CaseStore(tmp_path)
    fetch_case(ShardReader(ShardSource(DEFAULT_REPO_ID, "main", hub.url)), store, case_id)
    with dg.instance_for_test() as instance:
        register_models(instance, ["rules"])
        result = dg.materialize([case_prediction], partition_key=case_model_key(case_id, "rules"), instance=instance,
                                resources={"case_store": CaseStoreResource(data_dir=str(tmp_path)), "models": _OutOfMemoryModels()})
        assert result.success
        event = result.asset_materializations_for_node("case_prediction")[0]
    metadata = {key: getattr(value, "value", value) for key, value in event.metadata.items()}
    fallbacks = "out of memory on cuda with sw_batch_size=2; out of memory on cuda with sw_batch_size=1"
    assert (metadata["device"], metadata["requested_device"], metadata["fallbacks"]) == ("cpu", "cuda", fallbacks)
    info = json.loads(store.read_bytes(result_path(store, case_id, "rules", PREDICTION_INFO_FILE)))
    assert (info["device"], info["requested_device"], info["fallbacks"]) == ("cpu", "cuda", fallbacks)
