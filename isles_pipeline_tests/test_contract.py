"""The data contract (``nifti``): images generated across it read exactly as nibabel reads the same
bytes, and images breaking one rule at a time are refused in one line naming that rule.

Valid images span every admitted voxel type, both byte orders, NIfTI-1 and NIfTI-2, gzip or not,
no scaling, slope 0 (no scaling, whatever the intercept) and real scaling, extensions and gaps
before the voxels, axis-aligned and oblique orientations through sform, qform or neither, 4-D
images of one volume, NaN and inf voxels, volumes and masks. They go through what the pipeline
runs: ``admit_images`` (what ``isles-pipeline fetch`` checks before writing), ``decode`` (what
``read_case_images`` returns to every later step), ``as_float32`` and ``as_mask`` (what the steps
read), compared with nibabel's own reading of the same bytes. A few whole cases go through
``fetch_case`` and ``read_case_images`` with the local Hub server.

The examples are fixed (``derandomize=True``): CI runs the same ones every time.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import re
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isles_pipeline import nifti
from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID, shard_path
from isles_pipeline.hub import replica
from isles_pipeline.hub.server import HubServer
from isles_pipeline.inputs import fetch_case, read_case_images
from isles_pipeline.source import ShardReader, ShardSource
from isles_pipeline.store import CaseStore

EXAMPLES = 250  # each of the valid and the invalid runs; the acceptance asks for at least 200
FIXED = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
MASK = "lesion_mask"
TYPES = [str(t) for t in nifti.VOXEL_TYPES.values()]
FIRST_BYTE = {1: 352, 2: 544}  # header and its extension flag


# ------------------------------------------------------------------ images across the contract


@dataclass(frozen=True)
class Spec:
    """One valid image: every choice the contract admits; values and geometry come from ``seed``."""

    column: str  # "dwi" (a volume) or "lesion_mask"
    version: int
    endian: str
    dtype: str
    shape: tuple[int, int, int]
    four_d: bool  # stored as (x, y, z, 1)
    scaling: str  # "none", "zero" (scl_slope 0: no scaling, the intercept ignored), "scaled"
    orientation: str  # "aligned" (axes permuted and flipped) or "oblique"
    xform: str  # which transform the header carries: "sform", "qform", "both", "none" (pixdim only)
    extensions: int
    gap: int  # bytes between the extensions and the voxels (under 16 when extensions are flagged)
    units: int  # xyzt_units
    gzipped: bool
    grid_seed: int  # the affine
    seed: int  # values, scaling, extensions

    @property
    def mask(self) -> bool:
        return self.column == MASK

    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])


def specs(column: str | None = None) -> st.SearchStrategy[Spec]:
    return st.builds(
        Spec,
        column=st.just(column) if column else st.sampled_from(["dwi", MASK]),
        version=st.sampled_from([1, 2]),
        endian=st.sampled_from(["<", ">"]),
        dtype=st.sampled_from(TYPES),
        shape=st.tuples(*[st.integers(1, 14)] * 3),
        four_d=st.booleans(),
        scaling=st.sampled_from(["none", "zero", "scaled"]),
        orientation=st.sampled_from(["aligned", "oblique"]),
        xform=st.sampled_from(["sform", "qform", "both", "none"]),
        extensions=st.integers(0, 3),
        gap=st.sampled_from([0, 4, 8, 15, 16, 40, 100, 333]),
        units=st.sampled_from([0, 2, 10, 18, 26]),
        gzipped=st.booleans(),
        grid_seed=st.integers(0, 2**32 - 1),
        seed=st.integers(0, 2**32 - 1),
    )


def geometry(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """The affine the header is given, and its voxel sizes."""
    rng = np.random.default_rng(spec.grid_seed)
    zooms = rng.uniform(0.3, 5.0, 3)
    if spec.orientation == "aligned":
        rotation = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
    else:
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * zooms
    affine[:3, 3] = rng.uniform(-150, 150, 3)
    return affine, zooms


def scaling_of(spec: Spec) -> tuple[float, float]:
    rng = spec.rng(2)
    if spec.scaling == "none":
        return 1.0, 0.0
    if spec.scaling == "zero":
        return 0.0, float(rng.uniform(-100, 100))
    slope = float(10 ** rng.uniform(-4, 3)) * (1.0 if spec.mask else float(rng.choice([-1.0, 1.0])))
    return slope, 0.0 if spec.mask else float(rng.uniform(-1000, 1000))


def stored_values(spec: Spec) -> np.ndarray:
    rng, dtype = spec.rng(3), np.dtype(spec.dtype)
    size = math.prod(spec.shape)
    if spec.mask:  # 0 and one positive stored value (scaling, if any, has a positive slope and no intercept)
        positive = rng.integers(1, np.iinfo(dtype).max, dtype=dtype, endpoint=True) if dtype.kind in "iu" else rng.uniform(0.01, 1000)
        values = np.where(rng.random(size) < 0.3, positive, dtype.type(0))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)
    else:
        values = rng.normal(0, 10 ** rng.uniform(-3, 6), size)
        if rng.random() < 0.4:  # some NaN and inf voxels (read as background), never all of them
            poisoned = rng.random(size) < rng.uniform(0, 0.5)
            poisoned[rng.integers(size)] = False
            values[poisoned] = rng.choice([np.nan, np.inf, -np.inf], int(poisoned.sum()))
        if dtype == np.float64 and rng.random() < 0.2:  # beyond float32: infinite as read
            values[rng.random(size) < 0.2] = 1e300
    return values.astype(dtype).reshape(spec.shape)


def extension_blocks(spec: Spec) -> bytes:
    rng, out = spec.rng(4), b""
    for _ in range(spec.extensions):
        content = rng.bytes(int(rng.integers(0, 60)))
        esize = -(-(8 + len(content)) // 16) * 16
        out += struct.pack(f"{spec.endian}ii", esize, int(rng.choice([0, 6, 40]))) + content.ljust(esize - 8, b"\0")
    return out


def header_of(spec: Spec) -> nifti.Header:
    header = (nib.Nifti1Header if spec.version == 1 else nib.Nifti2Header)(endianness=spec.endian)
    header.set_data_dtype(np.dtype(spec.dtype))
    header.set_data_shape(spec.shape + ((1,) if spec.four_d else ()))
    affine, zooms = geometry(spec)
    header.set_zooms(tuple(zooms) + ((1.0,) if spec.four_d else ()))
    if spec.xform in ("qform", "both"):
        header.set_qform(affine, code=1)
    if spec.xform in ("sform", "both"):
        header.set_sform(affine, code=2)
    header["scl_slope"], header["scl_inter"] = scaling_of(spec)
    header["xyzt_units"] = spec.units
    return header


@dataclass
class Parts:
    """An image file in pieces, to assemble as it is or after breaking one thing."""

    header: nifti.Header
    flag: bytes
    extensions: bytes
    gap: bytes
    data: bytes
    gzipped: bool
    offset: float | None = None  # vox_offset; None: where the voxels are
    tail: bytes = b""  # after the voxels, inside the file
    cut: int = 0  # bytes cut off the end of the file
    after_gzip: bytes = b""
    edits: list[Callable[[bytearray], None]] = dataclasses.field(default_factory=list)  # on the whole uncompressed file

    def assemble(self) -> bytes:
        header = self.header.copy()
        before = len(header.binaryblock) + len(self.flag) + len(self.extensions) + len(self.gap)
        header["vox_offset"] = before if self.offset is None else self.offset
        raw = bytearray(header.binaryblock + self.flag + self.extensions + self.gap + self.data + self.tail)
        for edit in self.edits:
            edit(raw)
        raw = raw[: len(raw) - self.cut]
        return (gzip.compress(bytes(raw), compresslevel=1, mtime=0) if self.gzipped else bytes(raw)) + self.after_gzip


def parts_of(spec: Spec) -> Parts:
    extensions = extension_blocks(spec)
    values = stored_values(spec).astype(np.dtype(spec.dtype).newbyteorder(spec.endian))
    return Parts(
        header=header_of(spec),
        flag=b"\x01\0\0\0" if extensions else b"\0\0\0\0",
        extensions=extensions,
        gap=bytes(spec.gap % 16 if extensions else spec.gap),
        data=values.tobytes(order="F"),
        gzipped=spec.gzipped,
    )


def nibabel_reads(data: bytes) -> nib.Nifti1Image:
    """The reference: nibabel's own reader on the same (uncompressed) bytes."""
    raw = gzip.decompress(data) if data[:2] == nifti.GZIP_MAGIC else data
    image_class = nib.Nifti2Image if int.from_bytes(raw[:4], "little") == 540 or int.from_bytes(raw[:4], "big") == 540 else nib.Nifti1Image
    return image_class.from_bytes(raw)


