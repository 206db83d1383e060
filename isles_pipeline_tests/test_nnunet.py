"""The ``nnunet`` segmenter against nnunetv2's own predictor, on a model folder nnunetv2 planned.

The model folder comes from nnunetv2's fingerprint extractor and experiment planner on a tiny
generated dataset (see ``nnunet_models``); its two folds have random weights. The segmenter's
mask must equal, voxel for voxel, what ``nnUNetPredictor`` writes for the same files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nnunetv2")

import torch  # noqa: E402

from isles_devkit.nnunet_models import build_model_folder, set_lesion_bias  # noqa: E402
from isles_pipeline import nifti  # noqa: E402
from isles_pipeline.predict import predict_image_files, predict_images  # noqa: E402
from isles_pipeline.segment.channels import input_columns_for  # noqa: E402
from isles_pipeline.segment.hub_models import CheckpointError  # noqa: E402
from isles_pipeline.segment.registry import make_segmenter  # noqa: E402
from isles_pipeline_tests.chain import register_models, resources_for  # noqa: E402
from isles_pipeline_tests.test_cli import cli  # noqa: E402

FOLDS = (0, 1)


@pytest.fixture(scope="module")
def mri_model(tmp_path_factory):
    """An nnU-Net DWI+ADC model folder with two folds, and one case written on an oblique grid."""
    work = tmp_path_factory.mktemp("nnunet_mri")
    with pytest.MonkeyPatch.context() as monkeypatch:
        model, cases = build_model_folder(work, monkeypatch, channels=("DWI", "ADC"), folds=FOLDS)
        case = _oblique_copy(cases[1], work / "case")
        set_lesion_bias(model, FOLDS, case, fraction=0.1)
    return model, case


def _oblique_copy(paths: dict[str, Path], folder: Path) -> dict[str, Path]:
    """The case's images on a rotated, flipped, shifted grid (same voxels, another affine)."""
    folder.mkdir(parents=True)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    out = {}
    for k, (column, path) in enumerate(paths.items()):
        image = nib.load(path)
        affine = np.eye(4)
        affine[:3, :3] = rotation @ np.diag([-1.5, 1.5, 2.0])
        affine[:3, 3] = [40.0, -12.0, 7.5]
        out[column] = folder / f"case_{k:04d}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32), affine), out[column])
    return out


