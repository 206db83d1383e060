"""Resampling and normalising volumes on the voxel axes, as torch ops that run on any device.

Resampling along the voxel axes needs only the voxel sizes (the affine's column norms): an
oblique or flipped orientation is a rigid map of the same grid and does not change which voxels
are neighbours, so the resampled grid covers the same field of view in the same orientation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, int, int]:
    """The shape that covers the same field of view at ``target_spacing`` (at least 1 voxel)."""
    return tuple(  # type: ignore[return-value]
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )


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


def zscore_nonzero(image: torch.Tensor) -> torch.Tensor:
    """Z-score each channel of a ``(N, C, ...)`` tensor over its non-zero voxels; zeros stay 0.

    This is MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)``, written on tensors
    so that it runs where the volume already is (a GPU) without a round trip through numpy.
    """
    out = torch.zeros_like(image)
    for n in range(image.shape[0]):
        for c in range(image.shape[1]):
            channel = image[n, c]
            inside = channel != 0
            if not bool(inside.any()):
                continue
            values = channel[inside]
            mean = values.mean()
            std = values.std(unbiased=False)
            scale = std if float(std) > 0 else torch.ones_like(std)
            out[n, c][inside] = (values - mean) / scale
    return out


def pad_to_at_least(volume: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial dims of a ``(N, C, X, Y, Z)`` tensor at the end up to ``shape``."""
    pads: list[int] = []
    for size, want in reversed(list(zip(volume.shape[2:], shape, strict=True))):
        pads += [0, max(0, want - size)]
    return F.pad(volume, pads) if any(pads) else volume