def features(spec: Spec) -> set[str]:
    slope, _ = scaling_of(spec)
    return {
        f"column {spec.column}", f"NIfTI-{spec.version}", f"byte order {spec.endian}", f"type {spec.dtype}",
        f"scaling {spec.scaling}", f"{spec.orientation}", f"xform {spec.xform}", f"4-D {spec.four_d}",
        f"gzip {spec.gzipped}", f"extensions {bool(spec.extensions)}", f"gap {bool(spec.gap % 16 if spec.extensions else spec.gap)}",
        f"units {spec.units & 7}", f"negative slope {slope < 0}",
    }


def assert_reads_as_nibabel(data: bytes, column: str, admitted: nifti.Admitted | None = None) -> None:
    """What the pipeline reads from ``data`` equals what nibabel reads from it, voxel for voxel."""
    reference = nibabel_reads(data)
    expected = np.asanyarray(reference.dataobj)
    ours = nifti.decode(data, column)
    got = np.asanyarray(ours.dataobj)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected.reshape(got.shape))  # NaNs in the same places count as equal
    assert np.array_equal(ours.affine, reference.affine)
    with np.errstate(over="ignore", invalid="ignore"):
        as_read = np.asarray(reference.dataobj, dtype=np.float32).reshape(got.shape)
    assert np.array_equal(nifti.as_float32(ours), np.nan_to_num(as_read, nan=0.0, posinf=0.0, neginf=0.0))
    admitted = admitted or nifti.admit_images({column: data}, MASK)
    assert np.array_equal(admitted.grid.affine, reference.affine) and admitted.grid.shape == got.shape
    if column == MASK:
        lesion = np.asarray(reference.dataobj, dtype=np.float64).reshape(got.shape) > 0
        assert np.array_equal(admitted.mask, lesion) and np.array_equal(nifti.as_mask(ours), lesion)
    else:
        assert admitted.nonfinite[column] == int(np.count_nonzero(~np.isfinite(as_read)))


