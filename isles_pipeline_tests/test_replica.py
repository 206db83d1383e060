"""The synthetic phantoms (hub.phantom) and the ISLES'24 replica builder (hub.replica)."""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from isles_pipeline import nifti
from isles_pipeline.catalogue import ALL_COLUMNS, CASE_IDS, CLINICAL_FLOAT_COLUMNS, NIFTI_COLUMNS, UnknownCaseError
from isles_pipeline.hub import phantom, replica

FIRST8 = list(CASE_IDS[:8])
CTP_MB = 0.5


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_row(path: Path) -> dict[str, object]:
    table = pq.read_table(path)
    assert table.num_rows == 1
    return table.to_pylist()[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("replica") / "repo"
    manifest = replica.build_replica(out, FIRST8, grid="tiny", ctp_mb=CTP_MB, seed=0)
    return out, manifest


# ---------------------------------------------------------------- shards: layout and schema


def test_shards_are_named_by_catalogue_index(built):
    out, manifest = built
    names = sorted(p.name for p in (out / "data").iterdir())
    assert names == [f"train-{i:05d}-of-00149.parquet" for i in range(8)]
    assert manifest["cases"]["sub-stroke0008"]["shard"] == "data/train-00007-of-00149.parquet"


def test_last_catalogue_case_gets_shard_148(tmp_path):
    replica.build_replica(tmp_path / "r", ["sub-stroke0189"], grid="tiny", ctp_mb=0.02)
    assert [p.name for p in (tmp_path / "r" / "data").iterdir()] == ["train-00148-of-00149.parquet"]
    assert read_row(tmp_path / "r" / "data" / "train-00148-of-00149.parquet")["subject_id"] == "sub-stroke0189"


def test_schema_column_order_types_and_metadata(built):
    out, _ = built
    file = pq.ParquetFile(out / "data" / "train-00000-of-00149.parquet")
    schema = file.schema_arrow
    assert tuple(schema.names) == ALL_COLUMNS
    nifti_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for name in NIFTI_COLUMNS:
        assert schema.field(name).type == nifti_type
    for name in CLINICAL_FLOAT_COLUMNS:
        assert schema.field(name).type == pa.float32()
    assert schema.field("subject_id").type == pa.string() and schema.field("sex").type == pa.string()
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert list(features) == list(ALL_COLUMNS)
    assert features["subject_id"] == {"_type": "Value", "dtype": "string"}
    assert features["dwi"] == {"_type": "Nifti"}
    assert features["age"] == {"_type": "Value", "dtype": "float32"}
    assert features["sex"] == {"_type": "Value", "dtype": "string"}


def test_one_row_one_row_group_snappy(built):
    out, _ = built
    metadata = pq.ParquetFile(out / "data" / "train-00003-of-00149.parquet").metadata
    assert (metadata.num_rows, metadata.num_row_groups) == (1, 1)
    assert {metadata.row_group(0).column(i).compression for i in range(metadata.num_columns)} == {"SNAPPY"}


def test_ctp_chunk_lies_between_cta_and_tmax_and_dominates(built):
    out, _ = built
    group = pq.ParquetFile(out / "data" / "train-00000-of-00149.parquet").metadata.row_group(0)
    chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    start = {path: min(c.dictionary_page_offset or c.data_page_offset, c.data_page_offset) for path, c in chunks.items()}
    assert start["cta.bytes"] < start["ctp.bytes"] < start["tmax.bytes"]
    assert start["dwi.bytes"] < start["adc.bytes"] < start["lesion_mask.bytes"]
    assert chunks["ctp.bytes"].total_compressed_size > 0.9 * CTP_MB * replica.MB


# ---------------------------------------------------------------- determinism


def test_same_case_gives_byte_identical_shards(built, tmp_path):
    out, manifest = built
    again = replica.build_replica(tmp_path / "again", FIRST8[:2], grid="tiny", ctp_mb=CTP_MB, seed=0)
    for case_id in FIRST8[:2]:
        shard = manifest["cases"][case_id]["shard"]
        assert sha256(tmp_path / "again" / shard) == sha256(out / shard) == manifest["cases"][case_id]["sha256"]
        assert again["cases"][case_id]["sha256"] == manifest["cases"][case_id]["sha256"]


def test_cases_and_seeds_differ():
    first = replica.case_row("sub-stroke0002", grid="tiny", ctp_mb=0.02)
    other_case = replica.case_row("sub-stroke0003", grid="tiny", ctp_mb=0.02)
    other_seed = replica.case_row("sub-stroke0002", grid="tiny", ctp_mb=0.02, seed=1)
    for column in ("dwi", "adc", "ctp"):
        assert bytes(first[column]["bytes"]) != bytes(other_case[column]["bytes"])
        assert bytes(first[column]["bytes"]) != bytes(other_seed[column]["bytes"])


def test_stable_seed_is_pinned():
    # A sha256-derived seed, unlike hash(): the same number in every process and on every machine.
    assert phantom.stable_seed("isles", 0, "sub-stroke0001") == 7643217947381156961


def test_ctp_bytes_are_pinned():
    ctp = replica.ctp_bytes("sub-stroke0001", 0.05, seed=0)
    assert hashlib.sha256(ctp.tobytes()).hexdigest() == "e94e158563138241d43eb36877b48fb53299e4ddd8fa13b7f4b123b3b5fd96d9"


# ---------------------------------------------------------------- images


def test_every_image_decodes_with_bids_names(built):
    out, manifest = built
    for case_id in FIRST8:
        row = read_row(out / manifest["cases"][case_id]["shard"])
        assert row["subject_id"] == case_id
        for column in NIFTI_COLUMNS:
            if row[column] is None:
                continue
            if column == "ctp":  # a 4-D time series no model reads: outside the contract, read by nibabel
                image = nib.Nifti1Image.from_bytes(gzip.decompress(row[column]["bytes"]))
            else:
                image = nifti.decode(row[column]["bytes"], column)
            assert len(image.shape) == (4 if column == "ctp" else 3)
            assert row[column]["path"] == replica.nifti_filename(case_id, column)
        images = {c: nifti.decode(row[c]["bytes"], c) for c in ("dwi", "adc", "lesion_mask")}
        grid = nifti.check_same_grid(images)
        assert grid.shape == (48, 48, 16)
        assert images["dwi"].get_data_dtype() == np.int16
        assert images["adc"].get_data_dtype() == np.float32
    assert replica.nifti_filename("sub-stroke0001", "dwi") == "sub-stroke0001_ses-02_space-ncct_dwi.nii.gz"


def test_grid_presets():
    assert phantom.GRIDS["real"].shape == (512, 512, 80) and phantom.GRIDS["real"].voxel_mm == (0.43, 0.43, 2.0)
    assert phantom.GRIDS["demo"].shape == (192, 192, 40)
    case = phantom.make_case("sub-stroke0005", "tiny")
    assert case.dwi.shape == case.adc.shape == case.lesion_mask.shape == case.brain_mask.shape == (48, 48, 16)
    assert nifti.grid_of(case.dwi).voxel_size_mm == pytest.approx((4.6, 4.6, 8.0))
    with pytest.raises(ValueError, match="unknown grid"):
        phantom.make_case("sub-stroke0005", "huge")


def test_scaled_mask_reads_as_the_same_binary_mask():
    plain = phantom.make_case("sub-stroke0002", "tiny", mask_scaled=False)
    scaled = phantom.make_case("sub-stroke0002", "tiny", mask_scaled=True)
    decoded = nifti.decode(replica.encode_fast(scaled.lesion_mask))
    assert decoded.get_data_dtype() == np.uint16
    assert set(np.unique(decoded.dataobj.get_unscaled())) == {0, 65535}
    assert decoded.dataobj.slope == pytest.approx(1 / 65535)
    assert np.array_equal(nifti.as_mask(decoded), nifti.as_mask(plain.lesion_mask))
    assert nifti.as_mask(decoded).sum() > 0
    plain_decoded = nifti.decode(replica.encode_fast(plain.lesion_mask))
    assert plain_decoded.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(plain_decoded.dataobj))) == {0, 1}


