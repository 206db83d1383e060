"""Decoding NIfTI bytes and checking that volumes share one grid (plain nibabel/numpy)."""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass

import nibabel as nib
import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
# Affines of co-registered volumes agree to float32 rounding; 1e-3 mm tolerates that, not a shift.
AFFINE_ATOL_MM = 1e-3


class NiftiError(ValueError):
    """Bytes that are not a readable NIfTI image, or images that do not fit together."""


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def voxel_size_mm(self) -> tuple[float, ...]:
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def voxel_ml(self) -> float:
        return voxel_volume_ml(self.affine)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in ml (= cm^3), from the affine's determinant (oblique-safe)."""
    return abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


def decode(data: bytes, what: str = "image") -> nib.Nifti1Image:
    """Parse NIfTI bytes, gzip-compressed or not, without loading the voxel data eagerly."""
    try:
        raw = gzip.decompress(data) if data[:2] == GZIP_MAGIC else data
        return nib.Nifti1Image.from_bytes(raw)
    except Exception as exc:  # nibabel raises several types for garbage
        raise NiftiError(f"{what}: not a NIfTI image ({type(exc).__name__}: {exc})") from exc


def encode(image: nib.Nifti1Image) -> bytes:
    """Serialise an image to gzip-compressed ``.nii.gz`` bytes (deterministic: mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(image.to_bytes())
    return buf.getvalue()


def grid_of(image: nib.Nifti1Image) -> Grid:
    return Grid(shape=tuple(int(s) for s in image.shape), affine=np.asarray(image.affine, dtype=np.float64))


def as_float32(image: nib.Nifti1Image) -> np.ndarray:
    """Voxel values with the header scaling applied, as float32 (never the float64 of get_fdata)."""
    return np.asarray(image.dataobj, dtype=np.float32)


def as_mask(image: nib.Nifti1Image) -> np.ndarray:
    """A binary mask with the header scaling applied (a uint16 {0, 65535} mask with slope 1/65535
    is {0, 1}), then thresholded at 0.5."""
    return np.asarray(image.dataobj, dtype=np.float32) > 0.5


def check_same_grid(images: dict[str, nib.Nifti1Image], atol: float = AFFINE_ATOL_MM) -> Grid:
    """Require 3-D images of equal shape and affines equal within ``atol``; return the grid."""
    grids = {}
    for name, image in images.items():
        if len(image.shape) != 3:
            raise NiftiError(f"{name} is {len(image.shape)}-D (shape {tuple(image.shape)}), expected 3-D")
        grids[name] = grid_of(image)
    (first, ref), *rest = grids.items()
    for name, grid in rest:
        if grid.shape != ref.shape:
            raise NiftiError(f"{name} shape {grid.shape} differs from {first} shape {ref.shape}")
        worst = float(np.abs(grid.affine - ref.affine).max())
        if worst > atol:
            raise NiftiError(f"{name} affine differs from {first} affine by {worst:.4g} (tolerance {atol})")
    return ref