def _predictor_mask(model: Path, case: dict[str, Path], out: Path) -> np.ndarray:
    """nnU-Net's own prediction from the files, as it writes it (read back on the voxel grid)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=FOLDS, checkpoint_name="checkpoint_final.pth")
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential([[str(case["dwi"]), str(case["adc"])]], [str(out / "case")])
    return np.asarray(nib.load(out / "case.nii.gz").dataobj) > 0


def test_mask_equals_nnunet_predictor_with_two_folds(mri_model, tmp_path):
    model, case = mri_model
    segmenter = make_segmenter("nnunet", device="cpu", checkpoint=str(model))
    images = {column: nifti.decode(path.read_bytes(), str(path)) for column, path in case.items()}
    result = predict_images(segmenter, images)
    expected = _predictor_mask(model, case, tmp_path / "reference")
    mask = np.asarray(result.mask.dataobj) > 0
    assert np.array_equal(mask, expected)
    assert 0 < int(mask.sum()) < mask.size  # the bias makes it neither empty nor full
    np.testing.assert_array_equal(result.mask.affine, images["dwi"].affine)  # on the input grid
    assert segmenter.last_info["folds"] == [0, 1]
    assert result.device == "cpu" and result.fallbacks == ()
    # The predictor is built once and reused for the next case.
    predictor = segmenter.load()
    predict_images(segmenter, images)
    assert segmenter.load() is predictor


def test_cli_writes_the_same_mask(mri_model, tmp_path):
    model, case = mri_model
    in_process = predict_image_files(case, tmp_path / "api.nii.gz", "nnunet", "cpu", str(model))
    run = cli("segment", "--segmenter", "nnunet", "--checkpoint", str(model), "--device", "cpu",
              "--dwi", str(case["dwi"]), "--adc", str(case["adc"]), "--out", str(tmp_path / "cli.nii.gz"))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    written = (tmp_path / "cli.nii.gz").read_bytes()
    assert summary["sha256"] == hashlib.sha256(written).hexdigest() == in_process["sha256"]
    assert summary["device"] == "cpu" and summary["fallbacks"] == []


def test_options_reach_the_predictor(mri_model):
    model, _ = mri_model
    segmenter = make_segmenter("nnunet", device="cpu", checkpoint=str(model), tile_step_size=0.75, use_mirroring=False, folds=[1])
    predictor = segmenter.load()
    assert (predictor.tile_step_size, predictor.use_mirroring, predictor.use_gaussian) == (0.75, False, True)
    assert len(predictor.list_of_parameters) == 1


def test_channels_come_from_dataset_json(mri_model, tmp_path):
    model, case = mri_model
    assert input_columns_for("nnunet", str(model)) == ("dwi", "adc")
    assert input_columns_for("rules") == ("dwi", "adc")
    segmenter = make_segmenter("nnunet", device="cpu", checkpoint=str(model))
    adc = nifti.decode(case["adc"].read_bytes(), "adc")
    with pytest.raises(ValueError, match=r"reads dwi, adc; the case has no dwi \(it has adc\)"):
        predict_images(segmenter, {"adc": adc})
    flair = tmp_path / "flair_model"
    flair.mkdir()
    (flair / "dataset.json").write_text(json.dumps({"channel_names": {"0": "FLAIR", "1": "DWI"}}))
    with pytest.raises(ValueError, match="'FLAIR' that no shard column provides .*ncct, cta, tmax, mtt, cbf, cbv, dwi, adc"):
        input_columns_for("nnunet", str(flair))


# ---------------------------------------------------------------- a CT perfusion model on a replica

CT_CASE = "sub-stroke0001"
CT_COLUMNS = ("tmax", "cbf")


def _column_chunk_bytes(shard: Path, columns: tuple[str, ...]) -> int:
    """Bytes of these columns' chunks, from the shard's own footer."""
    import pyarrow.parquet as pq

    from isles_pipeline.source import column_chunk_bytes

    return column_chunk_bytes(pq.read_metadata(shard), tuple(columns))


def test_a_ct_perfusion_model_runs_on_the_maps_it_names(hub, replica_dir, tmp_path):
    """A Tmax+CBF model: case_inputs-style fetch of only those columns (bytes counted by the
    server), then the CLI and the Dagster asset, both equal to nnUNetPredictor on the files."""
    import dagster as dg

    from isles_pipeline.catalogue import DEFAULT_REPO_ID, shard_path
    from isles_pipeline.defs.segmentation import PREDICTION_FILE, PREDICTION_INFO_FILE, case_prediction
    from isles_pipeline.hub.phantom import GRIDS
    from isles_pipeline.inputs import fetch_case
    from isles_pipeline.source import ShardReader, ShardSource
    from isles_pipeline.store import CaseStore

    store = CaseStore(tmp_path / "data")
    hub.reset_stats()
    fetched = fetch_case(ShardReader(ShardSource(DEFAULT_REPO_ID, "main", hub.url)), store, CT_CASE, columns=(*CT_COLUMNS, "lesion_mask"))
    served = hub.stats.bytes_sent
    needed = _column_chunk_bytes(replica_dir / shard_path(CT_CASE), (*CT_COLUMNS, "lesion_mask"))
    assert set(fetched.manifest.files) == {*CT_COLUMNS, "lesion_mask"}
    assert served <= 1.05 * needed + 128 * 1024
    assert served < (replica_dir / shard_path(CT_CASE)).stat().st_size / 4  # ctp, dwi, adc stay on the server

    tiny = GRIDS["tiny"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        model, _ = build_model_folder(tmp_path / "nnunet_ct", monkeypatch, channels=("Tmax", "CBF"), folds=(0,),
                                      dataset_id=502, cases=2, shape=tiny.shape, spacing=tiny.voxel_mm)
    case = {column: Path(store.local_path(store.case_path(CT_CASE, fetched.manifest.files[column].name))) for column in CT_COLUMNS}
    set_lesion_bias(model, (0,), case, fraction=0.05)
    assert input_columns_for("nnunet", str(model)) == CT_COLUMNS

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
    predictor.predict_from_files_sequential([[str(case["tmax"]), str(case["cbf"])]], [str(tmp_path / "reference")])
    expected = np.asarray(nib.load(tmp_path / "reference.nii.gz").dataobj) > 0
    assert 0 < int(expected.sum()) < expected.size

    run = cli("segment", "--segmenter", "nnunet", "--checkpoint", str(model), "--device", "cpu",
              "--image", f"tmax={case['tmax']}", "--image", f"cbf={case['cbf']}", "--out", str(tmp_path / "cli.nii.gz"))
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.asarray(nib.load(tmp_path / "cli.nii.gz").dataobj) > 0, expected)

    from isles_pipeline.defs.partitions import case_model_key
    from isles_pipeline.models import ModelSpec, result_path, write_registry

    spec = ModelSpec("nnunet:ct", checkpoint=str(model))
    registry = write_registry(tmp_path / "models.yaml", [spec])
    resources = resources_for(hub.url, store.root, registry)
    assert resources["models"].registry().input_columns() == (*CT_COLUMNS, "lesion_mask")
    with dg.instance_for_test() as instance:
        register_models(instance, [spec.name])
        result = dg.materialize([case_prediction], partition_key=case_model_key(CT_CASE, spec.name), instance=instance, resources=resources)
    assert result.success
    written = store.read_bytes(result_path(store, CT_CASE, spec.name, PREDICTION_FILE))
    assert hashlib.sha256(written).hexdigest() == json.loads(run.stdout)["sha256"]
    info = json.loads(store.read_bytes(result_path(store, CT_CASE, spec.name, PREDICTION_INFO_FILE)))
    assert (info["segmenter"], info["device"], info["fallbacks"]) == ("nnunet", "cpu", "")


@pytest.fixture(scope="module")
def tiny_grid_model(tmp_path_factory):
    """A DWI+ADC model folder planned for the replica's tiny grid, two folds; fold 0 also has a
    checkpoint_best.pth (the same weights), so that checkpoint_name changes the folds that run."""
    import shutil

    from isles_pipeline.hub.phantom import GRIDS

    tiny = GRIDS["tiny"]
    with pytest.MonkeyPatch.context() as planner_env:
        model, _ = build_model_folder(tmp_path_factory.mktemp("nnunet_chain"), planner_env, channels=("DWI", "ADC"), folds=FOLDS,
                                      dataset_id=503, cases=2, shape=tiny.shape, spacing=tiny.voxel_mm)
    shutil.copy(model / "fold_0" / "checkpoint_final.pth", model / "fold_0" / "checkpoint_best.pth")
    return model


def test_the_case_chain_runs_an_nnunet_model(hub, tmp_path, monkeypatch, tiny_grid_model):
    """case_inputs -> case_prediction -> case_metrics in the definitions built with
    ISLES_SEGMENTER=nnunet and ISLES_CHECKPOINT as a user sets them (no registry file); the
    stored mask equals nnUNetPredictor's on the fetched files."""
    from isles_pipeline.definitions import build_defs
    from isles_pipeline.defs.partitions import case_model_key
    from isles_pipeline.defs.segmentation import PREDICTION_FILE
    from isles_pipeline.inputs import read_manifest
    from isles_pipeline.models import result_path
    from isles_pipeline.store import CaseStore

    case_id, model = "sub-stroke0002", tiny_grid_model
    monkeypatch.chdir(tmp_path)
    for key, value in {"ISLES_SEGMENTER": "nnunet", "ISLES_CHECKPOINT": str(model), "ISLES_DEVICE": "cpu", "HF_ENDPOINT": hub.url,
                       "ISLES_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    defs = build_defs()
    store = CaseStore(tmp_path / "data")
    with dg.instance_for_test() as instance:
        register_models(instance, ["nnunet:given"])
        assert defs.resolve_job_def("case_inputs_job").execute_in_process(partition_key=case_id, instance=instance).success
        assert defs.resolve_job_def("model_chain").execute_in_process(partition_key=case_model_key(case_id, "nnunet:given"),
                                                                      instance=instance).success
    files = read_manifest(store, case_id).files
    case = {column: Path(store.local_path(store.case_path(case_id, files[column].name))) for column in ("dwi", "adc")}

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=FOLDS)
    predictor.predict_from_files_sequential([[str(case["dwi"]), str(case["adc"])]], [str(tmp_path / "reference")])
    expected = np.asarray(nib.load(tmp_path / "reference.nii.gz").dataobj) > 0
    written = nifti.decode(store.read_bytes(result_path(store, case_id, "nnunet:given", PREDICTION_FILE)), "prediction")
    np.testing.assert_array_equal(np.asarray(written.dataobj) > 0, expected)