def test_default_mix_has_oblique_lps_scaled_masks_and_micro_units():
    formats = [phantom.default_format(case_id) for case_id in FIRST8]
    assert [f.orientation for f in formats] == ["LAS", "LPS", "RAS", "oblique"] * 2
    assert any(f.mask_scaled for f in formats)
    assert any(f.adc_units == "1e-6" for f in formats)
    oblique = phantom.make_case("sub-stroke0004", "tiny")
    direction = oblique.affine[:3, :3] / np.asarray(oblique.grid.voxel_mm)
    off_diagonal = np.abs(direction - np.diag(np.diag(direction))).max()
    assert np.sin(np.radians(2)) < off_diagonal < np.sin(np.radians(16))


def test_orientation_changes_the_array_not_the_head():
    ras = phantom.make_case("sub-stroke0006", "tiny", orientation="RAS")
    lps = phantom.make_case("sub-stroke0006", "tiny", orientation="LPS")
    oblique = phantom.make_case("sub-stroke0006", "tiny", orientation="oblique")
    flipped = nifti.as_mask(lps.lesion_mask)[::-1, ::-1, :]
    agreement = (flipped == nifti.as_mask(ras.lesion_mask)).mean()
    assert agreement > 0.999
    assert lps.lesion_ml == pytest.approx(ras.lesion_ml, rel=0.02)
    assert oblique.lesion_ml == pytest.approx(ras.lesion_ml, rel=0.25)


