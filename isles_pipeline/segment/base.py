"""The segmenter interface and device selection."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Segmenter(Protocol):
    """A lesion segmenter.

    ``segment`` takes the DWI and ADC voxel arrays of one case (float32, same 3-D shape, header
    scaling applied, any orientation) and the grid's 4x4 affine (voxel -> mm), and returns a
    boolean mask of that shape. ``segment_images`` is the same for any modalities: the images by
    shard column (``dwi``, ``adc``, ``tmax``, ``cbf`` ...), of which the segmenter reads the ones it
    needs. ``spacing`` is the voxel size the image header states (NIfTI ``pixdim``), which
    nnU-Net's readers report and the affine's column norms match only to float32 precision; None:
    the column norms. After a call, ``last_info`` says how the mask was made; its ``device`` is the
    device that produced it and ``fallbacks`` lists every retry taken (for example out of memory on
    CUDA).
    """

    name: str
    device: torch.device
    last_info: dict[str, object]

    def segment(self, dwi: np.ndarray, adc: np.ndarray, affine: np.ndarray) -> np.ndarray: ...

    def segment_images(
        self, images: Mapping[str, np.ndarray], affine: np.ndarray, spacing: Sequence[float] | None = None
    ) -> np.ndarray: ...


def mri_pair(images: Mapping[str, np.ndarray], segmenter: str) -> tuple[np.ndarray, np.ndarray]:
    """The DWI and ADC among a case's images, for segmenters that read those two."""
    missing = [column for column in ("dwi", "adc") if column not in images]
    if missing:
        raise ValueError(f"segmenter {segmenter} reads dwi and adc; the case has no {', '.join(missing)} (it has {', '.join(images) or 'no images'})")
    return images["dwi"], images["adc"]


def check_segment_inputs(dwi: np.ndarray, adc: np.ndarray, affine: np.ndarray) -> None:
    """Refuse what ``Segmenter.segment`` cannot take: DWI and ADC not 3-D of one shape, or an
    affine that is not 4x4."""
    if dwi.ndim != 3 or dwi.shape != adc.shape:
        raise ValueError(f"dwi {dwi.shape} and adc {adc.shape} must be 3-D arrays of one shape")
    if np.shape(affine) != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {np.shape(affine)}")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` force one."""
    if isinstance(spec, torch.device):
        return spec
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} was requested but CUDA is not available on this machine; use 'auto' or 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {spec!r}: expected auto, cpu or cuda[:N]")
    return device


def prints_to_stderr():
    """A library's progress prints (nnU-Net's) go to stderr, so that stdout stays the command's
    JSON summary."""
    return contextlib.redirect_stdout(sys.stderr)
