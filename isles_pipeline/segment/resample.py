"""Resampling and normalising volumes on the voxel axes, as torch ops that run on any device.

Resampling along the voxel axes needs only the voxel sizes: an oblique or flipped orientation is
a rigid map of the same grid and does not change which voxels are neighbours.

The grid to a target spacing is MONAI 0.9's ``Spacing`` (``pixdim``, ``diagonal=False``, bilinear,
``padding_mode="border"``), which DeepISLES pins for NVAUTO: per axis of n voxels of size s, the
target grid of size t has ``n' = round((n - 1) s / t) + 1`` voxels (``compute_shape_offset``:
the span between the first and the last voxel centre, rounded half to even as numpy does), and its
voxel j samples the source at index ``j t / s``: the first voxel centres coincide, and beyond the
last source voxel the edge value is repeated. The voxel sizes are those ``zoom_affine`` uses: the
diagonal of the Cholesky factor of ``R^T R`` (R = the affine's 3x3 part; the column norms for
any grid without shear). Going back (``Invertd``) samples the target grid at ``i s / t``.

That is MONAI's grid for grids without shear only: a sheared grid (voxel axes not at right angles,
beyond float rounding) is refused, not approximated. ``isles_pipeline_tests/test_nvauto_grid.py``
compares both directions with MONAI's ``Spacing`` on the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# |cos| of the angle between two voxel axes above which a grid counts as sheared (float32 affines
# written by scanners' converters are orthogonal to about 1e-7).
MAX_AXIS_COSINE = 1e-4


def monai09_voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes as MONAI 0.9's ``zoom_affine`` takes them (Cholesky diagonal of R^T R); a sheared
    grid is refused (ValueError)."""
    rzs = np.asarray(affine, dtype=float)[:3, :3]
    lengths = np.linalg.norm(rzs, axis=0)
    cosines = np.abs(rzs.T @ rzs / np.outer(lengths, lengths) - np.eye(3)).max()
    if cosines > MAX_AXIS_COSINE:
        raise ValueError(f"the image grid is sheared (voxel axes at cos {cosines:.2g} from right angles): the network "
                         "segmenter resamples grids whose voxel axes are at right angles only")
    return tuple(float(v) for v in np.diag(np.linalg.cholesky(rzs.T @ rzs).T))  # type: ignore[return-value]


def spacing_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, int, int]:
    """MONAI 0.9 ``Spacing``'s output shape: ``round((n - 1) s / t) + 1`` per axis."""
    return tuple(  # type: ignore[return-value]
        int(np.round((n - 1) * float(s) / float(t) + 1.0)) for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )


def resample_axes(volume: torch.Tensor, shape: Sequence[int], steps: Sequence[float]) -> torch.Tensor:
    """Linear resampling of a ``(N, C, X, Y, Z)`` tensor to spatial ``shape``, output voxel j of
    each axis sampling source index ``j * step`` (edge values beyond the last voxel).

    Trilinear interpolation is separable, so this is one 1-D interpolation per axis; it equals
    ``grid_sample(align_corners=True, padding_mode="border")`` at those coordinates (MONAI's
    ``Resample``) up to float rounding, without a full-volume sampling grid in memory.
    """
    out = volume
    for axis, (size, step) in enumerate(zip(shape, steps, strict=True)):
        dim = axis + 2
        source = out.shape[dim]
        if size == source and float(step) == 1.0:
            continue
        position = torch.arange(size, device=out.device, dtype=torch.float64) * float(step)
        position = position.clamp(0, source - 1)
        lower = position.floor().long()
        upper = (lower + 1).clamp(max=source - 1)
        weight_shape = [1] * out.dim()
        weight_shape[dim] = size
        weight = (position - lower).to(out.dtype).reshape(weight_shape)
        out = out.index_select(dim, lower) * (1 - weight) + out.index_select(dim, upper) * weight
    return out


def to_target_spacing(volume: torch.Tensor, affine: np.ndarray, target_spacing: Sequence[float]) -> torch.Tensor:
    """``volume`` (on the grid ``affine``) on MONAI 0.9 Spacing's grid at ``target_spacing``."""
    spacing = monai09_voxel_sizes(affine)
    shape = spacing_shape(volume.shape[2:], spacing, target_spacing)
    return resample_axes(volume, shape, [t / s for s, t in zip(spacing, target_spacing, strict=True)])


def from_target_spacing(
    volume: torch.Tensor, affine: np.ndarray, target_spacing: Sequence[float], shape: Sequence[int]
) -> torch.Tensor:
    """The inverse (``Invertd``): a volume on the target grid back onto the input grid ``shape``."""
    spacing = monai09_voxel_sizes(affine)
    return resample_axes(volume, shape, [s / t for s, t in zip(spacing, target_spacing, strict=True)])


def resize(volume: torch.Tensor, shape: Sequence[int], mode: str = "trilinear") -> torch.Tensor:
    """Resize a ``(N, C, X, Y, Z)`` tensor to spatial ``shape`` (no-op when already that shape).

    ``align_corners=False`` maps voxel centres so that the field of view is preserved; going to
    a grid and back therefore lands on the original voxel centres.
    """
    if tuple(volume.shape[2:]) == tuple(shape):
        return volume
    if mode == "nearest":
        return F.interpolate(volume, size=tuple(shape), mode="nearest-exact")
    return F.interpolate(volume, size=tuple(shape), mode=mode, align_corners=False)