def test_valid_images_read_exactly_as_nibabel_reads_them():
    seen: list[set[str]] = []

    @FIXED
    @given(specs())
    def check(spec: Spec) -> None:
        assert_reads_as_nibabel(parts_of(spec).assemble(), spec.column)
        seen.append(features(spec))

    check()
    assert len(seen) >= 200
    covered = set().union(*seen)
    wanted = {f"type {t}" for t in TYPES} | {"NIfTI-1", "NIfTI-2", "byte order <", "byte order >", "scaling zero",
                                             "scaling scaled", "negative slope True", "oblique", "xform none", "xform qform",
                                             "4-D True", "gzip False", "extensions True", "gap True", f"column {MASK}"}
    assert wanted <= covered, wanted - covered


# ----------------------------------------------------------------- one rule broken at a time


@dataclass(frozen=True)
class Break:
    rule: str  # the key of nifti.RULES the image breaks
    name: str
    make: Callable[[Spec, np.random.Generator], tuple[bytes, str]]  # the broken image, and its message's pattern


def _format_sizeof(spec, rng):
    parts, value = parts_of(spec), int(rng.choice([0, 1, 347, 349, 539, 541, 1000, 2**31 - 1]))
    parts.edits.append(lambda raw: struct.pack_into(f"{spec.endian}i", raw, 0, value))
    return parts.assemble(), r"not a NIfTI image \(sizeof_hdr -?\d+: NIfTI-1 has 348, NIfTI-2 540\)"


def _format_magic(spec, rng):
    parts = parts_of(spec)
    if spec.version == 1:
        at, magic = 344, [b"ni1\0", b"n+2\0", b"\0\0\0\0", b"n+1x"][rng.integers(4)]
    else:
        at, magic = 4, [b"ni2\0\r\n\x1a\n", b"n+1\0\r\n\x1a\n", b"n+2\0\n\r\x1a\n", b"n+2\0\r\n\x1a\0"][rng.integers(4)]
    parts.edits.append(lambda raw: raw.__setitem__(slice(at, at + len(magic)), magic))
    return parts.assemble(), r"not a NIfTI image \(magic b'.*': a single-file NIfTI-\d has b'n\+\d"


