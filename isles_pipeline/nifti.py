"""Decoding NIfTI bytes and checking that volumes share one grid (plain nibabel/numpy)."""

from __future__ import annotations

import gzip
import io
import zlib
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
        return voxel_sizes_mm(self.affine)

    @property
    def voxel_ml(self) -> float:
        return voxel_volume_ml(self.affine)


def voxel_sizes_mm(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge length along each array axis: column norms of ``affine[:3, :3]`` (oblique-safe)."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))  # type: ignore[return-value]


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


def read_header(data: bytes, what: str = "image") -> nib.Nifti1Header:
    """Parse only the header of NIfTI bytes (the first few hundred bytes, decompressed lazily)."""
    try:
        raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:4096], 2048) if data[:2] == GZIP_MAGIC else data[:2048]
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=True)
    except Exception as exc:
        raise NiftiError(f"{what}: not a NIfTI image ({type(exc).__name__}: {exc})") from exc
    return header


def check_complete(data: bytes, header: nib.Nifti1Header, what: str = "image") -> None:
    """Require the bytes to hold every voxel the header promises (a truncated file fails here),
    streaming the decompression so that the volume is never held in memory."""
    expected = int(header["vox_offset"]) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if data[:2] == GZIP_MAGIC:
        inflater, size = zlib.decompressobj(16 + zlib.MAX_WBITS), 0
        try:
            for start in range(0, len(data), 1 << 20):
                size += len(inflater.decompress(data[start : start + (1 << 20)]))
            size += len(inflater.flush())
        except zlib.error as exc:
            raise NiftiError(f"{what}: corrupt gzip stream ({exc})") from exc
        if not inflater.eof:
            raise NiftiError(f"{what}: truncated gzip stream")
    else:
        size = len(data)
    if size < expected:
        raise NiftiError(f"{what}: truncated: {size} bytes of image data, the header needs {expected}")


def grid_of_header(header: nib.Nifti1Header) -> Grid:
    return Grid(shape=tuple(int(s) for s in header.get_data_shape()), affine=np.asarray(header.get_best_affine(), dtype=np.float64))


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


def as_mask(image: nib.Nifti1Image, slab: int = 8) -> np.ndarray:
    """A binary mask with the header scaling applied (a uint16 {0, 65535} mask with slope 1/65535
    is {0, 1}), then thresholded at 0.5; scaled a few slices at a time, so that no float copy of
    the whole volume is ever made."""
    mask = np.empty(image.shape, dtype=bool)
    for z in range(0, image.shape[-1] if image.ndim else 1, slab):
        mask[..., z : z + slab] = np.asarray(image.dataobj[..., z : z + slab], dtype=np.float32) > 0.5
    return mask


def check_same_grid(images: dict[str, nib.Nifti1Image], atol: float = AFFINE_ATOL_MM) -> Grid:
    """Require 3-D images of equal shape and affines equal within ``atol``; return the grid."""
    return check_same_grids({name: grid_of(image) for name, image in images.items()}, atol)


def check_same_grids(grids: dict[str, Grid], atol: float = AFFINE_ATOL_MM) -> Grid:
    """The same check on grids already read (from headers alone, for instance)."""
    for name, grid in grids.items():
        if len(grid.shape) != 3:
            raise NiftiError(f"{name} is {len(grid.shape)}-D (shape {grid.shape}), expected 3-D")
    (first, ref), *rest = grids.items()
    for name, grid in rest:
        if grid.shape != ref.shape:
            raise NiftiError(f"{name} shape {grid.shape} differs from {first} shape {ref.shape}")
        worst = float(np.abs(grid.affine - ref.affine).max())
        if worst > atol:
            raise NiftiError(f"{name} affine differs from {first} affine by {worst:.4g} (tolerance {atol})")
    return ref
