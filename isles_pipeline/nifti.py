"""Decoding NIfTI bytes within a budget, validating them, and checking that volumes share a grid.

Every byte string that claims to be a NIfTI image (NIfTI-1 or NIfTI-2, gzip-compressed or not)
goes through :func:`read_header` and the checks of :func:`check_header` before a voxel is
decoded: every axis at least 1 voxel long (a trailing singleton axis is squeezed), at most
``ISLES_MAX_VOXELS`` voxels, an affine that is finite and invertible. The data is then inflated
as a stream that stops at exactly the size the header declares: a truncated stream, a stream
that inflates past that size (a decompression bomb) and bytes after the end are refused. So
decoding never allocates more than the header promised, and the header was checked first.

Masks follow one rule (:func:`as_mask`, :func:`mask_from_bytes`): after the NIfTI scaling, the
voxels take the value 0 and at most one positive value (a uint16 {0, 65535} mask with slope
1/65535 is {0, 1}); the lesion is where the value is positive. Anything else is refused with the
values found, never read as an empty mask.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import nibabel as nib
import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
# Affines of co-registered volumes agree to float32 rounding; 1e-3 mm tolerates that, not a shift.
AFFINE_ATOL_MM = 1e-3
# 512^3: above every real grid (ISLES'24 is about 512 x 512 x 80), far below what exhausts memory.
DEFAULT_MAX_VOXELS = 512**3
MAX_VOXELS_ENV = "ISLES_MAX_VOXELS"
HEADER_BYTES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
NIFTI_MAGIC = (b"n+1", b"n+2")  # single-file NIfTI-1 and NIfTI-2 (a .hdr/.img pair cannot be one cell)
INFLATE_CHUNK = 1 << 20
MAX_VALUES_LISTED = 5

Header = nib.Nifti1Header | nib.Nifti2Header


class NiftiError(ValueError):
    """Bytes that are not a usable NIfTI image, or images that do not fit together."""


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


def header_spacing(image: nib.Nifti1Image) -> tuple[float, float, float] | None:
    """The voxel sizes the header states (``pixdim``), what SimpleITK and nibabel readers report as
    the spacing (the affine's column norms agree only to float32 precision); None where they are
    not all positive and finite."""
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    return tuple(float(z) for z in zooms) if zooms.size == 3 and np.all(np.isfinite(zooms) & (zooms > 0)) else None  # type: ignore[return-value]


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in ml (= cm^3), from the affine's determinant (oblique-safe)."""
    return abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


def max_voxels() -> int:
    """The voxel budget per image: ``ISLES_MAX_VOXELS``, else 512^3."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{MAX_VOXELS_ENV}={text!r}: expected a positive integer") from None
    if value < 1:
        raise ValueError(f"{MAX_VOXELS_ENV}={text!r}: expected a positive integer")
    return value


# ------------------------------------------------------------------------------------ headers


def _head(data: bytes, what: str) -> bytes:
    """The first bytes of the image (enough for either header), inflated if gzip-compressed."""
    if data[:2] != GZIP_MAGIC:
        return bytes(data[:544])
    inflater, out = zlib.decompressobj(16 + zlib.MAX_WBITS), b""
    try:
        for start in range(0, len(data), 4096):
            out += inflater.decompress(data[start : start + 4096], 544 - len(out))
            if len(out) >= 544 or inflater.eof:
                break
    except zlib.error as exc:
        raise NiftiError(f"{what}: not a NIfTI image (corrupt gzip stream: {exc})") from exc
    return out


def read_header(data: bytes, what: str = "image") -> Header:
    """Parse and check the header of NIfTI-1 or NIfTI-2 bytes (see :func:`check_header`)."""
    head = _head(data, what)
    size = int.from_bytes(head[:4], "little") if len(head) >= 4 else 0
    header_class = HEADER_BYTES.get(size) or HEADER_BYTES.get(int.from_bytes(head[:4], "big"))
    if header_class is None:
        raise NiftiError(f"{what}: not a NIfTI image (no NIfTI-1 or NIfTI-2 header)")
    try:
        # check=False: nibabel would "fix" a zero voxel size to 1 mm; check_header refuses it instead
        # Extensions (between the header and the voxels) are not needed: parse the header alone.
        header = header_class.from_fileobj(io.BytesIO(head[: header_class.sizeof_hdr] + b"\0" * 4), check=False)
        header.get_data_dtype()  # an unknown datatype code raises here
    except Exception as exc:  # nibabel raises several types for a bad header
        raise NiftiError(f"{what}: not a NIfTI image ({type(exc).__name__}: {exc})") from exc
    if bytes(header["magic"])[:3] not in NIFTI_MAGIC:
        raise NiftiError(f"{what}: not a NIfTI image (magic {bytes(header['magic'])!r})")
    check_header(header, what)
    return header


def check_header(header: Header, what: str = "image") -> None:
    """Refuse what no later step can use: an axis of length 0, more voxels than the budget, a data
    offset inside the header, an affine that is not finite or not invertible."""
    shape = tuple(int(n) for n in header.get_data_shape())
    if not shape or min(shape) < 1:
        raise NiftiError(f"{what}: shape {shape} has an axis of length 0")
    voxels, budget = int(np.prod(shape, dtype=np.int64)), max_voxels()
    if voxels > budget:
        raise NiftiError(f"{what}: shape {shape} has {voxels:,} voxels, more than the {budget:,} allowed ({MAX_VOXELS_ENV})")
    pixdim = np.asarray(header["pixdim"][1 : 1 + min(3, len(shape))], dtype=np.float64)
    if not np.isfinite(pixdim).all() or (pixdim == 0).any():
        raise NiftiError(f"{what}: voxel size {tuple(pixdim.tolist())} mm is not finite and non-zero")
    if data_offset(header) < int(header["sizeof_hdr"]):
        raise NiftiError(f"{what}: vox_offset {int(header['vox_offset'])} lies inside the header")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.isfinite(affine).all():
        raise NiftiError(f"{what}: the affine has non-finite values {affine[:3].round(4).tolist()}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise NiftiError(f"{what}: the affine is not invertible (voxel size {tuple(round(v, 4) for v in voxel_sizes_mm(affine))} mm)")


def data_offset(header: Header) -> int:
    """Where the voxels start in a single-file image (a 0 offset means straight after the header)."""
    offset = int(header["vox_offset"])
    return offset if offset else int(header["sizeof_hdr"]) + 4


def data_bytes(header: Header) -> int:
    """Bytes of voxel data the header declares."""
    return int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize


def spatial_shape(header: Header) -> tuple[int, ...]:
    """The shape with trailing singleton axes beyond the third squeezed away."""
    shape = tuple(int(n) for n in header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


# ---------------------------------------------------------------------- inflating on a budget


def _chunks(data: bytes, what: str, expected: int) -> Iterator[bytes]:
    """The image's bytes in pieces, exactly ``expected`` of them: inflated as a stream if gzip,
    refusing a truncated stream, a stream longer than ``expected`` and bytes after the stream."""
    view = memoryview(data)
    if data[:2] != GZIP_MAGIC:
        if len(data) != expected:
            problem = "truncated" if len(data) < expected else "bytes past the declared size"
            raise NiftiError(f"{what}: {problem}: {len(data):,} bytes, the header declares {expected:,}")
        for start in range(0, expected, INFLATE_CHUNK):
            yield view[start : start + INFLATE_CHUNK]
        return
    inflater, produced, offset = zlib.decompressobj(16 + zlib.MAX_WBITS), 0, 0
    try:
        while not inflater.eof:
            pending = inflater.unconsumed_tail or view[offset : offset + INFLATE_CHUNK]
            if not inflater.unconsumed_tail:
                offset += len(pending)
            piece = inflater.decompress(pending, INFLATE_CHUNK)  # bounded output, whatever the input
            produced += len(piece)
            if produced > expected:
                raise NiftiError(f"{what}: the gzip stream inflates past the {expected:,} bytes the header declares")
            if piece:
                yield piece
            elif not pending:
                break  # input exhausted, nothing buffered: the stream ended early
    except zlib.error as exc:
        raise NiftiError(f"{what}: corrupt gzip stream ({exc})") from exc
    if not inflater.eof or produced < expected:
        raise NiftiError(f"{what}: truncated gzip stream: {produced:,} bytes, the header declares {expected:,}")
    trailing = len(inflater.unused_data) + len(data) - offset
    if trailing:
        raise NiftiError(f"{what}: {trailing:,} bytes after the end of the gzip stream")


def inflate(data: bytes, header: Header, what: str = "image") -> bytes:
    """The whole uncompressed file (header, extensions, voxels), exactly the declared size."""
    return b"".join(_chunks(data, what, data_offset(header) + data_bytes(header)))


def iter_slabs(data: bytes, header: Header, what: str = "image", slices: int = 8) -> Iterator[np.ndarray]:
    """The stored voxel values (no scaling), a few slices of the last spatial axis at a time, read
    from the stream without holding the whole volume."""
    shape = spatial_shape(header)
    dtype = header.get_data_dtype()
    slice_bytes = int(np.prod(shape[:-1], dtype=np.int64)) * dtype.itemsize
    skip, buffered = data_offset(header), bytearray()
    step = slice_bytes * slices
    for piece in _chunks(data, what, skip + data_bytes(header)):
        if skip:
            cut = min(skip, len(piece))
            piece, skip = piece[cut:], skip - cut
        buffered += piece
        while len(buffered) >= step:
            yield _slab(buffered[:step], shape, dtype)
            del buffered[:step]
    if buffered:
        yield _slab(bytes(buffered), shape, dtype)


def _slab(raw: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    values = np.frombuffer(bytes(raw), dtype=dtype)
    return values.reshape((*shape[:-1], -1), order="F")


# ------------------------------------------------------------------------------------- images


def decode(data: bytes, what: str = "image") -> nib.Nifti1Image | nib.Nifti2Image:
    """Checked header, budgeted inflation, then nibabel (voxels stay lazy in ``dataobj``)."""
    header = read_header(data, what)
    raw = inflate(data, header, what)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    try:
        image = image_class.from_bytes(raw)
    except Exception as exc:
        raise NiftiError(f"{what}: not a NIfTI image ({type(exc).__name__}: {exc})") from exc
    return nib.squeeze_image(image) if len(image.shape) > 3 else image


def grid_of_header(header: Header) -> Grid:
    return Grid(shape=spatial_shape(header), affine=np.asarray(header.get_best_affine(), dtype=np.float64))


def encode(image: nib.Nifti1Image) -> bytes:
    """Serialise an image to gzip-compressed ``.nii.gz`` bytes (deterministic: mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(image.to_bytes())
    return buf.getvalue()


def grid_of(image: nib.Nifti1Image) -> Grid:
    return Grid(shape=tuple(int(s) for s in image.shape), affine=np.asarray(image.affine, dtype=np.float64))


def as_float32(image: nib.Nifti1Image) -> np.ndarray:
    """Voxel values with the header scaling applied, as float32 (never the float64 of get_fdata).

    Non-finite voxels (NaN, inf) become 0, i.e. background: every segmenter and the statistics it
    takes see the same thing. ``case_inputs`` counts them in its metadata."""
    values = np.asarray(image.dataobj, dtype=np.float32)
    return np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def scan(data: bytes, header: Header, what: str = "image") -> int:
    """Inflate the whole stream on its budget (refusing truncation, bombs and trailing bytes)
    without holding the volume; return how many voxels are not finite (0 for integer data)."""
    floating = header.get_data_dtype().kind == "f"
    return sum(int(np.count_nonzero(~np.isfinite(slab))) if floating else 0 for slab in iter_slabs(data, header, what))


# -------------------------------------------------------------------------------------- masks


class _BinaryRule:
    """Checks a mask slab by slab: 0 and one positive value over the whole volume, nothing else."""

    def __init__(self, what: str):
        self.what, self.positive = what, None

    def lesion(self, values: np.ndarray) -> np.ndarray:
        lesion = values > 0
        if np.count_nonzero(lesion) + np.count_nonzero(values == 0) != values.size:
            self._refuse(values)  # negative or NaN voxels
        if lesion.any():
            low, high = float(values[lesion].min()), float(values[lesion].max())
            if low != high or self.positive not in (None, low):
                self._refuse(values)
            self.positive = low
        return lesion

    def _refuse(self, values: np.ndarray) -> None:
        found = np.unique(values)  # NaNs collapse into one entry
        shown = ", ".join(f"{v:g}" for v in found[:MAX_VALUES_LISTED])
        more = f" and {found.size - MAX_VALUES_LISTED} more" if found.size > MAX_VALUES_LISTED else ""
        earlier = f" (earlier slices: {self.positive:g})" if self.positive is not None and self.positive not in found else ""
        raise NiftiError(f"{self.what}: not a binary lesion mask: values {shown}{more}{earlier}; expected 0 and one positive value")


def _scaling(header: Header) -> tuple[float, float]:
    slope, inter = header.get_slope_inter()
    return (1.0 if slope is None else float(slope)), (0.0 if inter is None else float(inter))


def mask_from_bytes(data: bytes, what: str = "lesion_mask") -> np.ndarray:
    """The binary lesion mask of NIfTI bytes, decoded from the stream a few slices at a time."""
    header = read_header(data, what)
    slope, inter = _scaling(header)
    rule, shape = _BinaryRule(what), spatial_shape(header)
    mask, z = np.empty(shape, dtype=bool), 0
    for slab in iter_slabs(data, header, what):
        mask[..., z : z + slab.shape[-1]] = rule.lesion(slab * slope + inter)
        z += slab.shape[-1]
    return mask


def as_mask(image: nib.Nifti1Image, what: str = "mask", slab: int = 8) -> np.ndarray:
    """The binary lesion mask of a decoded image (same rule as :func:`mask_from_bytes`), scaled a
    few slices at a time so that no float copy of the whole volume is made."""
    rule, mask = _BinaryRule(what), np.empty(image.shape, dtype=bool)
    for z in range(0, image.shape[-1] if image.ndim else 1, slab):
        mask[..., z : z + slab] = rule.lesion(np.asarray(image.dataobj[..., z : z + slab], dtype=np.float64))
    return mask


# --------------------------------------------------------------------------------------- grids


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