def _format_short(spec, rng):
    keep = int(rng.integers(4, FIRST_BYTE[spec.version] - 4))  # under sizeof_hdr
    parts = parts_of(dataclasses.replace(spec, gzipped=False))
    data = parts.assemble()[:keep]
    return (gzip.compress(data, mtime=0) if spec.gzipped else data), \
        rf"not a NIfTI image \(only {keep} bytes, shorter than a NIfTI-{spec.version} header\)"


def _format_gzip(spec, rng):
    data = bytearray(parts_of(dataclasses.replace(spec, gzipped=True)).assemble())
    data[10] = 0x07  # the first deflate block: final, of the reserved type 3
    return bytes(data), r"not a NIfTI image \(corrupt gzip stream: Error -3 .*invalid block type\)"


def _datatype_refused(spec, rng):
    code = int(rng.choice([1, 32, 128, 1536, 1792, 2048, 2304, 0, 7, 3000]))
    parts = parts_of(spec)
    known = code in nib.nifti1.data_type_codes.value_set() and code != 0
    dtype = nib.nifti1.data_type_codes.dtype[code] if known else None
    parts.header["datatype"] = code
    if dtype is not None:
        parts.header["bitpix"] = 1 if code == 1 else dtype.itemsize * 8
        parts.data = rng.bytes(math.prod(spec.shape) * dtype.itemsize)
    return parts.assemble(), rf"datatype {code} \(.+\) is not a real intensity type; accepted: uint8, int8, .*float64"


def _datatype_bitpix(spec, rng):
    parts, bits = parts_of(spec), np.dtype(spec.dtype).itemsize * 8
    value = int(rng.choice([b for b in (0, 1, 7, 8, 16, 32, 64, 128, -8) if b != bits]))
    parts.header["bitpix"] = value
    return parts.assemble(), rf"bitpix {value} disagrees with datatype \d+ \({spec.dtype}, {bits} bits\)"


def _shape_axes(spec, rng):
    parts, ndim = parts_of(spec), int(rng.choice([1, 2, 5, 6, 7]))
    dims = (list(spec.shape) + [1] * 4)[:ndim]
    parts.header["dim"][:] = [ndim, *dims, *([1] * (7 - ndim))]
    return parts.assemble(), rf"shape \({', '.join(map(str, dims))},?\) is {ndim}-D; expected 3-D, or 4-D with one volume"


def _shape_dim0(spec, rng):
    parts, value = parts_of(spec), int(rng.choice([0, -1, 8, 100]))
    parts.header["dim"][0] = value
    return parts.assemble(), rf"dim\[0\] {value} is not a number of axes \(1 to 7\)"


def _shape_volumes(spec, rng):
    parts, volumes = parts_of(spec), int(rng.integers(2, 4))
    parts.header.set_data_shape((*spec.shape, volumes))
    parts.data *= volumes
    return parts.assemble(), rf"shape \({', '.join(map(str, spec.shape))}, {volumes}\) is 4-D with {volumes} volumes"


def _shape_empty_axis(spec, rng):
    parts, axis, value = parts_of(spec), int(rng.integers(1, 4)), int(rng.choice([0, -1, -7]))
    parts.header["dim"][axis] = value
    return parts.assemble(), rf"shape \(.*\) has an axis of length {value}"


def _budget(spec, rng):
    parts = parts_of(spec)
    shape = [(600, 600, 600), (1000, 1000, 200), (32767, 32767, 2), (512, 512, 513)][rng.integers(4)]
    parts.header["dim"][:4] = [3, *shape]
    return parts.assemble(), rf"shape \({', '.join(map(str, shape))}\) has {math.prod(shape):,} voxels, more than the 134,217,728 allowed"


def _offset_inside(spec, rng):
    parts, value = parts_of(spec), int(rng.integers(0, FIRST_BYTE[spec.version]))
    parts.offset = value
    return parts.assemble(), rf"vox_offset {value} lies inside the header: the voxels of a single-file NIfTI-{spec.version} start at byte"


def _offset_fraction(spec, rng):
    spec = dataclasses.replace(spec, version=1)  # NIfTI-2's vox_offset is an integer
    parts = parts_of(spec)
    value = float(rng.choice([352.5, 400.25, np.nan, np.inf]))
    parts.offset = value
    return parts.assemble(), rf"vox_offset {value:g} is not a whole number of bytes"


