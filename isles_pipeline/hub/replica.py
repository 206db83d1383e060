"""A synthetic replica of the ISLES'24 dataset repo: the real layout, schema and metadata.

``build_replica`` writes ``OUT/data/train-{i:05d}-of-00149.parquet`` (i = the case's index in the
full catalogue), one row per shard with every column of the real dataset in file order, plus a
dataset card (``README.md``) and a manifest (``replica.json``) with the truth per case. DWI, ADC
and the lesion mask are phantoms (``hub.phantom``); NCCT, CTA and the perfusion maps (Tmax, MTT,
CBF, CBV) are plausible acute-CT stand-ins on the same grid (:func:`ct_images`); the vessel masks
are small valid NIfTIs; ``ctp`` is a large incompressible 4-D ``.nii.gz`` sitting where the real one does
(between ``cta`` and ``tmax``), so that reading the wrong columns shows in the bytes transferred.

``write_shard``/``write_rows`` write arbitrary column values with the real schema, and the
``*_cell`` helpers make broken values, so tests can build bad shards on purpose.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from isles_pipeline import nifti
from isles_pipeline.catalogue import (
    ALL_COLUMNS,
    CASE_IDS,
    CLINICAL_FLOAT_COLUMNS,
    DEFAULT_REPO_ID,
    NIFTI_COLUMNS,
    NUM_SHARDS,
    REPLICA_KEY,
    shard_index,
    shard_path,
)
from isles_pipeline.hub.phantom import (
    GridSpec,
    PhantomCase,
    case_number,
    case_rng,
    grid_spec,
    make_case,
    nifti_image,
)
from isles_pipeline.hub.repo import file_sha256
from isles_pipeline.store import TMP_MARK

log = logging.getLogger(__name__)

NIFTI_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MANIFEST_NAME = "replica.json"
MANIFEST_FORMAT = "isles24-replica/1"
MB = 1_000_000  # ctp_mb counts decimal megabytes
PERFUSION_COLUMNS: tuple[str, ...] = ("ctp", "tmax", "mtt", "cbf", "cbv")
VESSEL_COLUMNS: tuple[str, ...] = ("lvo_mask", "cow_segmentation")
_GZIP_LEVEL = 1  # noisy volumes barely compress better at 9, which is ~8x slower
# gzip member header: deflate, no flags, mtime 0, no extra flags, OS unknown (reproducible bytes).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_STORED_BLOCK = 65535  # largest deflate stored block
_CTP_FRAME = (64, 64)  # in-plane shape of the ctp volume; slices and time points absorb the size
_CTP_MIN_BYTES = 10_000

# BIDS-like base names, as the uploader stored them in the struct's `path`.
_FILE_SUFFIX = {
    "ncct": "ses-01_ncct", "cta": "ses-01_cta", "ctp": "ses-01_ctp",
    "tmax": "ses-01_space-ncct_tmax", "mtt": "ses-01_space-ncct_mtt",
    "cbf": "ses-01_space-ncct_cbf", "cbv": "ses-01_space-ncct_cbv",
    "dwi": "ses-02_space-ncct_dwi", "adc": "ses-02_space-ncct_adc",
    "lesion_mask": "ses-02_space-ncct_lesion-msk",
    "lvo_mask": "ses-01_space-ncct_lvo-msk", "cow_segmentation": "ses-01_space-ncct_cow-msk",
}


# ---------------------------------------------------------------- schema


def hf_features() -> dict[str, dict[str, str]]:
    """The ``datasets`` feature spec of the real dataset, in column order."""
    features: dict[str, dict[str, str]] = {}
    for column in ALL_COLUMNS:
        if column in NIFTI_COLUMNS:
            features[column] = {"_type": "Nifti"}
        elif column in CLINICAL_FLOAT_COLUMNS:
            features[column] = {"_type": "Value", "dtype": "float32"}
        else:
            features[column] = {"_type": "Value", "dtype": "string"}
    return features


def shard_schema(replica: Mapping[str, object] | None = None) -> pa.Schema:
    """The real shard schema: ALL_COLUMNS in order, with the ``huggingface`` metadata key; and the
    ``REPLICA_KEY`` key saying the shard is synthetic (``replica``: what built it, e.g. the grid),
    which a reader records with the case so that a report can say so."""
    fields = []
    for column in ALL_COLUMNS:
        if column in NIFTI_COLUMNS:
            fields.append(pa.field(column, NIFTI_TYPE))
        elif column in CLINICAL_FLOAT_COLUMNS:
            fields.append(pa.field(column, pa.float32()))
        else:
            fields.append(pa.field(column, pa.string()))
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features()}}),
                REPLICA_KEY: json.dumps({"synthetic": True, **(replica or {})})}
    return pa.schema(fields, metadata=metadata)


# ---------------------------------------------------------------- writing shards


def _nifti_array(value: object, column: str) -> pa.Array:
    """A one-row struct<bytes, path> array; the bytes are wrapped, not copied (ctp may be 300 MB)."""
    if value is None:
        return pa.array([None], type=NIFTI_TYPE)
    if not isinstance(value, Mapping) or set(value) != {"bytes", "path"}:
        raise TypeError(f"column {column!r}: a NIfTI cell is None or a dict with keys 'bytes' and 'path', got {value!r:.80}")
    data = value["bytes"]
    if data is None:
        bytes_array = pa.array([None], type=pa.binary())
    else:
        buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
        offsets = pa.py_buffer(np.array([0, buffer.size], dtype=np.int32))
        bytes_array = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, buffer])
    path_array = pa.array([value["path"]], type=pa.string())
    return pa.StructArray.from_arrays([bytes_array, path_array], fields=list(NIFTI_TYPE))


def _cell_array(value: object, field: pa.Field) -> pa.Array:
    if field.type == NIFTI_TYPE:
        return _nifti_array(value, field.name)
    try:
        return pa.array([value], type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TypeError(f"column {field.name!r}: {value!r:.80} is not a {field.type}") from exc


def rows_table(rows: Sequence[Mapping[str, object]], schema: pa.Schema | None = None) -> pa.Table:
    """A table of ``rows`` (dicts with exactly the schema's columns) without copying NIfTI bytes."""
    schema = shard_schema() if schema is None else schema
    for n, row in enumerate(rows):
        missing = [c for c in schema.names if c not in row]
        extra = [c for c in row if c not in schema.names]
        if missing or extra:
            raise ValueError(f"row {n}: missing columns {missing}, unexpected columns {extra}")
    columns = [pa.chunked_array([_cell_array(row[f.name], f) for row in rows], type=f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def write_rows(path: str | os.PathLike[str], rows: Sequence[Mapping[str, object]], schema: pa.Schema | None = None) -> Path:
    """Write ``rows`` as one parquet file with plain ``pq.write_table`` defaults (snappy, one row
    group), atomically: a reader never sees a half-written shard."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = rows_table(rows, schema)
    partial = path.with_name(f"{path.name}{TMP_MARK}partial")  # a server scanning the folder skips it
    try:
        pq.write_table(table, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_shard(path: str | os.PathLike[str], row: Mapping[str, object], schema: pa.Schema | None = None) -> Path:
    """Write one shard holding ``row`` (any values, good or bad) with the real schema."""
    return write_rows(path, [row], schema)


# ---------------------------------------------------------------- cells


def nifti_filename(case_id: str, column: str) -> str:
    """The BIDS-like base name stored in a NIfTI cell's ``path``."""
    return f"{case_id}_{_FILE_SUFFIX[column]}.nii.gz"


def encode_fast(image: nib.Nifti1Image) -> bytes:
    """``.nii.gz`` bytes at gzip level 1 with a fixed header (mtime 0, OS unknown): deterministic,
    and far faster than ``nifti.encode`` (level 9) on noisy volumes for almost the same size."""
    raw = image.to_bytes()
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate
    body = compressor.compress(raw) + compressor.flush()
    return _GZIP_HEADER + body + struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF)


def nifti_cell(image: nib.Nifti1Image, path: str) -> dict[str, object]:
    """A NIfTI column value: ``{"bytes": .nii.gz, "path": base name}``."""
    return {"bytes": encode_fast(image), "path": path}


def decode_cell(cell: Mapping[str, object]) -> nib.Nifti1Image:
    """The image in a NIfTI cell (its path names it in errors)."""
    return nifti.decode(bytes(cell["bytes"]), cell["path"])


def garbage_cell(path: str = "garbage.nii.gz", size: int = 4096, gzip_magic: bool = False) -> dict[str, object]:
    """Deterministic bytes that are no NIfTI (optionally starting with the gzip magic)."""
    junk = np.random.default_rng(size).bytes(size)
    return {"bytes": (nifti.GZIP_MAGIC + junk[2:]) if gzip_magic else junk, "path": path}


def cropped_cell(cell: Mapping[str, object], voxels: int = 2) -> dict[str, object]:
    """The same image with ``voxels`` slices cut off the end of the last axis (shape differs)."""
    image = decode_cell(cell)
    data = np.asanyarray(image.dataobj)[..., :-voxels]
    return nifti_cell(nifti_image(data, image.affine), str(cell["path"]))


def shifted_cell(cell: Mapping[str, object], shift_mm: float = 5.0) -> dict[str, object]:
    """The same voxels with the affine moved ``shift_mm`` along world x (affine differs)."""
    image = decode_cell(cell)
    affine = image.affine.copy()
    affine[0, 3] += shift_mm
    return nifti_cell(nifti_image(np.asanyarray(image.dataobj), affine), str(cell["path"]))


def four_d_cell(cell: Mapping[str, object], frames: int = 2) -> dict[str, object]:
    """The image repeated along a 4th axis (a 4-D volume where 3-D is expected)."""
    image = decode_cell(cell)
    data = np.repeat(np.asanyarray(image.dataobj)[..., None], frames, axis=-1)
    return nifti_cell(nifti_image(data, image.affine), str(cell["path"]))


# ---------------------------------------------------------------- ctp: large incompressible bytes


def _ctp_layout(total: int) -> tuple[int, tuple[int, int, int, int], int]:
    """Payload (uncompressed NIfTI) size, 4-D shape and extension size giving a stored-block
    gzip file of ``total`` bytes (to within 32 bytes)."""
    blocks = math.ceil((total - 18) / (_STORED_BLOCK + 5))
    payload = total - 18 - 5 * blocks  # gzip header+trailer 18 bytes, 5 bytes per stored block
    voxels = (payload - 352) // 2
    frame = _CTP_FRAME[0] * _CTP_FRAME[1]
    frames = max(1, min(48, voxels // (frame * 16)))
    slices = voxels // (frame * frames)
    if slices < 1:
        raise ValueError(f"ctp_mb must be at least {_CTP_MIN_BYTES / MB} (room for one 64x64 slice)")
    shape = (*_CTP_FRAME, slices, frames)
    extension = (payload - 352 - 2 * frame * slices * frames) // 16 * 16
    extension = extension if extension >= 16 else 0
    return 352 + extension + 2 * frame * slices * frames, shape, extension


def _ctp_header(shape: tuple[int, int, int, int], extension: int, rng: np.random.Generator) -> bytes:
    """A 4-D int16 NIfTI header; an extension of random bytes pads the file to the exact size."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_zooms((3.4, 3.4, 10.0, 1.8))
    header.set_xyzt_units("mm", "sec")
    if extension:
        header.extensions.append(nib.nifti1.Nifti1Extension(0, rng.bytes(extension - 8)))
    out = io.BytesIO()
    header.write_to(out)
    return out.getvalue()


def _payload_blocks(prefix: bytes, size: int, rng: np.random.Generator) -> Iterator[bytes]:
    """``size`` bytes, ``prefix`` then random, in deflate stored-block sized pieces."""
    position = 0
    while position < size:
        n = min(_STORED_BLOCK, size - position)
        head = prefix[position:position + n]
        yield head + rng.bytes(n - len(head))
        position += n


def _ctp_total_bytes(ctp_mb: float) -> int:
    """The ctp file size for ``ctp_mb``, refused below the smallest size a ctp can have."""
    total = round(ctp_mb * MB)
    if total < _CTP_MIN_BYTES:
        raise ValueError(f"ctp_mb must be at least {_CTP_MIN_BYTES / MB}, got {ctp_mb}")
    return total


def ctp_bytes(case_id: str, ctp_mb: float, seed: int = 0) -> np.ndarray:
    """A valid 4-D ``.nii.gz`` of ``ctp_mb`` MB of random int16 voxels (incompressible: gzip with
    stored blocks), deterministic per (case, seed). Returned as one uint8 array written in place,
    so a 300 MB ctp is held in memory once."""
    payload, shape, extension = _ctp_layout(_ctp_total_bytes(ctp_mb))
    rng = case_rng(case_id, seed, "ctp")
    header = _ctp_header(shape, extension, rng)
    blocks = math.ceil(payload / _STORED_BLOCK)
    out = np.empty(18 + 5 * blocks + payload, dtype=np.uint8)
    out[:10] = np.frombuffer(_GZIP_HEADER, dtype=np.uint8)
    position, crc = 10, 0
    for n, block in enumerate(_payload_blocks(header, payload, rng)):
        final = 1 if n == blocks - 1 else 0
        out[position:position + 5] = np.frombuffer(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF), dtype=np.uint8)
        out[position + 5:position + 5 + len(block)] = np.frombuffer(block, dtype=np.uint8)
        crc = zlib.crc32(block, crc)
        position += 5 + len(block)
    out[position:] = np.frombuffer(struct.pack("<II", crc, payload & 0xFFFFFFFF), dtype=np.uint8)
    return out


# ---------------------------------------------------------------- the good row of a case


def missing_modalities(case_id: str) -> tuple[str, ...]:
    """Columns that are null for this case, deterministic by catalogue index: CT perfusion in
    about 1 of 16 cases, the vessel masks in 1 of 3 (the uploader expected ~140 and ~100 of 149)."""
    number = case_number(case_id)
    missing: tuple[str, ...] = ()
    if number % 16 == 7:
        missing += PERFUSION_COLUMNS
    if number % 3 == 2:
        missing += VESSEL_COLUMNS
    return missing


def clinical_values(case_id: str, seed: int = 0) -> dict[str, object]:
    """Plausible clinical values with deterministic nulls (some in every block of a dozen cases)."""
    rng = case_rng(case_id, seed, "clinical")
    number = case_number(case_id)
    values: dict[str, object] = {
        "age": float(np.float32(round(rng.uniform(38.0, 92.0)))),
        "nihss_admission": float(rng.integers(0, 31)),
        "mrs_admission": float(rng.integers(0, 6)),
        "mrs_3month": float(rng.integers(0, 7)),
        "sex": str(rng.choice(["M", "F"])),
    }
    nulls = {"age": number % 11 == 5, "sex": number % 11 == 5, "nihss_admission": number % 9 == 1,
             "mrs_admission": number % 6 == 4, "mrs_3month": number % 5 == 3}
    return {column: None if nulls[column] else value for column, value in values.items()}


def _box_mean(volume: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^3 box (edges clamped): a cheap blur, separable, by cumulative sums."""
    out = volume.astype(np.float32)
    for axis in range(3):
        padded = np.pad(out, [(radius + 1, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        sums = np.cumsum(padded, axis=axis, dtype=np.float64)
        upper = np.take(sums, range(2 * radius + 1, sums.shape[axis]), axis=axis)
        lower = np.take(sums, range(0, sums.shape[axis] - 2 * radius - 1), axis=axis)
        out = ((upper - lower) / (2 * radius + 1)).astype(np.float32)
    return out


def _rounded(values: np.ndarray, step: float) -> np.ndarray:
    """Values rounded to ``step`` (maps are stored at the precision scanners report; it also lets
    gzip compress them)."""
    return (np.rint(values / step) * step).astype(np.float32)


def ct_images(case: PhantomCase) -> dict[str, nib.Nifti1Image]:
    """Acute CT stand-ins on the case's grid (in ISLES'24 every map lies on the NCCT grid):
    NCCT and CTA in HU, and perfusion maps with a deficit around the final infarct: Tmax and MTT
    (s) raised, CBF (ml/100 g/min) lowered, CBV (ml/100 g) lowered in the core and kept or raised
    in the penumbra, as CT perfusion shows an acute stroke."""
    rng = case_rng(case.case_id, case.seed, "ct")
    head = np.asarray(case.adc.dataobj) != 0  # the scanner zeroes the ADC in air
    brain = case.brain_mask
    core = nifti.as_mask(case.lesion_mask)
    # The hypoperfused region reaches ~10 mm beyond the infarct that it becomes.
    radius = max(1, int(round(10.0 / float(np.mean(case.grid.voxel_mm)))))
    penumbra = (_box_mean(core, radius) > 0.02) & brain & ~core
    shape = case.grid.shape

    def noisy(inside: float, sigma: float) -> np.ndarray:
        return inside + sigma * rng.standard_normal(shape, dtype=np.float32)

    skull = head & ~brain
    ncct = np.where(brain, noisy(35.0, 4.0) - 7.0 * core, -1000.0)
    ncct = np.where(skull, 700.0, ncct)
    cta = np.where(brain, noisy(45.0, 6.0) - 10.0 * core, -1000.0)
    cta = np.where(skull, 700.0, cta)

    def perfusion(normal: float, in_penumbra: float, in_core: float, sigma: float, step: float) -> np.ndarray:
        value = np.where(core, in_core, np.where(penumbra, in_penumbra, normal)).astype(np.float32)
        return _rounded(np.clip(noisy(0.0, sigma) + value, 0.0, None) * brain, step)

    maps = {
        "ncct": np.rint(ncct).astype(np.int16),
        "cta": np.rint(cta).astype(np.int16),
        "tmax": perfusion(1.0, 7.0, 11.0, 0.4, 0.1),
        "mtt": perfusion(4.0, 7.5, 10.0, 0.5, 0.1),
        "cbf": perfusion(50.0, 28.0, 10.0, 4.0, 1.0),
        "cbv": perfusion(4.0, 4.4, 1.5, 0.3, 0.1),
    }
    return {column: nifti_image(data, case.affine) for column, data in maps.items()}


def _vessel_images(case: PhantomCase) -> dict[str, nib.Nifti1Image]:
    """Cheap valid stand-ins for the vessel masks: the lesion and brain sampled on a coarse grid
    with the same field of view and orientation."""
    shape = case.grid.shape
    step = (max(1, shape[0] // 32), max(1, shape[1] // 32), max(1, shape[2] // 8))
    affine = case.affine @ np.diag([*step, 1.0])
    brain = case.brain_mask[::step[0], ::step[1], ::step[2]]
    lesion = nifti.as_mask(case.lesion_mask)[::step[0], ::step[1], ::step[2]]
    labels = (np.indices(brain.shape).sum(axis=0) % 4).astype(np.uint8) * brain
    volumes = {"lvo_mask": lesion.astype(np.uint8), "cow_segmentation": labels}
    return {column: nifti_image(data, affine) for column, data in volumes.items()}


def phantom_row(case: PhantomCase, *, ctp_mb: float = 20) -> dict[str, object]:
    """The good row of a generated case: every column of the real schema."""
    missing = set(missing_modalities(case.case_id))
    images = {**ct_images(case), **_vessel_images(case), **case.images}
    row: dict[str, object] = {"subject_id": case.case_id}
    for column in NIFTI_COLUMNS:
        if column in missing:
            row[column] = None
        elif column == "ctp":
            row[column] = {"bytes": ctp_bytes(case.case_id, ctp_mb, case.seed), "path": nifti_filename(case.case_id, column)}
        else:
            row[column] = nifti_cell(images[column], nifti_filename(case.case_id, column))
    row.update(clinical_values(case.case_id, case.seed))
    return row


def case_row(case_id: str, *, grid: str | GridSpec = "demo", seed: int = 0, ctp_mb: float = 20, adc_units: str | None = None) -> dict[str, object]:
    """The good row of ``case_id`` (to write as is, or to alter into a bad one)."""
    return phantom_row(make_case(case_id, grid, seed, adc_units=adc_units), ctp_mb=ctp_mb)


# ---------------------------------------------------------------- the replica


def parse_case_selection(cases: int | None, case_ids: Sequence[str] | None) -> list[str]:
    """The first ``cases`` ids of the catalogue, or the explicit ``case_ids`` (validated, in
    catalogue order), or all 149 when neither is given."""
    if cases is not None and case_ids is not None:
        raise ValueError("give either a number of cases or explicit case ids, not both")
    if case_ids is not None:
        if not case_ids:
            raise ValueError("no case ids given")
        duplicates = sorted(c for c, n in Counter(case_ids).items() if n > 1)
        if duplicates:
            raise ValueError(f"case ids given more than once: {duplicates}")
        return sorted(case_ids, key=shard_index)  # shard_index raises UnknownCaseError
    if cases is None:
        return list(CASE_IDS)
    if not 1 <= cases <= NUM_SHARDS:
        raise ValueError(f"number of cases must be between 1 and {NUM_SHARDS}, got {cases}")
    return list(CASE_IDS[:cases])


def _check_output_folder(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not a replica (never clobber user data)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"replica output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{out} is not empty and holds no {MANIFEST_NAME}: refusing to write a replica into it")


def _remove_stale_shards(out: Path, keep: set[str]) -> None:
    """Delete shards of an earlier build that are not in this selection (manifest = folder)."""
    for path in (out / "data").glob(f"train-*-of-{NUM_SHARDS:05d}.parquet"):
        if path.relative_to(out).as_posix() not in keep:
            path.unlink()


def _dataset_card(manifest: Mapping[str, object]) -> str:
    grid = manifest["grid"]
    return f"""---
license: other
pretty_name: ISLES'24 synthetic replica
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# Synthetic replica of `{DEFAULT_REPO_ID}`

**Synthetic data: no patient data.** Written by `isles_pipeline.hub.replica` with the layout,
parquet schema and `huggingface` feature metadata of the real ISLES'24 dataset, for tests,
benchmarks, demos and air-gapped sites.

- {len(manifest["case_ids"])} of {NUM_SHARDS} shards, one row per shard, shard names as in the real repo.
- `dwi`, `adc`, `lesion_mask`: deterministic head phantoms on the `{grid["name"]}` grid
  ({" x ".join(map(str, grid["shape"]))} voxels of {" x ".join(map(str, grid["voxel_mm"]))} mm), seed {manifest["seed"]}.
- `ctp`: {manifest["ctp_mb"]} MB of random 4-D int16 voxels; other modalities are small stand-ins.
- `{MANIFEST_NAME}` lists the true lesion volume (ml) and the file format of every case.
"""


def build_replica(
    out: Path,
    case_ids: Sequence[str],
    *,
    grid: str | GridSpec = "demo",
    ctp_mb: float = 20,
    seed: int = 0,
    adc_units: str | None = None,
) -> dict[str, object]:
    """Write a replica dataset repo for ``case_ids`` into ``out`` and return its manifest."""
    out = Path(out)
    selected = parse_case_selection(None, list(case_ids))
    spec = grid_spec(grid)
    _ctp_total_bytes(ctp_mb)  # refuse a bad size before any shard is written
    _check_output_folder(out)
    cases: dict[str, dict[str, object]] = {}
    for case_id in selected:
        case = make_case(case_id, spec, seed, adc_units=adc_units)  # validates adc_units before any write
        shard = shard_path(case_id)
        path = write_shard(out / shard, phantom_row(case, ctp_mb=ctp_mb), schema=shard_schema({"grid": spec.name, "seed": seed}))
        cases[case_id] = {
            "shard": shard,
            "lesion_ml": round(case.lesion_ml, 4),
            "lesion_count": len(case.anatomy.lesions),
            "adc_units": case.format.adc_units,
            "orientation": case.format.orientation,
            "mask_scaled": case.format.mask_scaled,
            "missing": list(missing_modalities(case_id)),
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),  # also spares a server in this process from hashing it again
        }
        log.info("replica: wrote %s (%s, %.1f MB)", shard, case_id, cases[case_id]["bytes"] / MB)
    _remove_stale_shards(out, {entry["shard"] for entry in cases.values()})
    manifest: dict[str, object] = {
        "format": MANIFEST_FORMAT, "repo_id": DEFAULT_REPO_ID, "case_ids": selected,
        "grid": spec.as_dict(), "seed": seed, "ctp_mb": ctp_mb, "adc_units": adc_units, "cases": cases,
    }
    (out / "README.md").write_text(_dataset_card(manifest))
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(out: Path) -> dict[str, object]:
    """The manifest of a replica folder."""
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not a replica: no {MANIFEST_NAME}")
    return json.loads(path.read_text())


__all__ = [
    "NIFTI_TYPE", "build_replica", "case_row", "clinical_values", "cropped_cell",
    "ctp_bytes", "decode_cell", "encode_fast", "four_d_cell", "garbage_cell", "hf_features",
    "load_manifest", "missing_modalities", "nifti_cell", "nifti_filename", "parse_case_selection",
    "phantom_row", "rows_table", "shard_schema", "shifted_cell", "write_rows", "write_shard",
]
