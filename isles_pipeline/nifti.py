"""The data contract for a case's images, and the one reader of NIfTI bytes, which reads through it.

What an image must be is written here once, as :data:`RULES` (docs/reliability.md has the same
table with each refusal's message). :func:`admit_header` checks the header and the bytes before
the voxels and returns a :class:`Verdict`: where the voxels start, their stored type with its byte
order, the scaling, the spatial shape and the affine. Everything that reads voxels afterwards
(:func:`iter_slabs` on the fetch path, :func:`decode` for every later step) takes them from the
verdict; nothing derives them from the header again, so the reading cannot drift from what was
checked. The rules are allow-lists: whatever they do not name is refused.

The data is inflated as a stream that stops at exactly the size the verdict declares (a truncated
stream, one that inflates past that size, a decompression bomb, and bytes after the end are
refused), so decoding never allocates more than a checked header promised. The voxel rules (at
least one finite voxel; masks binary after scaling) are checked on that stream, a few slices at a
time, before anything is written (:func:`admit_images`, what ``isles-pipeline fetch`` runs).

Every refusal is a :class:`NiftiError` of one line, ``<column>: <field> <value found> ...``, whose
``rule`` names the rule of :data:`RULES` it breaks.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.volumeutils import apply_read_scaling

GZIP_MAGIC = b"\x1f\x8b"
# Affines of co-registered volumes agree to float32 rounding; 1e-3 mm tolerates that, not a shift.
AFFINE_ATOL_MM = 1e-3
MAX_VOXELS_ENV = "ISLES_MAX_VOXELS"
INFLATE_CHUNK = 1 << 20
MAX_VALUES_LISTED = 5

Header = nib.Nifti1Header | nib.Nifti2Header

# ------------------------------------------------------------------------------ the contract

RULES: dict[str, str] = {
    "format": "a single-file NIfTI-1 (sizeof_hdr 348, magic n+1) or NIfTI-2 (sizeof_hdr 540, magic n+2 with its "
              "end-of-line check bytes), either byte order, gzip-compressed or not",
    "datatype": "a real integer or floating voxel type (uint8, int8, uint16, int16, uint32, int32, uint64, int64, "
                "float32, float64), bitpix agreeing with it",
    "shape": "3-D, or 4-D with one volume; every axis at least 1 voxel long",
    "budget": f"at most {MAX_VOXELS_ENV} voxels (default 512^3)",
    "offset": "vox_offset a whole number of bytes at or after the header and its 4 extension-flag bytes, at most "
              "16 MiB after them; extensions (when flagged) each a multiple of 16 bytes, ending at vox_offset",
    "size": "the uncompressed file exactly vox_offset + the voxel data the header declares (no truncation, "
            "nothing after it, a gzip stream that inflates to exactly that)",
    "scaling": "scl_slope finite (0 means no scaling, as NIfTI says) and scl_inter finite",
    "units": "spatial unit mm, or unknown (read as mm: voxel sizes and lesion volumes are computed in mm)",
    "affine": "voxel sizes (pixdim 1-3) finite and non-zero, known qform/sform codes, an affine that can be "
              "computed, is finite and invertible",
    "finite": "at least one finite voxel as read (after scaling, as float32)",
    "mask": "a lesion mask takes the value 0 and one positive value after scaling",
    "grid": "a case's images share one 3-D grid (equal shapes, affines within 1e-3 mm)",
}

# NIfTI version by sizeof_hdr: (version, header class, single-file magic, where the magic sits)
VERSIONS = {
    348: (1, nib.Nifti1Header, b"n+1\0", 344),
    540: (2, nib.Nifti2Header, b"n+2\0\r\n\x1a\n", 4),
}
BYTE_ORDERS = {"<": "little", ">": "big"}
EXTENSION_FLAG_BYTES = 4
# Room for extensions between the header and the voxels (DICOM or JSON sidecars are kilobytes):
# the bytes before the voxels are read whole to check them, so they are bounded.
MAX_EXTENSION_BYTES = 16 * 2**20
# Real voxel types by NIfTI datatype code. Refused: complex (32, 1792, 2048), RGB (128),
# RGBA (2304), binary (1) and float128 (1536, not the same type on every machine).
VOXEL_TYPES = {code: np.dtype(name) for code, name in (
    (2, "uint8"), (256, "int8"), (512, "uint16"), (4, "int16"), (768, "uint32"), (8, "int32"),
    (1280, "uint64"), (1024, "int64"), (16, "float32"), (64, "float64"),
)}
SPATIAL_UNITS = {0: "unknown", 2: "mm"}  # xyzt_units & 7
XFORM_CODES = frozenset(nib.nifti1.xform_codes.value_set())  # unknown, scanner, aligned, talairach, mni, template


class NiftiError(ValueError):
    """Bytes that are not a usable NIfTI image, or images that do not fit together; ``rule`` is
    the key of :data:`RULES` they break."""

    def __init__(self, message: str, rule: str = ""):
        super().__init__(message)
        self.rule = rule


def _refuse(rule: str, what: str, problem: str) -> NiftiError:
    return NiftiError(f"{what}: {problem}", rule)


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


@dataclass(frozen=True, eq=False)
class Verdict:
    """What :func:`admit_header` found an image to be: everything a reader of its voxels needs."""

    header: Header  # as stored (parsed without nibabel's fixes)
    version: int  # NIfTI-1 or NIfTI-2
    shape: tuple[int, int, int]  # spatial shape (a 4-D image of one volume is 3-D)
    dtype: np.dtype  # the stored voxel type, in the header's byte order
    offset: int  # where the voxels start in the uncompressed file
    slope: float  # value = stored * slope + inter; (1, 0) when the header has no scaling
    inter: float
    affine: np.ndarray

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    @property
    def file_bytes(self) -> int:
        """The uncompressed file's exact size: what precedes the voxels, then the voxels."""
        return self.offset + self.voxels * self.dtype.itemsize

    @property
    def scaled(self) -> bool:
        return (self.slope, self.inter) != (1.0, 0.0)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.affine)


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
    """The voxel budget per image: ``ISLES_MAX_VOXELS``, else 512^3 (read by settings.py)."""
    from .settings import input_limits

    return input_limits().max_voxels


