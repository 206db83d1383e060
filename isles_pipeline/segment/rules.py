"""The weight-free DWI/ADC rule segmenter, written as torch tensor ops (CPU or GPU).

Recipe (see ``reference/segmentation.md``): a lesion voxel lies inside the brain, away from its
edge, is bright on DWI (> ``dwi_factor`` x the brain median) and has a restricted ADC
(``adc_low`` < ADC < ``adc_high``, in 10^-3 mm^2/s); clusters below ``min_lesion_ml`` are dropped.
The data are not skull-stripped, so the segmenter makes its own brain mask. Every voxel-wise step
runs on the chosen device; connected components run on the CPU with ``cc3d``.

All lengths are in mm and volumes in ml, converted to voxels through the affine, so one set of
parameters fits every grid, orientation and oblique affine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import cc3d
import numpy as np
import torch

from isles_pipeline.nifti import voxel_sizes_mm, voxel_volume_ml
from isles_pipeline.segment.base import check_segment_inputs, mri_pair, resolve_device
from isles_pipeline.segment.options import RuleParams

# Typical normal-brain ADC, in each unit a file may use (value = the brain median in that unit).
ADC_UNIT_BRAIN_MEDIAN = {"1e-3 mm^2/s": 1.0, "1e-6 mm^2/s": 1000.0}
# A brain's median ADC (CSF included) in 10^-3 mm^2/s, after unit detection, lies well inside this
# window (normal parenchyma ~0.7-0.9, CSF ~3); outside it the map is in a unit the rule cannot
# read (ADC x 10 or x 100, say), and thresholds in 10^-3 mm^2/s would be silently wrong.
PHYSIOLOGICAL_BRAIN_ADC = (0.4, 2.0)
OTSU_BINS = 256


def erosion_radii(affine: np.ndarray, margin_mm: float) -> tuple[int, int, int]:
    """Half-widths in voxels of a box that reaches ``margin_mm`` along each axis (rounded half up)."""
    return tuple(int(math.floor(margin_mm / size + 0.5)) for size in voxel_sizes_mm(affine))


def min_lesion_voxels(affine: np.ndarray, min_ml: float) -> int:
    """Smallest voxel count whose volume reaches ``min_ml``."""
    # The 1e-9 guards against 0.1 / 0.001 landing a hair above an integer.
    return max(1, math.ceil(min_ml / voxel_volume_ml(affine) - 1e-9))


# ---------------------------------------------------------------- tensor helpers (any device)


def _shifted(mask: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
    """``out[i] = mask[i + offset]`` along ``axis``; positions outside the volume read False."""
    size = mask.shape[axis]
    out = torch.zeros_like(mask)
    if abs(offset) >= size:
        return out
    if offset >= 0:
        out.narrow(axis, 0, size - offset).copy_(mask.narrow(axis, offset, size - offset))
    else:
        out.narrow(axis, -offset, size + offset).copy_(mask.narrow(axis, 0, size + offset))
    return out


def _erode_axis(mask: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
    """1-D binary erosion with a window of ``2 * radius + 1`` voxels, outside the volume = False.

    Doubling trick: AND-ing a window-``w`` result with itself shifted by ``w`` gives window ``2w``,
    so the cost is O(log radius) boolean passes instead of a max-pool with a huge kernel.
    """
    if radius == 0:
        return mask
    width = 2 * radius + 1
    acc, span = mask, 1  # acc[i] = all(mask[i : i + span])
    while 2 * span <= width:
        acc = acc & _shifted(acc, axis, span)
        span *= 2
    if span < width:
        acc = acc & _shifted(acc, axis, width - span)
    return _shifted(acc, axis, -radius)  # centre the window on i


def erode_box(mask: torch.Tensor, radii: tuple[int, ...]) -> torch.Tensor:
    """Separable binary erosion by a box of half-widths ``radii`` (voxels, one per axis)."""
    for axis, radius in enumerate(radii):
        mask = _erode_axis(mask, axis, radius)
    return mask


def otsu_threshold(values: torch.Tensor, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of a float tensor, from a ``bins``-bin histogram over its full range."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    # The histogram has `bins` entries, so float64 here costs nothing and keeps sums exact.
    hist = torch.histc(values, bins=bins, min=low, max=high).double()
    centres = low + (torch.arange(bins, dtype=torch.float64, device=hist.device) + 0.5) * (high - low) / bins
    weight_below = torch.cumsum(hist, 0)
    mass_below = torch.cumsum(hist * centres, 0)
    total, total_mass = weight_below[-1], mass_below[-1]
    weight_above = total - weight_below
    mean_below = mass_below / weight_below.clamp(min=1)
    mean_above = (total_mass - mass_below) / weight_above.clamp(min=1)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    cut = int(torch.argmax(between[:-1]))
    return low + (cut + 1) * (high - low) / bins


def _median(values: torch.Tensor, mask: torch.Tensor, what: str) -> float:
    """Median of ``values`` over ``mask`` (the lower one for even counts: order-independent)."""
    selected = values[mask]
    if selected.numel() == 0:
        raise ValueError(f"cannot compute the {what}: the brain mask is empty (is the DWI blank?)")
    return float(selected.median())


# ---------------------------------------------------------------- CPU helpers (cc3d)


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask``, with its enclosed holes filled."""
    if not mask.any():
        return mask
    largest = cc3d.largest_k(mask, k=1, connectivity=26) > 0
    # A hole is a background component (6-connected, the dual of 26) not touching the volume edge.
    labels = cc3d.connected_components(~largest, connectivity=6)
    touches_edge = np.zeros(int(labels.max()) + 1, dtype=bool)
    for face in _faces(labels):
        touches_edge[face] = True
    touches_edge[0] = False  # label 0 is the component itself
    return ~touches_edge[labels]