def test_adc_units_scale_by_1000():
    milli = phantom.make_case("sub-stroke0003", "tiny", adc_units="1e-3")
    micro = phantom.make_case("sub-stroke0003", "tiny", adc_units="1e-6")
    np.testing.assert_allclose(nifti.as_float32(micro.adc), 1000 * nifti.as_float32(milli.adc), rtol=1e-6)
    brain = milli.brain_mask
    assert 0.7 < np.median(nifti.as_float32(milli.adc)[brain]) < 0.95
    with pytest.raises(ValueError, match="adc_units"):
        phantom.make_case("sub-stroke0003", "tiny", adc_units="mm2/s")


# ---------------------------------------------------------------- lesions


@pytest.fixture(scope="module")
def demo_cases() -> list[phantom.PhantomCase]:
    return [phantom.make_case(case_id, "demo", adc_units="1e-3") for case_id in FIRST8]


def test_lesions_are_dwi_bright_and_adc_dark(demo_cases):
    lesion_adc = []
    for case in demo_cases:
        dwi, lesion = nifti.as_float32(case.dwi), nifti.as_mask(case.lesion_mask)
        assert np.median(dwi[lesion]) > 1.5 * np.median(dwi[case.brain_mask]), case.case_id
        lesion_adc.append(nifti.as_float32(case.adc)[lesion])
        assert lesion.sum() * case.grid.voxel_ml == pytest.approx(case.lesion_ml)
    assert np.median(np.concatenate(lesion_adc)) < 0.6


def test_lesion_volumes_are_realistic_and_varied():
    cases = [phantom.make_case(case_id, "tiny") for case_id in CASE_IDS[:24]]
    volumes = [case.lesion_ml for case in cases]
    assert all(0.5 <= v <= 80 for v in volumes), volumes
    assert min(volumes) < 5 and max(volumes) > 25
    counts = {len(case.anatomy.lesions) for case in cases}
    assert {1, 2} <= counts
    assert any(lesion.pseudo_normalised for case in cases for lesion in case.anatomy.lesions)


def _rule_dice(case: phantom.PhantomCase) -> float:
    """segmentation.md's weight-free rule (on the phantom's true brain mask), scored by Dice."""
    dwi, adc = nifti.as_float32(case.dwi), nifti.as_float32(case.adc)
    truth = nifti.as_mask(case.lesion_mask)
    brain = ndimage.binary_erosion(case.brain_mask, structure=np.ones((5, 5, 1)))  # 2 voxels in-plane
    candidate = brain & (adc > 0.1) & (adc < 0.62) & (dwi > 1.4 * np.median(dwi[case.brain_mask]))
    labels, count = ndimage.label(candidate)
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * case.grid.voxel_ml
    predicted = (sizes >= 0.1)[labels] & candidate
    return 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())


def test_rule_segmenter_does_well_but_not_perfectly(demo_cases):
    dice = [_rule_dice(case) for case in demo_cases]
    assert 0.6 < np.mean(dice) < 0.92, dice
    assert max(dice) < 0.99, dice


# ---------------------------------------------------------------- ctp, nulls, clinical


@pytest.mark.parametrize("ctp_mb", [0.02, 0.5, 3.0])
def test_ctp_size_and_incompressibility(ctp_mb):
    ctp = replica.ctp_bytes("sub-stroke0010", ctp_mb)
    assert abs(ctp.nbytes - ctp_mb * replica.MB) <= 0.01 * ctp_mb * replica.MB
    body = ctp.tobytes()[1024:200_000]  # past the NIfTI header, which is mostly zeros
    assert len(zlib.compress(body, 1)) > 0.99 * len(body)
    # a 4-D time series: not a case image the pipeline reads (nifti's contract), so nibabel reads it
    image = nib.Nifti1Image.from_bytes(gzip.decompress(ctp.tobytes()))
    assert image.shape[:2] == (64, 64) and len(image.shape) == 4
    assert np.asanyarray(image.dataobj[..., 0]).dtype == np.int16


def test_ctp_too_small_is_refused():
    with pytest.raises(ValueError, match="ctp_mb"):
        replica.ctp_bytes("sub-stroke0010", 0.001)