def _offset_far(spec, rng):
    parts, value = parts_of(spec), int(rng.choice([2**25, 10**8, 2**31]))
    parts.offset = value
    return parts.assemble(), rf"vox_offset {value:,} leaves [0-9,]+ bytes between the header and the voxels, more than the 16,777,216"


def _offset_esize(spec, rng):
    spec = dataclasses.replace(spec, extensions=max(1, spec.extensions))
    parts = parts_of(spec)
    first = FIRST_BYTE[spec.version]
    value = int(rng.choice([0, 8, 12, 17, 24, -16, len(parts.extensions) + 16]))
    parts.edits.append(lambda raw: struct.pack_into(f"{spec.endian}i", raw, first, value))
    return parts.assemble(), rf"extension 1 \(ecode -?\d+\) at byte {first} has esize {value}; extensions are multiples of 16 bytes"


def _offset_gap(spec, rng):
    spec = dataclasses.replace(spec, extensions=max(1, spec.extensions))
    parts = parts_of(spec)
    parts.gap = bytes(int(rng.integers(16, 100)))
    at = FIRST_BYTE[spec.version] + len(parts.extensions)
    return parts.assemble(), rf"extension {spec.extensions + 1} \(ecode 0\) at byte {at} has esize 0"


def _size_truncated(spec, rng):
    parts = parts_of(spec)
    parts.cut = int(rng.integers(1, len(parts.data) + 1))
    problem = "truncated gzip stream" if spec.gzipped else "truncated"
    return parts.assemble(), rf"{problem}: [0-9,]+ bytes, the header declares [0-9,]+"


def _size_tail(spec, rng):
    parts = parts_of(spec)
    parts.tail = rng.bytes(int(rng.integers(1, 64)))
    problem = r"the gzip stream inflates past the [0-9,]+ bytes" if spec.gzipped else r"bytes past the declared size: [0-9,]+ bytes"
    return parts.assemble(), problem


def _size_after_gzip(spec, rng):
    parts = parts_of(dataclasses.replace(spec, gzipped=True))
    parts.after_gzip = rng.bytes(int(rng.integers(1, 64)))
    return parts.assemble(), rf"{len(parts.after_gzip):,} bytes after the end of the gzip stream"


def _scaling_slope(spec, rng):
    parts, value = parts_of(spec), float(rng.choice([np.inf, -np.inf, np.nan]))
    parts.header["scl_slope"] = value
    return parts.assemble(), rf"scl_slope {value:g} is not finite \(0 means no scaling\)"


def _scaling_inter(spec, rng):
    parts, value = parts_of(spec), float(rng.choice([np.inf, -np.inf, np.nan]))
    parts.header["scl_inter"] = value
    return parts.assemble(), rf"scl_inter {value:g} is not finite"


def _units(spec, rng):
    parts, value = parts_of(spec), int(rng.choice([1, 3, 4, 5, 6, 7])) | int(rng.choice([0, 8, 16]))
    parts.header["xyzt_units"] = value
    return parts.assemble(), rf"spatial unit [a-z ]+ \(xyzt_units {value}\); voxel sizes and lesion volumes are read in mm"


def _affine_pixdim(spec, rng):
    parts = parts_of(spec)
    parts.header["pixdim"][int(rng.integers(1, 4))] = float(rng.choice([0.0, np.nan, np.inf, -np.inf]))
    return parts.assemble(), r"voxel size \(.*\) mm is not finite and non-zero"


def _affine_code(spec, rng):
    parts, field, value = parts_of(spec), str(rng.choice(["qform_code", "sform_code"])), int(rng.choice([6, 7, 255, -1, 1000]))
    parts.header[field] = value
    return parts.assemble(), rf"{field} {value} is not a NIfTI transform code"


def _affine_nonfinite(spec, rng):
    parts = parts_of(dataclasses.replace(spec, xform="sform"))
    row = str(rng.choice(["srow_x", "srow_y", "srow_z"]))
    parts.header[row][int(rng.integers(4))] = float(rng.choice([np.nan, np.inf, -np.inf]))
    return parts.assemble(), r"the affine has non-finite values"


def _affine_singular(spec, rng):
    parts = parts_of(dataclasses.replace(spec, xform="sform"))
    parts.header["srow_z"][:3] = parts.header["srow_x"][:3] * float(rng.choice([1.0, -2.0, 0.0]))
    return parts.assemble(), r"the affine is not invertible"


