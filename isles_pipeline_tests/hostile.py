"""Crafted shards: every way a shard can be odd or hostile, each with what the pipeline must do.

Each :class:`Crafted` kind writes one shard for its own case id into a repo folder, starting
from a good replica row and breaking one thing: the parquet file, its layout and types, or a
NIfTI cell (header, stream, voxels). ``refused`` kinds must fail with a one-line message naming
the case and matching ``cause``; the others are odd but valid and must be accepted.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from isles_pipeline import nifti
from isles_pipeline.catalogue import CASE_IDS, shard_path
from isles_pipeline.hub import replica

Row = dict[str, object]

# NIfTI-1 header offsets (the standard's field layout)
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET, SCL_SLOPE = 40, 70, 72, 76, 108, 112
QFORM_CODE, SFORM_CODE, SROW_X, MAGIC = 252, 254, 280, 344


def good_row(case_id: str) -> Row:
    return replica.case_row(case_id, grid="tiny", ctp_mb=0.05)


def raw_nifti(cell: dict) -> bytearray:
    data = cell["bytes"]
    return bytearray(gzip.decompress(data) if data[:2] == nifti.GZIP_MAGIC else data)


def gz(data: bytes) -> bytes:
    return gzip.compress(bytes(data), compresslevel=1, mtime=0)


def cell(row: Row, column: str, data: bytes) -> dict:
    return {"bytes": bytes(data), "path": row[column]["path"]}


def patched(row: Row, column: str, offset: int, fmt: str, *values) -> dict:
    raw = raw_nifti(row[column])
    struct.pack_into(fmt, raw, offset, *values)
    return cell(row, column, gz(raw))


def image_cell(row: Row, column: str, image: nib.Nifti1Image) -> dict:
    return cell(row, column, nifti.encode(image))


def mask_with(row: Row, values: Callable[[np.ndarray], np.ndarray], dtype=np.float32) -> dict:
    mask = nifti.decode(row["lesion_mask"]["bytes"])
    lesion = nifti.as_mask(mask)
    header = mask.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1, 0)
    return image_cell(row, "lesion_mask", nib.Nifti1Image(values(lesion).astype(dtype), mask.affine, header))


def volume_with(row: Row, column: str, change: Callable[[np.ndarray], np.ndarray]) -> dict:
    image = nifti.decode(row[column]["bytes"])
    values = change(nifti.as_float32(image).copy())
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1, 0)
    return image_cell(row, column, nib.Nifti1Image(values, image.affine, header))


def complex_cell(row: Row, column: str) -> dict:
    """The volume as complex64 (real part the intensity, imaginary part half of it)."""
    image = nifti.decode(row[column]["bytes"])
    values = nifti.as_float32(image)
    return image_cell(row, column, nib.Nifti1Image((values + 0.5j * values).astype(np.complex64), image.affine))


def rgb_cell(row: Row, column: str) -> dict:
    """The volume as RGB triplets (datatype 128), the intensity clipped to 0-255 in each channel."""
    image = nifti.decode(row[column]["bytes"])
    grey = np.clip(nifti.as_float32(image), 0, 255).astype(np.uint8)
    rgb = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = grey, grey, grey
    return image_cell(row, column, nib.Nifti1Image(rgb, image.affine))


def nifti2_cell(row: Row, column: str) -> dict:
    image = nifti.decode(row[column]["bytes"])
    converted = nib.Nifti2Image(np.asarray(image.dataobj), image.affine)
    converted.header.set_slope_inter(*image.header.get_slope_inter())
    converted.set_data_dtype(image.get_data_dtype())
    return image_cell(row, column, converted)


# ------------------------------------------------------------------------ whole-file writers


def write_table(path: Path, table: pa.Table, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **options)


def row_table(rows: list[Row]) -> pa.Table:
    return replica.rows_table(rows)


def with_column(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def good_shard_bytes(case_id: str) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(row_table([good_row(case_id)]), buffer)
    return buffer.getvalue()


def absurd_footer(case_id: str) -> bytes:
    data = bytearray(good_shard_bytes(case_id))
    struct.pack_into("<I", data, len(data) - 8, 0xFFFFFFF0)
    return bytes(data)


def garbage_footer(case_id: str) -> bytes:
    data = bytearray(good_shard_bytes(case_id))
    (length,) = struct.unpack_from("<I", data, len(data) - 8)
    start = len(data) - 8 - length
    data[start : start + length] = np.random.default_rng(1).integers(0, 256, length, dtype=np.uint8).tobytes()
    return bytes(data)


def corrupt_dwi_page(case_id: str) -> bytes:
    """Random bytes over the middle of the dwi column chunk (a page the decoder must refuse)."""
    data = bytearray(good_shard_bytes(case_id))
    metadata = pq.read_metadata(io.BytesIO(bytes(data)))
    chunk = next(metadata.row_group(0).column(i) for i in range(metadata.num_columns)
                 if metadata.row_group(0).column(i).path_in_schema == "dwi.bytes")
    start = chunk.data_page_offset + 40
    span = min(4096, chunk.total_compressed_size - 80)
    data[start : start + span] = np.random.default_rng(2).integers(0, 256, span, dtype=np.uint8).tobytes()
    return bytes(data)


BOMB_BYTES = 600 * 2**20


def parquet_bomb(case_id: str) -> pa.Table:
    """A dwi cell of 600 MiB of zeros: the zstd-compressed shard is a few hundred KB."""
    row = good_row(case_id)
    zeros = pa.py_buffer(np.zeros(BOMB_BYTES, dtype=np.uint8))  # calloc'd: no copy, no Python bytes
    offsets = pa.py_buffer(np.array([0, BOMB_BYTES], dtype=np.int32))
    cells = pa.BinaryArray.from_buffers(pa.binary(), 1, [None, offsets, zeros])
    bomb = pa.StructArray.from_arrays([cells, pa.array([row["dwi"]["path"]])], fields=list(replica.NIFTI_TYPE))
    return with_column(row_table([row]), "dwi", bomb)


def gzip_bomb(row: Row) -> dict:
    """A valid 48x48x16 header followed by a deflate stream of 1 GB of zeros (about 1 MB)."""
    raw = raw_nifti(row["dwi"])
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = deflate.compress(bytes(raw))
    zeros = bytes(1 << 24)
    for _ in range(64):
        body += deflate.compress(zeros)
    return cell(row, "dwi", body + deflate.flush())


# ----------------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Crafted:
    kind: str
    cause: str  # regex the one-line error must match after "case <id>: " (refused kinds)
    refused: bool = True
    rows: Callable[[Row], list[Row]] | None = None  # alter the good row
    table: Callable[[str], pa.Table] | None = None  # build a whole table
    raw: Callable[[str], bytes] | None = None  # build the whole file
    options: dict | None = None


def _replace(column: str, make: Callable[[Row], object]) -> Callable[[Row], list[Row]]:
    return lambda row: [{**row, column: make(row)}]


def _typed(column: str, array: Callable[[Row], pa.Array]) -> Callable[[str], pa.Table]:
    def build(case_id: str) -> pa.Table:
        row = good_row(case_id)
        return with_column(row_table([row]), column, array(row))

    return build


KINDS: tuple[Crafted, ...] = (
    # the file itself
    Crafted("not parquet", "shard is not a readable parquet file", raw=lambda _c: b"<html>502 Bad Gateway</html>" * 400),
    Crafted("empty file", "shard is not a readable parquet file", raw=lambda _c: b""),
    Crafted("truncated shard", "shard is not a readable parquet file", raw=lambda c: good_shard_bytes(c)[: len(good_shard_bytes(c)) // 2]),
    Crafted("absurd footer length", "shard is not a readable parquet file", raw=absurd_footer),
    Crafted("garbage footer", "shard is not a readable parquet file", raw=garbage_footer),
    Crafted("corrupt dwi page", "cannot decode the shard's columns|dwi: (not a NIfTI|corrupt gzip|truncated)", raw=corrupt_dwi_page),
    Crafted("parquet decompression bomb", "the shard's dwi, adc, lesion_mask decode to [0-9,]+ bytes, more than the [0-9,]+ allowed",
            table=parquet_bomb,
            options={"compression": "zstd"}),
    # layout and types
    Crafted("two rows", "shard has 2 rows, expected exactly 1", rows=lambda row: [row, row]),
    Crafted("zero rows", "shard has 0 rows, expected exactly 1", rows=lambda row: []),
    Crafted("wrong subject", "shard holds subject_id 'sub-stroke0001'", rows=lambda row: [{**row, "subject_id": CASE_IDS[0]}]),
    Crafted("missing lesion_mask column", "shard lacks column\\(s\\) lesion_mask",
            table=lambda c: row_table([good_row(c)]).drop_columns(["lesion_mask"])),
    Crafted("dwi typed string", "column dwi is string, expected struct<bytes: binary, path: string>",
            table=_typed("dwi", lambda row: pa.array(["not an image"]))),
    Crafted("dwi struct of wrong fields", "column dwi is struct<bytes: int64",
            table=_typed("dwi", lambda row: pa.array([{"bytes": 1, "path": "x"}]))),
    Crafted("subject_id typed int", "column subject_id is int64, expected string",
            table=_typed("subject_id", lambda row: pa.array([1]))),
    Crafted("null dwi", "dwi is missing \\(null\\)", rows=_replace("dwi", lambda row: None)),
    Crafted("null lesion_mask", "lesion_mask is missing \\(null\\)", rows=_replace("lesion_mask", lambda row: None)),
    Crafted("null bytes in adc", "adc is missing \\(null\\)", rows=_replace("adc", lambda row: {"bytes": None, "path": "adc.nii.gz"})),
    # NIfTI streams
    Crafted("garbage dwi", "dwi: not a NIfTI image", rows=_replace("dwi", lambda row: replica.garbage_cell())),
    Crafted("garbage gzip dwi", "dwi: not a NIfTI image", rows=_replace("dwi", lambda row: replica.garbage_cell(gzip_magic=True))),
    Crafted("truncated gzip adc", "adc: (truncated|corrupt)",
            rows=_replace("adc", lambda row: cell(row, "adc", row["adc"]["bytes"][: len(row["adc"]["bytes"]) // 2]))),
    Crafted("truncated uncompressed adc", "adc: truncated: [0-9,]+ bytes, the header declares [0-9,]+",
            rows=_replace("adc", lambda row: cell(row, "adc", bytes(raw_nifti(row["adc"])[:-1000])))),
    Crafted("gzip bomb dwi", "dwi: the gzip stream inflates past the [0-9,]+ bytes the header declares", rows=_replace("dwi", gzip_bomb)),
    Crafted("trailing bytes after gzip", "dwi: [0-9,]+ bytes after the end of the gzip stream",
            rows=_replace("dwi", lambda row: cell(row, "dwi", row["dwi"]["bytes"] + b"\x1f\x8bextra-member-or-junk"))),
    Crafted("trailing bytes after nii", "adc: bytes past the declared size",
            rows=_replace("adc", lambda row: cell(row, "adc", bytes(raw_nifti(row["adc"])) + bytes(500)))),
    # NIfTI headers
    Crafted("huge declared shape", "dwi: shape \\(4000, 4000, 4000\\) has 64,000,000,000 voxels, more than the [0-9,]+ allowed",
            rows=_replace("dwi", lambda row: patched(row, "dwi", DIM, "<4h", 3, 4000, 4000, 4000))),
    Crafted("zero-length axis", "adc: shape \\(48, 0, 16\\) has an axis of length 0",
            rows=_replace("adc", lambda row: patched(row, "adc", DIM + 4, "<h", 0))),
    Crafted("NaN affine", "dwi: the affine has non-finite values",
            rows=_replace("dwi", lambda row: patched(row, "dwi", SROW_X, "<f", float("nan")))),
    Crafted("zero voxel size", "adc: voxel size \\(0.0, ",
            rows=_replace("adc", lambda row: patched(row, "adc", PIXDIM + 4, "<f", 0.0))),
    Crafted("singular affine", "dwi: the affine is not invertible",
            rows=_replace("dwi", lambda row: patched(row, "dwi", SROW_X, "<4f", 0.0, 0.0, 0.0, 0.0))),
    Crafted("unknown datatype", "adc: datatype 1234 \\(unknown\\) is not a real intensity type",
            rows=_replace("adc", lambda row: patched(row, "adc", DATATYPE, "<h", 1234))),
    Crafted("bad magic", "dwi: not a NIfTI image \\(magic", rows=_replace("dwi", lambda row: patched(row, "dwi", MAGIC, "4s", b"xyz\0"))),
    Crafted("4-D dwi", "dwi: shape \\(48, 48, 16, 2\\) is 4-D with 2 volumes", rows=_replace("dwi", lambda row: replica.four_d_cell(row["dwi"]))),
    # the data contract (issue 16): what an image must be, beyond parsing
    Crafted("vox_offset 0 in a single-file adc", "adc: vox_offset 0 lies inside the header",
            rows=_replace("adc", lambda row: patched(row, "adc", VOX_OFFSET, "<f", 0.0))),
    Crafted("complex64 dwi", "dwi: datatype 32 \\(complex64\\) is not a real intensity type",
            rows=_replace("dwi", lambda row: complex_cell(row, "dwi"))),
    Crafted("RGB dwi", "dwi: datatype 128 \\(RGB\\) is not a real intensity type", rows=_replace("dwi", lambda row: rgb_cell(row, "dwi"))),
    Crafted("infinite scl_slope in dwi", "dwi: scl_slope inf is not finite",
            rows=_replace("dwi", lambda row: patched(row, "dwi", SCL_SLOPE, "<f", float("inf")))),
    Crafted("all-NaN dwi", "dwi: all 36,864 voxels are NaN or infinite",
            rows=_replace("dwi", lambda row: volume_with(row, "dwi", lambda v: v * np.nan))),
    # grids
    Crafted("cropped adc", "adc shape \\(48, 48, 14\\) differs from dwi shape \\(48, 48, 16\\)",
            rows=_replace("adc", lambda row: replica.cropped_cell(row["adc"]))),
    Crafted("shifted mask", "lesion_mask affine differs from dwi affine by 5",
            rows=_replace("lesion_mask", lambda row: replica.shifted_cell(row["lesion_mask"]))),
    # masks
    Crafted("mask with 0.5 and 1", "lesion_mask: not a binary lesion mask: values 0, 0.5, 1",
            rows=_replace("lesion_mask", lambda row: mask_with(row, lambda m: np.where(m, 1.0, 0.0) + 0.5 * np.roll(m, 3, axis=0)))),
    Crafted("negative mask", "lesion_mask: not a binary lesion mask: values -1, 0",
            rows=_replace("lesion_mask", lambda row: mask_with(row, lambda m: -1.0 * m))),
    Crafted("NaN in mask", "lesion_mask: not a binary lesion mask: values 0, 1, nan",
            rows=_replace("lesion_mask", lambda row: mask_with(row, lambda m: np.where(np.roll(m, 2, 0), np.nan, m * 1.0)))),
    Crafted("a DWI given as the mask", "lesion_mask: not a binary lesion mask: values [-0-9.e]+, .* and [0-9]+ more",
            rows=lambda row: [{**row, "lesion_mask": volume_with(row, "dwi", lambda v: v)}]),
    # odd but valid: accepted
    Crafted("NIfTI-2 images", "", refused=False,
            rows=lambda row: [{**row, **{c: nifti2_cell(row, c) for c in ("dwi", "adc", "lesion_mask")}}]),
    Crafted("trailing singleton axis", "", refused=False,
            rows=_replace("dwi", lambda row: patched(row, "dwi", DIM, "<5h", 4, 48, 48, 16, 1))),
    Crafted("uncompressed .nii cells", "", refused=False,
            rows=lambda row: [{**row, **{c: cell(row, c, bytes(raw_nifti(row[c]))) for c in ("dwi", "adc", "lesion_mask")}}]),
    Crafted("mask 0/255 uint8", "", refused=False,
            rows=_replace("lesion_mask", lambda row: mask_with(row, lambda m: m * 255, dtype=np.uint8))),
    Crafted("NaN and inf voxels in DWI", "", refused=False,
            rows=_replace("dwi", lambda row: volume_with(row, "dwi", _poison))),
)

NONFINITE_DWI = 7  # voxels _poison makes non-finite


def _poison(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    flat[[0, 5, 9, 100, 200, 300, 400]] = [np.nan, np.inf, -np.inf, np.nan, np.nan, np.inf, np.nan]
    return values


def case_for(index: int) -> str:
    """Each kind gets its own case id (shard), from the 11th on."""
    return CASE_IDS[10 + index]


def write_kind(repo: Path, index: int, crafted: Crafted) -> str:
    """Write the kind's shard into ``repo``; return its case id."""
    case_id = case_for(index)
    target = repo / shard_path(case_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    if crafted.raw is not None:
        target.write_bytes(crafted.raw(case_id))
    elif crafted.table is not None:
        write_table(target, crafted.table(case_id), **(crafted.options or {}))
    else:
        rows = crafted.rows(good_row(case_id))  # type: ignore[misc]
        write_table(target, row_table(rows) if rows else row_table([good_row(case_id)]).slice(0, 0))
    return case_id