# ------------------------------------------------------------------------------------ headers


def _prefix(data: bytes, size: int, what: str) -> bytes:
    """The first ``size`` bytes of the uncompressed file (fewer if it is shorter)."""
    if data[:2] != GZIP_MAGIC:
        return bytes(data[:size])
    inflater, out = zlib.decompressobj(16 + zlib.MAX_WBITS), bytearray()
    try:
        for start in range(0, len(data), 1 << 16):
            out += inflater.decompress(data[start : start + (1 << 16)], size - len(out))
            if len(out) >= size or inflater.eof:
                break
    except zlib.error as exc:
        raise _refuse("format", what, f"not a NIfTI image (corrupt gzip stream: {exc})") from exc
    return bytes(out)


def admit_header(data: bytes, what: str = "image") -> Verdict:
    """Check the header and the bytes before the voxels against the contract (every rule of
    :data:`RULES` but the voxel rules); return what the image is, or refuse it in one line."""
    head = _prefix(data, max(VERSIONS) + EXTENSION_FLAG_BYTES, what)
    # sizeof_hdr says the byte order (nibabel guesses it from dim[0], which the contract checks later)
    found = next(((n, order) for order in ("<", ">") if (n := int.from_bytes(head[:4], BYTE_ORDERS[order])) in VERSIONS), None)
    if len(head) < 4 or found is None:
        value = int.from_bytes(head[:4], "little") if len(head) >= 4 else f"missing ({len(head)} bytes)"
        raise _refuse("format", what, f"not a NIfTI image (sizeof_hdr {value}: NIfTI-1 has 348, NIfTI-2 540)")
    sizeof_hdr, endianness = found
    version, header_class, magic, magic_at = VERSIONS[sizeof_hdr]
    if len(head) < sizeof_hdr:
        raise _refuse("format", what, f"not a NIfTI image (only {len(head)} bytes, shorter than a NIfTI-{version} header)")
    if head[magic_at : magic_at + len(magic)] != magic:
        raise _refuse("format", what, f"not a NIfTI image (magic {bytes(head[magic_at : magic_at + len(magic)])!r}: "
                                      f"a single-file NIfTI-{version} has {magic!r})")
    header = header_class(head[:sizeof_hdr], endianness, check=False)  # check=False: nibabel would "fix" what is refused here
    dtype = _voxel_type(header, what)
    shape = _shape(header, what)
    offset = _offset(data, head, header, version, what)
    slope, inter = _scaling(header, what)
    _units(header, what)
    affine = _affine(header, what)
    return Verdict(header, version, shape, dtype, offset, slope, inter, affine)