def _affine_qform(spec, rng):
    parts = parts_of(dataclasses.replace(spec, xform="qform"))
    if rng.random() < 0.5:
        parts.header["pixdim"][0] = float(rng.choice([0.0, 2.0, -3.0]))  # qfac: 1 or -1
    else:
        parts.header["pixdim"][int(rng.integers(1, 4))] *= -1
    return parts.assemble(), r"the affine cannot be computed \(.*should be.*\)"


def _finite_none(spec, rng):
    kind = str(rng.choice(["nan", "huge", "overflow"]))
    if kind == "overflow":  # integers that scaling sends past float32
        spec = dataclasses.replace(spec, column="dwi", dtype=str(rng.choice(["int8", "uint8", "int16", "int32"])), scaling="none")
        parts = parts_of(spec)
        values = rng.integers(2, 100, math.prod(spec.shape)) * rng.choice([-1, 1], math.prod(spec.shape))
        dtype = np.dtype(spec.dtype)
        parts.data = (np.abs(values) if dtype.kind == "u" else values).astype(dtype.newbyteorder(spec.endian)).tobytes()
        parts.header["scl_slope"], parts.header["scl_inter"] = 3e38, 0.0
        return parts.assemble(), rf"all {math.prod(spec.shape):,} voxels are NaN or infinite after scaling; an image needs at least one finite voxel"
    dtype = "float64" if kind == "huge" else str(rng.choice(["float32", "float64"]))
    spec = dataclasses.replace(spec, column="dwi", dtype=dtype, scaling="none")
    parts = parts_of(spec)
    size = math.prod(spec.shape)
    values = rng.choice([1e300, -1e300], size) if kind == "huge" else rng.choice([np.nan, np.inf, -np.inf], size)
    parts.data = values.astype(np.dtype(dtype).newbyteorder(spec.endian)).tobytes()
    return parts.assemble(), rf"all {size:,} voxels are NaN or infinite; an image needs at least one finite voxel"


def _mask_values(spec, rng):
    kind = str(rng.choice(["two", "negative", "nan"]))
    dtype = {"two": spec.dtype, "negative": str(rng.choice(["int16", "float32"])), "nan": str(rng.choice(["float32", "float64"]))}[kind]
    spec = dataclasses.replace(spec, column=MASK, dtype=dtype, scaling="none", shape=(max(2, spec.shape[0]), *spec.shape[1:]))
    parts = parts_of(spec)
    values = np.zeros(spec.shape, dtype=np.float64)
    values[0, 0, 0], values[1, 0, 0] = {"two": (1, 2), "negative": (1, -1), "nan": (1, np.nan)}[kind]
    parts.data = values.astype(np.dtype(dtype).newbyteorder(spec.endian)).tobytes(order="F")
    return parts.assemble(), r"not a binary lesion mask: values .*; expected 0 and one positive value"


BREAKS = (
    Break("format", "sizeof_hdr", _format_sizeof),
    Break("format", "magic", _format_magic),
    Break("format", "shorter than a header", _format_short),
    Break("format", "corrupt gzip", _format_gzip),
    Break("datatype", "not a real type", _datatype_refused),
    Break("datatype", "bitpix", _datatype_bitpix),
    Break("shape", "not 3-D or 4-D", _shape_axes),
    Break("shape", "dim[0]", _shape_dim0),
    Break("shape", "several volumes", _shape_volumes),
    Break("shape", "empty axis", _shape_empty_axis),
    Break("budget", "too many voxels", _budget),
    Break("offset", "inside the header", _offset_inside),
    Break("offset", "not whole", _offset_fraction),
    Break("offset", "too far", _offset_far),
    Break("offset", "bad esize", _offset_esize),
    Break("offset", "gap after extensions", _offset_gap),
    Break("size", "truncated", _size_truncated),
    Break("size", "too long", _size_tail),
    Break("size", "after the gzip stream", _size_after_gzip),
    Break("scaling", "scl_slope", _scaling_slope),
    Break("scaling", "scl_inter", _scaling_inter),
    Break("units", "not mm", _units),
    Break("affine", "pixdim", _affine_pixdim),
    Break("affine", "transform code", _affine_code),
    Break("affine", "non-finite", _affine_nonfinite),
    Break("affine", "singular", _affine_singular),
    Break("affine", "qform", _affine_qform),
    Break("finite", "no finite voxel", _finite_none),
    Break("mask", "not binary", _mask_values),
)


