"""Predicting one case's lesion mask with a segmenter, on images or on files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from . import nifti

if TYPE_CHECKING:  # segment.base imports torch, which the Dagster code location must not load
    from .segment.base import Segmenter


@dataclass(frozen=True)
class Prediction:
    mask: nib.Nifti1Image
    seconds: float
    predicted_ml: float
    device: str


def predict(segmenter: Segmenter, dwi: nib.Nifti1Image, adc: nib.Nifti1Image) -> Prediction:
    """Segment a case; the mask is uint8 on the input grid, with the DWI's affine and header."""
    grid = nifti.check_same_grid({"dwi": dwi, "adc": adc})
    started = time.perf_counter()
    mask = segmenter.segment(nifti.as_float32(dwi), nifti.as_float32(adc), grid.affine)
    seconds = time.perf_counter() - started
    if mask.shape != grid.shape:
        raise ValueError(f"segmenter {segmenter.name} returned shape {mask.shape} for input shape {grid.shape}")
    header = dwi.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    image = nib.Nifti1Image(mask.astype(np.uint8), dwi.affine, header)
    image.set_sform(dwi.get_sform(), int(dwi.header["sform_code"]))
    image.set_qform(dwi.get_qform(), int(dwi.header["qform_code"]))
    return Prediction(image, seconds, float(mask.sum()) * grid.voxel_ml, str(segmenter.device))


def predict_files(dwi: Path, adc: Path, out: Path, segmenter_name: str = "rules", device: str = "auto", checkpoint: str | None = None) -> dict:
    """Segment the DWI/ADC files, write the mask to ``out``; return a JSON-ready summary."""
    from .segment.registry import make_segmenter
    from .store import CaseStore

    segmenter = make_segmenter(segmenter_name, device=device, checkpoint=checkpoint)
    images = {name: nifti.decode(path.read_bytes(), str(path)) for name, path in (("dwi", dwi), ("adc", adc))}
    result = predict(segmenter, images["dwi"], images["adc"])
    out = out.resolve()
    store = CaseStore(out.parent)
    sha = store.write_bytes(store.path(out.name), nifti.encode(result.mask))
    return {
        "out": str(out),
        "sha256": sha,
        "segmenter": segmenter.name,
        "device": result.device,
        "seconds": round(result.seconds, 3),
        "predicted_ml": round(result.predicted_ml, 4),
    }