def _voxel_type(header: Header, what: str) -> np.dtype:
    code, bitpix = int(header["datatype"]), int(header["bitpix"])
    if code not in VOXEL_TYPES:
        label = nib.nifti1.data_type_codes.label[code] if code in nib.nifti1.data_type_codes.value_set() else "unknown"
        accepted = ", ".join(str(t) for t in VOXEL_TYPES.values())
        raise _refuse("datatype", what, f"datatype {code} ({label}) is not a real intensity type; accepted: {accepted}")
    dtype = VOXEL_TYPES[code]
    if bitpix != 8 * dtype.itemsize:
        raise _refuse("datatype", what, f"bitpix {bitpix} disagrees with datatype {code} ({dtype}, {8 * dtype.itemsize} bits)")
    return dtype.newbyteorder(header.endianness)


def _shape(header: Header, what: str) -> tuple[int, int, int]:
    dim = [int(n) for n in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise _refuse("shape", what, f"dim[0] {dim[0]} is not a number of axes (1 to 7); expected 3, or 4 with one volume")
    shape = tuple(dim[1 : dim[0] + 1])
    if dim[0] not in (3, 4):
        raise _refuse("shape", what, f"shape {shape} is {dim[0]}-D; expected 3-D, or 4-D with one volume")
    if min(shape) < 1:
        raise _refuse("shape", what, f"shape {shape} has an axis of length {min(shape)}")
    if len(shape) == 4 and shape[3] != 1:
        raise _refuse("shape", what, f"shape {shape} is 4-D with {shape[3]} volumes; expected 3-D, or 4-D with one volume")
    voxels, budget = math.prod(shape), max_voxels()
    if voxels > budget:
        raise _refuse("budget", what, f"shape {shape} has {voxels:,} voxels, more than the {budget:,} allowed ({MAX_VOXELS_ENV})")
    return shape[:3]  # type: ignore[return-value]


def _offset(data: bytes, head: bytes, header: Header, version: int, what: str) -> int:
    """vox_offset, checked against the header, its extension flag and the extensions it flags."""
    raw, sizeof_hdr = float(header["vox_offset"]), int(header["sizeof_hdr"])
    if not math.isfinite(raw) or not raw.is_integer():
        raise _refuse("offset", what, f"vox_offset {raw:g} is not a whole number of bytes")
    offset, first = int(raw), sizeof_hdr + EXTENSION_FLAG_BYTES
    if offset < first:
        raise _refuse("offset", what, f"vox_offset {offset} lies inside the header: the voxels of a single-file "
                                      f"NIfTI-{version} start at byte {first} or later")
    if offset - first > MAX_EXTENSION_BYTES:
        raise _refuse("offset", what, f"vox_offset {offset:,} leaves {offset - first:,} bytes between the header and the "
                                      f"voxels, more than the {MAX_EXTENSION_BYTES:,} allowed for extensions")
    if head[sizeof_hdr : sizeof_hdr + 1] not in (b"", b"\0") and offset - first >= 16:
        _check_extensions(_prefix(data, offset, what), first, offset, header.endianness, what)
    return offset


def _check_extensions(prefix: bytes, start: int, offset: int, endianness: str, what: str) -> None:
    """Flagged extensions run from the flag to vox_offset, each ``esize`` bytes (a multiple of 16,
    at least 16, its 8-byte esize/ecode included); a tail under 16 bytes cannot hold one."""
    if len(prefix) < offset:
        raise _refuse("size", what, f"truncated: {len(prefix):,} bytes, vox_offset is {offset:,}")
    position, number = start, 1
    while offset - position >= 16:
        esize, ecode = struct.unpack_from(f"{endianness}ii", prefix, position)
        if esize < 16 or esize % 16 or position + esize > offset:
            raise _refuse("offset", what, f"extension {number} (ecode {ecode}) at byte {position} has esize {esize}; "
                                          f"extensions are multiples of 16 bytes that end by vox_offset {offset}")
        position, number = position + esize, number + 1


def _scaling(header: Header, what: str) -> tuple[float, float]:
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if not math.isfinite(slope):
        raise _refuse("scaling", what, f"scl_slope {slope:g} is not finite (0 means no scaling)")
    if not math.isfinite(inter):
        raise _refuse("scaling", what, f"scl_inter {inter:g} is not finite")
    return (1.0, 0.0) if slope == 0 else (slope, inter)


def _units(header: Header, what: str) -> None:
    code = int(header["xyzt_units"]) & 0x07
    if code not in SPATIAL_UNITS:
        label = nib.nifti1.unit_codes.label[code] if code in nib.nifti1.unit_codes.value_set() else "unknown code"
        raise _refuse("units", what, f"spatial unit {label} (xyzt_units {int(header['xyzt_units'])}); "
                                     f"voxel sizes and lesion volumes are read in mm: expected mm (2) or unknown (0)")


def _affine(header: Header, what: str) -> np.ndarray:
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.isfinite(pixdim).all() or (pixdim == 0).any():
        raise _refuse("affine", what, f"voxel size {tuple(round(v, 4) for v in pixdim.tolist())} mm is not finite and non-zero")
    for field in ("qform_code", "sform_code"):
        if int(header[field]) not in XFORM_CODES:
            raise _refuse("affine", what, f"{field} {int(header[field])} is not a NIfTI transform code (0 to 5)")
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # nibabel raises several types for a qform it cannot compute
        raise _refuse("affine", what, f"the affine cannot be computed ({exc})") from exc
    if not np.isfinite(affine).all():
        raise _refuse("affine", what, f"the affine has non-finite values {affine[:3].round(4).tolist()}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise _refuse("affine", what, f"the affine is not invertible (voxel size {tuple(round(v, 4) for v in voxel_sizes_mm(affine))} mm)")
    return affine


# ---------------------------------------------------------------------- inflating on a budget


def _chunks(data: bytes, what: str, expected: int) -> Iterator[bytes]:
    """The image's bytes in pieces, exactly ``expected`` of them: inflated as a stream if gzip,
    refusing a truncated stream, a stream longer than ``expected`` and bytes after the stream."""
    view = memoryview(data)
    if data[:2] != GZIP_MAGIC:
        if len(data) != expected:
            problem = "truncated" if len(data) < expected else "bytes past the declared size"
            raise _refuse("size", what, f"{problem}: {len(data):,} bytes, the header declares {expected:,}")
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
                raise _refuse("size", what, f"the gzip stream inflates past the {expected:,} bytes the header declares")
            if piece:
                yield piece
            elif not pending:
                break  # input exhausted, nothing buffered: the stream ended early
    except zlib.error as exc:
        raise _refuse("size", what, f"corrupt gzip stream ({exc})") from exc
    if not inflater.eof or produced < expected:
        raise _refuse("size", what, f"truncated gzip stream: {produced:,} bytes, the header declares {expected:,}")
    trailing = len(inflater.unused_data) + len(data) - offset
    if trailing:
        raise _refuse("size", what, f"{trailing:,} bytes after the end of the gzip stream")


def inflate(data: bytes, verdict: Verdict, what: str = "image") -> bytes:
    """The whole uncompressed file (header, extensions, voxels), exactly the size the verdict declares."""
    return b"".join(_chunks(data, what, verdict.file_bytes))


def iter_slabs(data: bytes, verdict: Verdict, what: str = "image", slices: int = 8) -> Iterator[np.ndarray]:
    """The stored voxel values (no scaling), a few slices of the last spatial axis at a time, read
    from the stream at the verdict's offset and type without holding the whole volume."""
    shape, dtype = verdict.shape, verdict.dtype
    step = math.prod(shape[:-1]) * dtype.itemsize * slices
    skip, buffered = verdict.offset, bytearray()
    for piece in _chunks(data, what, verdict.file_bytes):
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


# -------------------------------------------------------------------------------- voxel rules


def as_read(stored: np.ndarray, verdict: Verdict) -> np.ndarray:
    """Stored values as every later step reads them: the verdict's scaling with nibabel's
    arithmetic (what ``dataobj`` gives), then float32 (what :func:`as_float32` gives, before it
    turns non-finite values into 0); a value beyond float32 becomes infinite."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(apply_read_scaling(stored, verdict.slope, verdict.inter), dtype=np.float32)


def _always_finite(verdict: Verdict) -> bool:
    """Integers within float32 after scaling: nothing to look at."""
    if verdict.dtype.kind == "f":
        return False
    info = np.iinfo(verdict.dtype)
    return max(abs(info.min), abs(info.max)) * abs(verdict.slope) + abs(verdict.inter) < float(np.finfo(np.float32).max) / 2


def _no_finite_voxel(verdict: Verdict, what: str) -> NiftiError:
    after = " after scaling" if verdict.scaled else ""
    return _refuse("finite", what, f"all {verdict.voxels:,} voxels are NaN or infinite{after}; an image needs at least one finite voxel")


def scan(data: bytes, verdict: Verdict, what: str = "image") -> int:
    """Inflate the whole stream on its budget (refusing truncation, bombs and trailing bytes)
    without holding the volume; return how many voxels are not finite as read, refusing an image
    with no finite voxel."""
    if _always_finite(verdict):
        for _ in iter_slabs(data, verdict, what):
            pass
        return 0
    nonfinite = sum(int(np.count_nonzero(~np.isfinite(as_read(slab, verdict)))) for slab in iter_slabs(data, verdict, what))
    if nonfinite == verdict.voxels:
        raise _no_finite_voxel(verdict, what)
    return nonfinite


def _require_a_finite_voxel(raw: bytes, verdict: Verdict, what: str) -> None:
    """The same rule on a whole uncompressed file, stopping at the first finite voxel."""
    if _always_finite(verdict):
        return
    stored = np.frombuffer(raw, dtype=verdict.dtype, count=verdict.voxels, offset=verdict.offset)
    for start in range(0, stored.size, INFLATE_CHUNK):
        if np.isfinite(as_read(stored[start : start + INFLATE_CHUNK], verdict)).any():
            return
    raise _no_finite_voxel(verdict, what)


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
        found = np.unique(np.asarray(values, dtype=np.float64)) + 0.0  # NaNs collapse into one entry; -0 shows as 0
        shown = ", ".join(f"{v:g}" for v in found[:MAX_VALUES_LISTED])
        more = f" and {found.size - MAX_VALUES_LISTED} more" if found.size > MAX_VALUES_LISTED else ""
        earlier = f" (earlier slices: {self.positive:g})" if self.positive is not None and self.positive not in found else ""
        raise _refuse("mask", self.what, f"not a binary lesion mask: values {shown}{more}{earlier}; expected 0 and one positive value")


def mask_from_bytes(data: bytes, what: str = "lesion_mask") -> np.ndarray:
    """The binary lesion mask of NIfTI bytes, decoded from the stream a few slices at a time."""
    verdict = admit_header(data, what)
    rule, mask, z = _BinaryRule(what), np.empty(verdict.shape, dtype=bool), 0
    for slab in iter_slabs(data, verdict, what):
        mask[..., z : z + slab.shape[-1]] = rule.lesion(apply_read_scaling(slab, verdict.slope, verdict.inter))
        z += slab.shape[-1]
    return mask


@dataclass(frozen=True)
class Admitted:
    """What the contract learnt from a case's images on the way: their grid, the lesion mask, and
    each volume's count of voxels that are not finite as read (read as background later)."""

    grid: Grid
    mask: np.ndarray
    nonfinite: dict[str, int]


def admit_images(files: dict[str, bytes], mask: str | None = "lesion_mask") -> Admitted:
    """The whole contract on a case's images by column, before anything is written: every header
    (:func:`admit_header`), one 3-D grid for all, every stream whole and within its declared size,
    a finite voxel in every volume, and the ``mask`` column (all background when absent) binary."""
    verdicts = {name: admit_header(data, name) for name, data in files.items()}
    grid = check_same_grids({name: verdict.grid for name, verdict in verdicts.items()})
    nonfinite = {name: scan(files[name], verdicts[name], name) for name in files if name != mask}
    lesion = mask_from_bytes(files[mask], mask) if mask in files else np.zeros(grid.shape, bool)
    return Admitted(grid, lesion, nonfinite)


# ------------------------------------------------------------------------------------- images


def decode(data: bytes, what: str = "image") -> nib.Nifti1Image | nib.Nifti2Image:
    """The image, read through the contract's verdict: checked header, budgeted inflation, a
    finite voxel, then nibabel's array proxy on the verdict's offset, type and scaling (voxels
    stay lazy in ``dataobj``; a 4-D image of one volume is 3-D)."""
    verdict = admit_header(data, what)
    raw = inflate(data, verdict, what)
    _require_a_finite_voxel(raw, verdict, what)
    proxy = ArrayProxy(io.BytesIO(raw), (verdict.shape, verdict.dtype, verdict.offset, verdict.slope, verdict.inter))
    header = verdict.header.copy()
    header["vox_offset"] = 0  # where the voxels are is the proxy's to know (nibabel's loaded images carry 0 too)
    image_class = nib.Nifti2Image if verdict.version == 2 else nib.Nifti1Image
    return image_class(proxy, verdict.affine, header)


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
    takes see the same thing (a scaled value beyond float32 is infinite, so 0 too). ``case_inputs``
    counts them in its metadata."""
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.asarray(image.dataobj, dtype=np.float32)
    return np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


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
            raise NiftiError(f"{name} is {len(grid.shape)}-D (shape {grid.shape}), expected 3-D", "grid")
    (first, ref), *rest = grids.items()
    for name, grid in rest:
        if grid.shape != ref.shape:
            raise NiftiError(f"{name} shape {grid.shape} differs from {first} shape {ref.shape}", "grid")
        worst = float(np.abs(grid.affine - ref.affine).max())
        if worst > atol:
            raise NiftiError(f"{name} affine differs from {first} affine by {worst:.4g} (tolerance {atol})", "grid")
    return ref