# Each nnU-Net option of the registry against a model without options: (given, nnU-Net's default).
NNUNET_OPTIONS = {
    "tile_step_size": (0.75, 0.5),
    "use_gaussian": (False, True),
    "use_mirroring": (False, True),
    "folds": ([1], [0, 1]),
    "checkpoint_name": ("checkpoint_best.pth", "checkpoint_final.pth"),
}


def test_each_nnunet_option_of_the_registry_is_what_case_prediction_records(hub, tmp_path, tiny_grid_model):
    from isles_pipeline.defs.cases import case_inputs
    from isles_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG, case_model_key
    from isles_pipeline.defs.segmentation import case_prediction
    from isles_pipeline.models import ModelSpec, write_registry

    case_id, model = "sub-stroke0002", str(tiny_grid_model)
    models = [ModelSpec("nnunet:base", model)] + [
        ModelSpec(f"nnunet:{name.replace('_', '-')}", model, {name: given}) for name, (given, _) in NNUNET_OPTIONS.items()]
    resources = resources_for(hub.url, tmp_path / "data", write_registry(tmp_path / "models.yaml", models))
    with dg.instance_for_test() as instance:
        register_models(instance, [m.name for m in models])
        assert dg.materialize([case_inputs], partition_key=case_id, instance=instance, resources=resources).success
        tags = {RANGE_START_TAG: case_model_key(case_id, models[0].name), RANGE_END_TAG: case_model_key(case_id, models[-1].name)}
        assert dg.materialize([case_prediction], instance=instance, resources=resources, tags=tags).success

    def recorded(spec: ModelSpec) -> dict:
        return json.loads((tmp_path / "data" / "cases" / case_id / "models" / spec.slug / "prediction.json").read_text())

    base = recorded(models[0])
    assert base["ran_with"] == {name: default for name, (_, default) in NNUNET_OPTIONS.items()}
    for spec, (name, (given, _)) in zip(models[1:], NNUNET_OPTIONS.items(), strict=True):
        record = recorded(spec)
        assert record["options"] == {name: given} and record["ran_with"][name] == given, name
        changed = {k for k, v in record["ran_with"].items() if v != base["ran_with"][k]}
        # fold 0 alone has a checkpoint_best.pth: naming that checkpoint also picks the folds
        assert changed == ({name, "folds"} if name == "checkpoint_name" else {name}), name