def test_every_rule_has_a_break_and_a_row_in_the_docs():
    assert {b.rule for b in BREAKS} == set(nifti.RULES) - {"grid"}  # grids: test_hostile_inputs, test_source
    docs = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    assert [rule for rule in nifti.RULES if f"| `{rule}` |" not in docs] == []


def test_images_breaking_one_rule_are_refused_in_one_line_naming_it():
    seen: list[str] = []

    @FIXED
    @given(specs(), st.sampled_from(BREAKS), st.integers(0, 2**32 - 1))
    def check(spec: Spec, broken: Break, seed: int) -> None:
        data, pattern = broken.make(spec, np.random.default_rng(seed))
        column = MASK if broken.rule == "mask" else "dwi" if broken.rule == "finite" else spec.column
        try:
            nifti.admit_images({column: data}, MASK)
        except nifti.NiftiError as exc:
            refusal = exc
        else:
            raise AssertionError(f"{broken.name}: admitted")
        message = str(refusal)
        assert "\n" not in message and refusal.rule == broken.rule, (broken.name, message)
        assert re.fullmatch(rf"{column}: {pattern}.*", message), (broken.name, pattern, message)
        if broken.rule != "mask":  # decode (every later step) refuses it the same way: it cannot read what fetch refused
            try:
                nifti.decode(data, column)
            except nifti.NiftiError as exc:
                assert (str(exc), exc.rule) == (message, refusal.rule)
            else:
                raise AssertionError(f"{broken.name}: decoded")
        seen.append(broken.rule)

    check()
    assert len(seen) >= 200 and set(seen) == {b.rule for b in BREAKS}, (len(seen), set(seen))


# ----------------------------------------------------------- whole cases through fetch_case


CASE = CASE_IDS[7]


def case_cells(dwi: Spec, adc: Spec, mask: Spec) -> dict[str, bytes]:
    """Three images on dwi's grid, each with its own type, byte order, version, scaling, file layout."""
    grid = {f: getattr(dwi, f) for f in ("shape", "orientation", "xform", "grid_seed")}
    adc = dataclasses.replace(adc, **grid, column="adc")
    mask = dataclasses.replace(mask, **grid, column=MASK)
    return {spec.column: parts_of(spec).assemble() for spec in (dwi, adc, mask)}


def test_whole_cases_fetched_and_read_back_hold_what_nibabel_reads(tmp_path_factory):
    good = replica.case_row(CASE, grid="tiny", ctp_mb=0.05)

    @settings(max_examples=4, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(specs("dwi"), specs("dwi"), specs(MASK))
    def check(dwi: Spec, adc: Spec, mask: Spec) -> None:
        cells = case_cells(dwi, adc, mask)
        with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as folder:
            repo, store = Path(folder) / "repo", CaseStore(Path(folder) / "out")
            replica.write_rows(repo / shard_path(CASE), [{**good, **{c: {"bytes": b, "path": good[c]["path"]} for c, b in cells.items()}}])
            with HubServer() as server:
                server.add_repo("dataset", DEFAULT_REPO_ID, repo)
                result = fetch_case(ShardReader(ShardSource(DEFAULT_REPO_ID, "main", server.url)), store, CASE)
            stored = read_case_images(store, CASE)
            for column, data in cells.items():
                assert store.read_bytes(store.case_path(CASE, result.manifest.files[column].name)) == data
                np.testing.assert_array_equal(np.asanyarray(stored[column].dataobj),
                                              np.asanyarray(nibabel_reads(data).dataobj).reshape(stored[column].shape))
                assert_reads_as_nibabel(data, column)
            for column in ("dwi", "adc"):
                with np.errstate(over="ignore", invalid="ignore"):
                    as_read = np.asarray(nibabel_reads(cells[column]).dataobj, dtype=np.float32)
                assert result.manifest.nonfinite_voxels[column] == int(np.count_nonzero(~np.isfinite(as_read)))
            reference_mask = np.asarray(nibabel_reads(cells[MASK]).dataobj, dtype=np.float64) > 0
            voxel_ml = nifti.voxel_volume_ml(nibabel_reads(cells["dwi"]).affine)
            assert math.isclose(result.manifest.lesion_ml, reference_mask.sum() * voxel_ml, rel_tol=1e-12)

    check()
