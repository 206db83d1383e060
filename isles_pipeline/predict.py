"""Predicting one case's lesion mask with a segmenter, on images or on files.

The record of a prediction says what truly ran: the device that produced the mask (after an
out-of-memory fallback, the CPU, not the device asked for) and every fallback taken, as the
segmenter reports them in its ``last_info``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from . import nifti

if TYPE_CHECKING:  # segment.base imports torch, which the Dagster code location must not load
    from .segment.base import Segmenter


INFERRED_KEYS = ("adc_unit",)


@dataclass(frozen=True)
class Prediction:
    mask: nib.Nifti1Image
    seconds: float
    predicted_ml: float
    device: str  # the device that produced the mask
    fallbacks: tuple[str, ...] = ()  # every retry the segmenter took, with its cause
    requested_device: str = ""
    info: dict = field(default_factory=dict)  # the segmenter's own record (ADC unit, folds ...)

    def record(self) -> dict:
        """How the mask was made, as scalars (prediction.json; the metrics record and the report
        table carry its keys on): the fallbacks joined with "; ", "" when none were taken."""
        record = {
            "device": self.device,
            "requested_device": self.requested_device,
            "fallbacks": "; ".join(self.fallbacks),
            "seconds": round(self.seconds, 4),
        }
        # What the segmenter inferred about the input, where it says (the rule: the ADC unit).
        record.update({key: str(self.info[key]) for key in INFERRED_KEYS if key in self.info})
        return record


def predict(segmenter: Segmenter, dwi: nib.Nifti1Image, adc: nib.Nifti1Image) -> Prediction:
    """Segment a case from its DWI and ADC; see :func:`predict_images`."""
    return predict_images(segmenter, {"dwi": dwi, "adc": adc})


def predict_images(segmenter: Segmenter, images: Mapping[str, nib.Nifti1Image]) -> Prediction:
    """Segment a case from its images by shard column (all on one grid); the mask is uint8 on that
    grid, with the first image's affine and header."""
    if not images:
        raise ValueError("no images to segment")
    grid = nifti.check_same_grid(dict(images))
    reference = next(iter(images.values()))
    arrays = {column: nifti.as_float32(image) for column, image in images.items()}
    started = time.perf_counter()
    mask = segmenter.segment_images(arrays, grid.affine, nifti.header_spacing(reference))
    seconds = time.perf_counter() - started
    if mask.shape != grid.shape:
        raise ValueError(f"segmenter {segmenter.name} returned shape {mask.shape} for input shape {grid.shape}")
    info = dict(getattr(segmenter, "last_info", None) or {})
    return Prediction(
        mask=_mask_image(mask, reference),
        seconds=seconds,
        predicted_ml=float(mask.sum()) * grid.voxel_ml,
        device=str(info.get("device", segmenter.device)),
        fallbacks=tuple(str(f) for f in info.get("fallbacks", ()) or ()),
        requested_device=str(segmenter.device),
        info=info,
    )


def _mask_image(mask: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    image = nib.Nifti1Image(mask.astype(np.uint8), reference.affine, header)
    image.set_sform(reference.get_sform(), int(reference.header["sform_code"]))
    image.set_qform(reference.get_qform(), int(reference.header["qform_code"]))
    return image


def predict_files(
    dwi: Path, adc: Path, out: Path, segmenter_name: str = "rules", device: str = "auto", checkpoint: str | None = None, **options
) -> dict:
    """Segment the DWI/ADC files, write the mask to ``out``; return a JSON-ready summary."""
    return predict_image_files({"dwi": dwi, "adc": adc}, out, segmenter_name, device, checkpoint, **options)


def predict_image_files(
    paths: Mapping[str, Path], out: Path, segmenter_name: str = "rules", device: str = "auto", checkpoint: str | None = None, **options
) -> dict:
    """Segment a case from image files by shard column (``{"tmax": path, "cbf": path}``), write
    the mask to ``out``; return a JSON-ready summary."""
    from .segment.registry import make_segmenter
    from .store import CaseStore

    segmenter = make_segmenter(segmenter_name, device=device, checkpoint=checkpoint, **options)
    images = {name: nifti.decode(Path(path).read_bytes(), str(path)) for name, path in paths.items()}
    result = predict_images(segmenter, images)
    out = out.resolve()
    store = CaseStore(out.parent)
    sha = store.write_bytes(store.path(out.name), nifti.encode(result.mask))
    return {
        "out": str(out),
        "sha256": sha,
        "segmenter": segmenter.name,
        **result.record(),
        "fallbacks": list(result.fallbacks),
        "seconds": round(result.seconds, 3),
        "predicted_ml": round(result.predicted_ml, 4),
    }