def test_ctp_in_shard_has_the_requested_size(built):
    out, _ = built
    row = read_row(out / "data" / "train-00000-of-00149.parquet")
    assert abs(len(row["ctp"]["bytes"]) - CTP_MB * replica.MB) <= 0.01 * CTP_MB * replica.MB


def test_missing_modalities_are_null_structs(built):
    out, manifest = built
    assert manifest["cases"]["sub-stroke0008"]["missing"] == ["ctp", "tmax", "mtt", "cbf", "cbv"]
    assert manifest["cases"]["sub-stroke0003"]["missing"] == ["lvo_mask", "cow_segmentation"]
    assert manifest["cases"]["sub-stroke0001"]["missing"] == []
    for case_id in ("sub-stroke0008", "sub-stroke0003"):
        row = read_row(out / manifest["cases"][case_id]["shard"])
        for column in NIFTI_COLUMNS:
            assert (row[column] is None) == (column in manifest["cases"][case_id]["missing"]), column


def test_clinical_columns_have_values_and_nulls(built):
    out, _ = built
    table = pq.read_table(sorted((out / "data").iterdir()), columns=[*CLINICAL_FLOAT_COLUMNS, "sex"])
    assert table.num_rows == 8
    for column in (*CLINICAL_FLOAT_COLUMNS, "sex"):
        assert 0 < table.column(column).null_count < 8, column
    assert set(table.column("sex").drop_null().to_pylist()) <= {"M", "F"}
    assert 0 <= pa.compute.min(table.column("mrs_3month")).as_py() <= pa.compute.max(table.column("mrs_3month")).as_py() <= 6


# ---------------------------------------------------------------- manifest, card, output folder


def test_manifest_records_truth_per_case(built):
    out, manifest = built
    assert json.loads((out / "replica.json").read_text()) == manifest
    assert manifest["case_ids"] == FIRST8
    assert manifest["grid"] == {"name": "tiny", "shape": [48, 48, 16], "voxel_mm": [4.6, 4.6, 8.0]}
    assert (manifest["seed"], manifest["ctp_mb"]) == (0, CTP_MB)
    entry = manifest["cases"]["sub-stroke0004"]
    assert entry["lesion_ml"] == pytest.approx(phantom.make_case("sub-stroke0004", "tiny").lesion_ml, abs=1e-4)
    assert entry["orientation"] == "oblique"
    assert entry["bytes"] == (out / entry["shard"]).stat().st_size
    assert "synthetic" in (out / "README.md").read_text().lower()


def test_rebuild_drops_shards_outside_the_selection(tmp_path):
    out = tmp_path / "r"
    replica.build_replica(out, FIRST8[:3], grid="tiny", ctp_mb=0.02)
    replica.build_replica(out, FIRST8[1:2], grid="tiny", ctp_mb=0.02)
    assert [p.name for p in (out / "data").iterdir()] == ["train-00001-of-00149.parquet"]
    assert replica.load_manifest(out)["case_ids"] == ["sub-stroke0002"]


def test_refuses_a_non_empty_folder_that_is_no_replica(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="replica.json"):
        replica.build_replica(tmp_path, FIRST8[:1], grid="tiny", ctp_mb=0.02)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_unknown_case_is_refused_before_writing(tmp_path):
    with pytest.raises(UnknownCaseError):
        replica.build_replica(tmp_path / "r", ["sub-stroke0001", "sub-stroke0018"], grid="tiny", ctp_mb=0.02)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- case selection


def test_parse_case_selection():
    assert replica.parse_case_selection(3, None) == ["sub-stroke0001", "sub-stroke0002", "sub-stroke0003"]
    assert replica.parse_case_selection(None, ["sub-stroke0189", "sub-stroke0002"]) == ["sub-stroke0002", "sub-stroke0189"]
    assert replica.parse_case_selection(None, None) == list(CASE_IDS)
    assert len(replica.parse_case_selection(149, None)) == 149


@pytest.mark.parametrize(
    ("cases", "case_ids", "error"),
    [
        (0, None, ValueError),
        (150, None, ValueError),
        (2, ["sub-stroke0001"], ValueError),
        (None, ["sub-stroke0001", "sub-stroke0001"], ValueError),
        (None, [], ValueError),
        (None, ["sub-stroke0018"], UnknownCaseError),
    ],
)
def test_parse_case_selection_rejects(cases, case_ids, error):
    with pytest.raises(error):
        replica.parse_case_selection(cases, case_ids)


# ---------------------------------------------------------------- bad shards on purpose


@pytest.fixture(scope="module")
def good_row() -> dict[str, object]:
    return replica.case_row("sub-stroke0001", grid="tiny", ctp_mb=0.02)