def _faces(volume: np.ndarray) -> list[np.ndarray]:
    """The six boundary faces of a 3-D array."""
    return [volume[0], volume[-1], volume[:, 0], volume[:, -1], volume[:, :, 0], volume[:, :, -1]]


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop 26-connected components with fewer than ``min_voxels`` voxels."""
    if min_voxels <= 1 or not mask.any():
        return mask
    return cc3d.dust(mask, threshold=min_voxels, connectivity=26) > 0


# ---------------------------------------------------------------- the segmenter


class _StageClock:
    """Seconds per named stage; synchronises CUDA so GPU work is charged to the right stage."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 4)
        self._last = now


class RuleSegmenter:
    """Weight-free DWI/ADC rule segmenter (Segmenter protocol, ``name = "rules"``).

    ``device`` is the torch device actually used. After each ``segment`` call, ``last_info`` holds
    the run's diagnostics: the detected ADC unit and its scale, brain medians, voxel counts and
    seconds per stage.
    """

    name = "rules"

    def __init__(self, device: str | torch.device = "auto", **params: float) -> None:
        self.device: torch.device = resolve_device(device)
        self.params = RuleParams(**params)
        self.last_info: dict[str, object] = {}

    def segment_images(self, images: Mapping[str, np.ndarray], affine: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """:meth:`segment` on the case's DWI and ADC (other images are not read; the grid is the affine's)."""
        return self.segment(*mri_pair(images, self.name), affine)

    def segment(self, dwi: np.ndarray, adc: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Boolean lesion mask of the input's shape, from float DWI and ADC on the grid ``affine``."""
        check_segment_inputs(dwi, adc, affine)
        clock = _StageClock(self.device)
        dwi_t, adc_t = self._upload(dwi), self._upload(adc)
        clock.lap("upload")
        radii = erosion_radii(affine, self.params.edge_erosion_mm)
        brain = self._brain_mask(dwi_t, radii)
        clock.lap("brain_mask")
        unit, scale, tissue, dwi_median, adc_median = self._brain_statistics(dwi_t, adc_t, brain)
        clock.lap("statistics")
        adc_high = self.params.adc_high if self.params.adc_relative is None else self.params.adc_relative * adc_median
        candidates = self._candidates(dwi_t, adc_t, tissue, dwi_median, scale, adc_high).cpu().numpy()
        clock.lap("thresholds")
        min_voxels = min_lesion_voxels(affine, self.params.min_lesion_ml)
        lesion = remove_small_components(candidates, min_voxels)
        clock.lap("components")
        self.last_info = {
            "device": str(self.device),
            "params": asdict(self.params),
            "adc_unit": unit,
            "adc_scale": scale,  # input ADC = scale x ADC in 10^-3 mm^2/s
            "brain_median_adc": adc_median,
            "brain_median_dwi": dwi_median,
            "adc_high": adc_high,  # the upper ADC threshold used, in 10^-3 mm^2/s
            "erosion_radii_voxels": radii,
            "min_lesion_voxels": min_voxels,
            "brain_voxels": int(brain.sum()),
            "tissue_voxels": int(tissue.sum()),
            "candidate_voxels": int(candidates.sum()),
            "lesion_voxels": int(lesion.sum()),
            "seconds": clock.seconds,
        }
        return lesion

    def _upload(self, volume: np.ndarray) -> torch.Tensor:
        """Float32, C-contiguous (flipped views have negative strides) and finite, on the device.

        On the CPU the tensor may share the caller's memory, so non-finite values are replaced
        out of place, and only when there are any.
        """
        tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(self.device)
        if not bool(torch.isfinite(tensor).all()):
            tensor = torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0)
        return tensor

    def _brain_mask(self, dwi: torch.Tensor, erosion: tuple[int, int, int]) -> torch.Tensor:
        """DWI above Otsu's background threshold, largest component, holes filled, edge eroded by
        ``erosion`` voxels along each axis."""
        foreground = (dwi > otsu_threshold(dwi)).cpu().numpy()
        head = torch.from_numpy(_largest_component_filled(foreground)).to(self.device)
        return erode_box(head, erosion)

    def _brain_statistics(
        self, dwi: torch.Tensor, adc: torch.Tensor, brain: torch.Tensor
    ) -> tuple[str, float, torch.Tensor, float, float]:
        """ADC unit and brain median ADC (in 10^-3 mm^2/s), CSF-free tissue mask, its median DWI."""
        adc_median = _median(adc, brain, "brain median ADC")  # CSF included: units are unknown yet
        unit, scale = detect_adc_unit(adc_median)
        check_physiological(adc_median / scale, unit)
        tissue = brain & (adc <= self.params.csf_adc * scale)
        dwi_median = _median(dwi, tissue, "brain median DWI")
        return unit, scale, tissue, dwi_median, adc_median / scale

    def _candidates(
        self, dwi: torch.Tensor, adc: torch.Tensor, tissue: torch.Tensor, dwi_median: float, scale: float, adc_high: float
    ) -> torch.Tensor:
        """Tissue voxels that are DWI-bright and have a restricted ADC (thresholds scaled, not data)."""
        p = self.params
        return (
            tissue
            & (dwi > p.dwi_factor * dwi_median)
            & (adc > p.adc_low * scale)
            & (adc < adc_high * scale)
        )


def check_physiological(brain_median: float, unit: str) -> None:
    """Refuse an ADC map whose brain median, read in ``unit``, is not a brain's."""
    low, high = PHYSIOLOGICAL_BRAIN_ADC
    if not low <= brain_median <= high:
        raise ValueError(
            f"ADC map unreadable: its brain median is {brain_median:.4g} x 10^-3 mm^2/s when read as {unit} "
            f"(a brain's is {low}-{high}); the map is in a unit the rule segmenter does not know "
            "(only 10^-3 and 10^-6 mm^2/s are), or it is not an ADC map"
        )


def detect_adc_unit(brain_median_adc: float) -> tuple[str, float]:
    """The ADC unit whose typical brain median is nearest (log scale) to the one observed.

    Returns the unit's name and its scale relative to 10^-3 mm^2/s (1.0 or 1000.0).
    """
    if not brain_median_adc > 0:
        raise ValueError(f"brain median ADC is {brain_median_adc}: the ADC map looks empty or invalid")
    unit = min(ADC_UNIT_BRAIN_MEDIAN, key=lambda u: abs(math.log10(brain_median_adc / ADC_UNIT_BRAIN_MEDIAN[u])))
    return unit, ADC_UNIT_BRAIN_MEDIAN[unit]