def test_a_cuda_out_of_memory_reruns_on_the_cpu_and_is_recorded(mri_model):
    from isles_pipeline.segment.nnunet import NnUNetSegmenter

    class CudaOutOfMemory(NnUNetSegmenter):
        def _predict(self, predictor, stacked, properties):
            if predictor.device.type == "cuda":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
            return super()._predict(predictor, stacked, properties)

    model, case = mri_model
    segmenter = CudaOutOfMemory(model, device="cpu")
    segmenter.device = torch.device("cuda")  # stands in for a GPU: the predictor is built for it, never run
    images = {column: nifti.decode(path.read_bytes(), str(path)) for column, path in case.items()}
    result = predict_images(segmenter, images)
    assert (result.device, result.requested_device) == ("cpu", "cuda")
    assert result.fallbacks == ("out of memory on cuda (CUDA out of memory. Tried to allocate 4.00 GiB); retried on cpu",)
    reference = predict_images(make_segmenter("nnunet", device="cpu", checkpoint=str(model)), images)
    np.testing.assert_array_equal(np.asarray(result.mask.dataobj), np.asarray(reference.mask.dataobj))


def test_a_model_folder_from_a_hub_model_repo(mri_model, tmp_path, monkeypatch):
    """The folder as a subfolder of a Hub model repo (the project's Hub server), downloaded by
    ``snapshot_download`` as the network segmenter's checkpoints are; the channel names come from
    ``dataset.json`` alone, and the mask equals the local folder's."""
    from isles_pipeline.hub.server import HubServer

    from .conftest import assert_only_known_routes

    model, case = mri_model
    images = {column: nifti.decode(path.read_bytes(), str(path)) for column, path in case.items()}
    with HubServer("127.0.0.1") as server:
        server.add_repo("model", "lab/tiny-nnunet", model.parent)
        spec = f"lab/tiny-nnunet:{model.name}"
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # input_columns_for reads the endpoint as the pipeline does
        assert input_columns_for("nnunet", spec) == ("dwi", "adc")
        fetched = [r.path.rsplit("/", 1)[-1] for r in server.stats.log if r.route_kind == "resolve" and r.method == "GET"]
        assert fetched == ["dataset.json"]  # not plans.json, not the weights
        segmenter = make_segmenter("nnunet", device="cpu", checkpoint=spec, endpoint=server.url)
        from_hub = predict_images(segmenter, images)
        with pytest.raises(CheckpointError, match=r"has no nope/dataset.json \(nor nope/plans.pkl\): not an nnU-Net model folder"):
            input_columns_for("nnunet", "lab/tiny-nnunet:nope")
    assert_only_known_routes(server)
    local = predict_images(make_segmenter("nnunet", device="cpu", checkpoint=str(model)), images)
    assert segmenter.folder is not None and segmenter.folder != model and segmenter.folder.name == model.name
    assert sorted(p.parent.name for p in segmenter.folder.glob("fold_*/checkpoint_final.pth")) == ["fold_0", "fold_1"]
    np.testing.assert_array_equal(np.asarray(from_hub.mask.dataobj), np.asarray(local.mask.dataobj))