def test_write_rows_two_rows(good_row, tmp_path):
    path = replica.write_rows(tmp_path / "two.parquet", [good_row, {**good_row, "subject_id": "sub-stroke0002"}])
    table = pq.read_table(path)
    assert table.num_rows == 2 and table.column("subject_id").to_pylist() == ["sub-stroke0001", "sub-stroke0002"]
    assert tuple(table.schema.names) == ALL_COLUMNS


def test_bad_cells_fail_the_checks_they_target(good_row, tmp_path):
    bad = {
        "null": {**good_row, "dwi": None},
        "garbage": {**good_row, "dwi": replica.garbage_cell(gzip_magic=True)},
        "cropped": {**good_row, "dwi": replica.cropped_cell(good_row["dwi"])},
        "shifted": {**good_row, "dwi": replica.shifted_cell(good_row["dwi"], 5.0)},
        "4d": {**good_row, "dwi": replica.four_d_cell(good_row["dwi"])},
    }
    rows = {name: read_row(replica.write_shard(tmp_path / f"{name}.parquet", row)) for name, row in bad.items()}
    assert rows["null"]["dwi"] is None
    with pytest.raises(nifti.NiftiError, match="not a NIfTI"):
        nifti.decode(rows["garbage"]["dwi"]["bytes"])
    adc = nifti.decode(rows["null"]["adc"]["bytes"])
    with pytest.raises(nifti.NiftiError, match="shape"):
        nifti.check_same_grid({"dwi": nifti.decode(rows["cropped"]["dwi"]["bytes"]), "adc": adc})
    with pytest.raises(nifti.NiftiError, match="affine"):
        nifti.check_same_grid({"dwi": nifti.decode(rows["shifted"]["dwi"]["bytes"]), "adc": adc})
    with pytest.raises(nifti.NiftiError, match="4-D"):
        nifti.check_same_grid({"dwi": nifti.decode(rows["4d"]["dwi"]["bytes"]), "adc": adc})


def test_write_shard_rejects_malformed_rows(good_row, tmp_path):
    without_sex = {k: v for k, v in good_row.items() if k != "sex"}
    with pytest.raises(ValueError, match="missing columns \\['sex'\\]"):
        replica.write_shard(tmp_path / "x.parquet", without_sex)
    with pytest.raises(TypeError, match="dwi"):
        replica.write_shard(tmp_path / "x.parquet", {**good_row, "dwi": b"raw bytes, not a struct"})
    with pytest.raises(TypeError, match="age"):
        replica.write_shard(tmp_path / "x.parquet", {**good_row, "age": "old"})
    assert not (tmp_path / "x.parquet").exists()


def test_write_shard_with_another_schema(good_row, tmp_path):
    # An older revision had `thrombolysis` where `mrs_admission` is now.
    schema = pa.schema([("subject_id", pa.string()), ("dwi", replica.NIFTI_TYPE), ("thrombolysis", pa.float32())])
    row = {"subject_id": "sub-stroke0001", "dwi": good_row["dwi"], "thrombolysis": 1.0}
    table = pq.read_table(replica.write_shard(tmp_path / "old.parquet", row, schema))
    assert table.schema.names == ["subject_id", "dwi", "thrombolysis"]
    assert table.column("dwi")[0]["bytes"].as_py() == good_row["dwi"]["bytes"]


def test_ct_maps_lie_on_the_case_grid_with_a_perfusion_deficit():
    from isles_pipeline.hub.phantom import make_case
    from isles_pipeline.hub.replica import ct_images
    from isles_pipeline.nifti import as_mask

    case = make_case("sub-stroke0003", grid="tiny")
    maps = ct_images(case)
    assert set(maps) == {"ncct", "cta", "tmax", "mtt", "cbf", "cbv"}
    core, brain = as_mask(case.lesion_mask), case.brain_mask
    assert core.any()
    for column, image in maps.items():
        assert image.shape == case.dwi.shape, column
        np.testing.assert_allclose(image.affine, case.dwi.affine, err_msg=column)
    mean = {column: (float(np.asarray(image.dataobj)[core].mean()), float(np.asarray(image.dataobj)[brain & ~core].mean())) for column, image in maps.items()}
    assert mean["tmax"][0] > 6 > 2 > mean["tmax"][1]  # Tmax > 6 s marks the hypoperfused tissue
    assert mean["cbf"][0] < 0.5 * mean["cbf"][1] and mean["cbv"][0] < mean["cbv"][1]
    assert mean["mtt"][0] > mean["mtt"][1] and mean["ncct"][0] < mean["ncct"][1]  # early hypodensity
