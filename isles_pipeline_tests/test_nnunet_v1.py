"""nnU-Net v1 model folders in the ``nnunet`` segmenter, against nnU-Net v1's own ``predict_cases``,
and the SEALS recipe against DeepISLES' own steps.

One v1 folder per session, made with v1's planner and ``nnUNetTrainerV2`` (two folds, seeded
random weights, DWI + ADC; see ``nnunet_v1_models``), predicts two oblique cases served by the
local Hub: an isotropic one and an anisotropic one (slice spacing 6 x the in-plane spacing, so v1
resamples with "separate z"). The CLI and ``case_prediction`` must give v1's mask on the input
grid. Random-weight masks have near-ties that a different thread count can flip, hence "at least
99.9 % of voxels", not "equal".
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

if importlib.util.find_spec("nnunet") is None:  # the nnunet1 extra (not imported here: it prints)
    pytest.skip("nnU-Net v1 is not installed: pip install -c constraints.txt -e '.[nnunet1]'", allow_module_level=True)

import SimpleITK as sitk  # noqa: E402

from isles_devkit import deepisles_seals  # noqa: E402
from isles_devkit.nnunet_v1_models import CHECKPOINT, V1Models, build_v1_models  # noqa: E402
from isles_devkit.processes import REPO_ROOT  # noqa: E402
from isles_pipeline import nifti  # noqa: E402
from isles_pipeline.catalogue import DEFAULT_REPO_ID, shard_path  # noqa: E402
from isles_pipeline.hub.phantom import GridSpec, make_case, nifti_image  # noqa: E402
from isles_pipeline.hub.replica import phantom_row, write_shard  # noqa: E402
from isles_pipeline.segment.channels import input_columns_for  # noqa: E402
from isles_pipeline.segment.nnunet_v1_files import V1ModelError  # noqa: E402
from isles_pipeline_tests.test_cli import cli  # noqa: E402

FOLDS = (0, 1)
AGREEMENT = 0.999
# Two oblique phantom cases (catalogue positions 4 and 8 are oblique), skull-stripped so that v1's
# crop to the nonzero voxels has something to crop.
CASES = {
    "iso": ("sub-stroke0004", GridSpec("iso", (24, 24, 20), (8.5, 8.5, 8.5))),
    "aniso": ("sub-stroke0008", GridSpec("aniso", (40, 40, 6), (5.0, 5.0, 30.0))),
}


@dataclasses.dataclass(frozen=True)
class V1Setup:
    models: V1Models
    replica: Path
    files: dict[str, dict[str, Path]]  # case name -> {"dwi": path, "adc": path}
    seals_case: dict[str, Path]


def _write_replica(replica: Path, files_root: Path) -> dict[str, dict[str, Path]]:
    """The two cases as shards of a replica (the project's phantom and shard writer), and their
    DWI/ADC cells' bytes as files (what the Hub serves, byte for byte)."""
    files = {}
    for name, (case_id, grid) in CASES.items():
        case = make_case(case_id, grid, seed=0, orientation="oblique", adc_units="1e-3")
        brain = case.brain_mask
        case = dataclasses.replace(
            case,
            dwi=nifti_image((np.asarray(case.dwi.dataobj) * brain).astype(np.int16), case.affine),
            adc=nifti_image((np.asarray(case.adc.dataobj) * brain).astype(np.float32), case.affine),
        )
        row = phantom_row(case, ctp_mb=0.01)
        write_shard(replica / shard_path(case_id), row)
        files[name] = {}
        for column in ("dwi", "adc"):
            path = files_root / name / f"{column}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(row[column]["bytes"])
            files[name][column] = path
    return files


def _synthetic_case(folder: Path, shape=(30, 30, 12), voxel_mm=(2.2, 2.2, 5.0), seed: int = 7) -> dict[str, Path]:
    """DWI and ADC on an oblique grid with a zero margin (what SEALS' 1 mm steps are tested on)."""
    rng = np.random.default_rng(seed)
    angle = np.deg2rad(17)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-voxel_mm[0], voxel_mm[1], voxel_mm[2]])
    affine[:3, 3] = [31.0, -40.5, 12.25]
    inside = np.zeros(shape, bool)
    inside[3:-3, 4:-2, 2:-2] = True
    lesion = np.zeros(shape, bool)
    lesion[10:17, 12:20, 4:8] = True
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, (column, contrast) in enumerate((("dwi", 2.0), ("adc", 0.5))):
        image = rng.normal(600.0 + 300 * k, 60.0, shape) * np.where(lesion, contrast, 1.0) * inside
        paths[column] = folder / f"{column}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), paths[column])
    return paths


@pytest.fixture(scope="session")
def v1(tmp_path_factory) -> V1Setup:
    work = tmp_path_factory.mktemp("nnunet_v1")
    replica = work / "replica"
    files = _write_replica(replica, work / "cases")
    seals_case = _synthetic_case(work / "seals_case")
    models = build_v1_models(work / "v1", files, bias_case="iso", seals_case=seals_case, folds=FOLDS)
    print(f"\nnnU-Net v1 folder, references and SEALS steps built in {models.seconds:.1f} s")
    return V1Setup(models, replica, files, seals_case)


def _mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj) > 0, image.affine


def _agreement(mask: np.ndarray, expected: np.ndarray) -> float:
    assert mask.shape == expected.shape
    return float(np.mean(mask == expected))


@pytest.mark.parametrize("name", list(CASES))
def test_the_cli_gives_predict_cases_mask(v1, name, tmp_path):
    """``isles-pipeline segment --segmenter nnunet --checkpoint V1_FOLDER``: v1's mask on the input grid."""
    case = v1.files[name]
    voxel_mm = CASES[name][1].voxel_mm
    assert (max(voxel_mm) / min(voxel_mm) > 3) == (name == "aniso")  # v1 resamples the anisotropic one with "separate z"
    run = cli("segment", "--segmenter", "nnunet", "--checkpoint", str(v1.models.model), "--device", "cpu",
              "--dwi", str(case["dwi"]), "--adc", str(case["adc"]), "--out", str(tmp_path / "cli.nii.gz"))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)  # stdout is the summary alone: v1's prints went to stderr
    assert summary["segmenter"] == "nnunet" and summary["device"] == "cpu"
    mask, affine = _mask(tmp_path / "cli.nii.gz")
    expected, expected_affine = _mask(v1.models.references[name])
    dwi = nib.load(case["dwi"])
    np.testing.assert_allclose(affine, dwi.affine, atol=1e-5)  # the input grid
    np.testing.assert_allclose(expected_affine, dwi.affine, atol=1e-4)
    agreement = _agreement(mask, expected)
    print(f"\n{name}: CLI mask equals predict_cases' on {100 * agreement:.4f} % of {mask.size} voxels "
          f"({int(expected.sum())} lesion voxels)")
    assert 0 < int(expected.sum()) < expected.size
    assert agreement >= AGREEMENT


def test_case_prediction_gives_predict_cases_mask(v1, tmp_path, monkeypatch):
    """A registered ``nnunet:<label>`` v1 model through case_inputs (from the replica on the local
    Hub) and case_prediction, for both cases."""
    import dagster as dg

    from isles_pipeline.defs.cases import case_inputs
    from isles_pipeline.defs.partitions import case_model_key
    from isles_pipeline.defs.segmentation import PREDICTION_FILE, PREDICTION_INFO_FILE, case_prediction
    from isles_pipeline.hub.server import HubServer
    from isles_pipeline.models import ModelSpec, result_path, write_registry
    from isles_pipeline.store import CaseStore
    from isles_pipeline_tests.chain import register_models, resources_for

    spec = ModelSpec("nnunet:tiny-v1", checkpoint=str(v1.models.model))
    registry = write_registry(tmp_path / "models.yaml", [spec])
    store = CaseStore(tmp_path / "data")
    with HubServer("127.0.0.1") as server, dg.instance_for_test() as instance:
        server.add_repo("dataset", DEFAULT_REPO_ID, v1.replica)
        resources = resources_for(server.url, store.root, registry)
        assert resources["models"].registry().input_columns() == ("dwi", "adc", "lesion_mask")
        register_models(instance, [spec.name])
        for name, (case_id, _) in CASES.items():
            assert dg.materialize([case_inputs], partition_key=case_id, instance=instance, resources=resources).success
            key = case_model_key(case_id, spec.name)
            assert dg.materialize([case_prediction], partition_key=key, instance=instance, resources=resources).success
            written = nifti.decode(store.read_bytes(result_path(store, case_id, spec.name, PREDICTION_FILE)), "prediction")
            expected, expected_affine = _mask(v1.models.references[name])
            np.testing.assert_allclose(written.affine, expected_affine, atol=1e-4)
            agreement = _agreement(np.asarray(written.dataobj) > 0, expected)
            print(f"\n{name}: case_prediction mask equals predict_cases' on {100 * agreement:.4f} % of {expected.size} voxels")
            assert agreement >= AGREEMENT
            info = json.loads(store.read_bytes(result_path(store, case_id, spec.name, PREDICTION_INFO_FILE)))
            assert (info["segmenter"], info["device"], info["fallbacks"]) == ("nnunet", "cpu", "")


def test_channels_come_from_plans_pkl_without_torch(v1):
    """The fetch step reads a v1 folder's channels from plans.pkl (through the allow-list) without importing torch."""
    code = (
        "import sys; from isles_pipeline.segment.channels import input_columns_for; "
        f"print(','.join(input_columns_for('nnunet', {str(v1.models.model)!r}))); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["dwi,adc", "False"]


# ---------------------------------------------------------------- what a v1 folder may not hold


class RunsACommand:
    """A pickled object whose unpickling would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _copy_folder(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_files_pickling_other_classes_are_refused_and_never_run(v1, tmp_path):
    """plans.pkl, .model.pkl and the checkpoint carrying an object outside the allow-list are
    refused with one line naming the file and the class; the payload never runs."""
    import torch

    from isles_pipeline.segment.registry import make_segmenter

    marker = tmp_path / "payload-ran"
    evil = RunsACommand(marker)
    cases = {}
    # the checkpoint: an extra entry beside the weights
    folder = _copy_folder(v1.models.model, tmp_path / "checkpoint")
    path = folder / "fold_1" / f"{CHECKPOINT}.model"
    torch.save({"state_dict": {}, "extra": evil}, path)
    cases["checkpoint"] = (folder, path)
    # .model.pkl and plans.pkl: the object inside their dicts
    for name, relative in (("model_pkl", f"fold_0/{CHECKPOINT}.model.pkl"), ("plans", "plans.pkl")):
        folder = _copy_folder(v1.models.model, tmp_path / name)
        path = folder / relative
        with open(path, "rb") as f:
            content = pickle.load(f)  # a file this test made
        content["extra"] = evil
        path.write_bytes(pickle.dumps(content))
        cases[name] = (folder, path)
    for name, (folder, path) in cases.items():
        with pytest.raises(V1ModelError) as refused:
            make_segmenter("nnunet", device="cpu", checkpoint=str(folder)).load()
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"{path}: refused: it pickles posix.system"), (name, message)
    with pytest.raises(V1ModelError, match=r"plans\.pkl: refused: it pickles posix\.system"):
        input_columns_for("nnunet", str(cases["plans"][0]))
    assert not marker.exists()


def test_a_trainer_outside_the_allow_list_is_refused(v1, tmp_path):
    from isles_pipeline.segment.registry import make_segmenter

    folder = _copy_folder(v1.models.model, tmp_path / "cascade")
    path = folder / "fold_0" / f"{CHECKPOINT}.model.pkl"
    with open(path, "rb") as f:
        info = pickle.load(f)
    info["name"] = "nnUNetTrainerV2CascadeFullRes"
    path.write_bytes(pickle.dumps(info))
    with pytest.raises(V1ModelError, match=r"trainer nnUNetTrainerV2CascadeFullRes is not supported \(supported: nnUNetTrainerV2, nnUNetTrainerV2_DDP"):
        make_segmenter("nnunet", device="cpu", checkpoint=str(folder)).load()


def test_folds_not_in_the_folder_are_named(v1):
    from isles_pipeline.segment.registry import make_segmenter

    with pytest.raises(V1ModelError, match=r"has no model_final_checkpoint\.model \(\+ \.pkl\) for fold\(s\) 3 \(present: 0, 1\)"):
        make_segmenter("nnunet", device="cpu", checkpoint=str(v1.models.model), folds=[0, 3]).load()


def test_a_v1_folder_from_a_hub_model_repo(v1, tmp_path, monkeypatch):
    """The folder as a subfolder of a Hub model repo: downloaded through the same client as v2
    folders (plans.pkl and each fold's checkpoint and .pkl, nothing else); predict_cases' mask."""
    from isles_pipeline.hub.server import HubServer
    from isles_pipeline.predict import predict_images
    from isles_pipeline.segment.registry import make_segmenter

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    model = v1.models.model
    images = {column: nifti.decode(path.read_bytes(), str(path)) for column, path in v1.files["iso"].items()}
    with HubServer("127.0.0.1") as server:
        server.add_repo("model", "lab/tiny-nnunet-v1", model.parent)
        spec = f"lab/tiny-nnunet-v1:{model.name}"
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert input_columns_for("nnunet", spec) == ("dwi", "adc")
        segmenter = make_segmenter("nnunet", device="cpu", checkpoint=spec, endpoint=server.url)
        from_hub = predict_images(segmenter, images)
    downloaded = sorted(str(p.relative_to(segmenter.folder)) for p in segmenter.folder.rglob("*") if p.is_file())
    assert downloaded == ["fold_0/model_final_checkpoint.model", "fold_0/model_final_checkpoint.model.pkl",
                          "fold_1/model_final_checkpoint.model", "fold_1/model_final_checkpoint.model.pkl", "plans.pkl"]
    assert segmenter.last_info["nnunet_version"] == 1 and segmenter.last_info["folds"] == [0, 1]
    assert _agreement(np.asarray(from_hub.mask.dataobj) > 0, _mask(v1.models.references["iso"])[0]) >= AGREEMENT


# ---------------------------------------------------------------- the SEALS recipe


def test_seals_1mm_input_equals_deepisles_simpleitk(v1):
    """Task500_Ischemic_Stroke_Test.py: DWI to 1 mm (respacing_file) and ADC onto it
    (reimplement_resize), from the arrays and affine the pipeline has, against SimpleITK reading
    the files and configured as DeepISLES configures it."""
    from isles_pipeline.segment.seals import itk_image, resample_onto, respacing_file

    case = v1.seals_case
    dwi, adc = (nib.load(case[c]) for c in ("dwi", "adc"))
    ours_dwi = respacing_file(itk_image(nifti.as_float32(dwi), dwi.affine, nifti.header_spacing(dwi)))
    ours_adc = resample_onto(itk_image(nifti.as_float32(adc), adc.affine, nifti.header_spacing(adc)), ours_dwi)
    theirs_dwi = deepisles_seals.respacing_file(str(case["dwi"]), [1, 1, 1], sitk.sitkLinear)
    theirs_adc = deepisles_seals.task500_reimplement_resize(str(case["adc"]), theirs_dwi, sitk.sitkLinear)
    for ours, theirs in ((ours_dwi, theirs_dwi), (ours_adc, theirs_adc)):
        assert ours.GetSize() == theirs.GetSize() == (66, 66, 60)
        np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing())
        np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6)
        ours_array, theirs_array = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)
        assert np.count_nonzero(theirs_array) > theirs_array.size / 4
        np.testing.assert_allclose(ours_array, theirs_array, rtol=1e-5, atol=1e-3)


def test_seals_1mm_size_does_not_wrap_at_256():
    """DeepISLES' target size is .astype(np.uint8): 300 mm of field of view give 44 voxels there, 300 here."""
    from isles_pipeline.segment.seals import one_mm_size

    image = sitk.Image([150, 120, 10], sitk.sitkFloat32)
    image.SetSpacing([2.0, 1.0, 5.0])
    assert one_mm_size(image) == [300, 120, 50]
    theirs = deepisles_seals.respacing_file(image, [1, 1, 1], sitk.sitkLinear)
    assert theirs.GetSize() == (44, 120, 50)


def test_seals_softmax_back_to_the_dwi_grid_equals_deepisles_simpleitk(v1):
    """recover_softmax.py: a 1 mm channel resampled onto the DWI grid (bare array, identity
    transform), against SimpleITK configured as recover_softmax configures it."""
    from isles_pipeline.segment.seals import itk_image, one_mm_size, recover_channel

    dwi = nib.load(v1.seals_case["dwi"])
    reference = itk_image(nifti.as_float32(dwi), dwi.affine, nifti.header_spacing(dwi))
    size = one_mm_size(reference)
    values = np.random.default_rng(3).uniform(0, 1, size[::-1]).astype(np.float32)
    ours = recover_channel(values, reference)
    theirs = deepisles_seals.recover_reimplement_resize(values, str(v1.seals_case["dwi"]))
    assert ours.shape == theirs.shape == dwi.shape[::-1]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_the_seals_recipe_gives_deepisles_mask(v1):
    """A registered model with ``options: {recipe: deepisles-seals}`` on the folder as SEALS ships
    it (nnUNetTrainerV2_DDP, 'module.' weights): DeepISLES' own chain (Task500 conversion, one
    predict_cases -z per fold, recover_softmax, ensemble, threshold) gives the same mask."""
    from isles_pipeline.models import ModelSpec
    from isles_pipeline.predict import predict_images

    spec = ModelSpec("nnunet:seals", checkpoint=str(v1.models.seals_model), options={"recipe": "deepisles-seals"})
    segmenter = spec.make(device="cpu")
    images = {column: nifti.decode(path.read_bytes(), str(path)) for column, path in v1.seals_case.items()}
    result = predict_images(segmenter, images)
    recovered = [deepisles_seals.recover_softmax(npz, v1.seals_case["dwi"], v1.seals_case["adc"]) for npz in v1.models.seals_npz.values()]
    expected = deepisles_seals.ensemble_mask(recovered).transpose(2, 1, 0) > 0  # (z, y, x) -> voxel axes
    mask = np.asarray(result.mask.dataobj) > 0
    agreement = _agreement(mask, expected)
    print(f"\nSEALS recipe mask equals DeepISLES' steps on {100 * agreement:.4f} % of {mask.size} voxels "
          f"({int(expected.sum())} lesion voxels)")
    assert 0 < int(expected.sum()) < expected.size
    assert agreement >= AGREEMENT
    assert segmenter.last_info["recipe"] == "deepisles-seals" and segmenter.last_info["one_mm_shape"] == [60, 66, 66]
    np.testing.assert_array_equal(result.mask.affine, images["dwi"].affine)


def test_the_seals_recipe_is_refused_on_a_v2_folder(tmp_path):
    from isles_pipeline.segment.nnunet import NnUNetSegmenter

    with pytest.raises(ValueError, match=r"unknown nnU-Net recipe 'seals' \(known: deepisles-seals\)"):
        NnUNetSegmenter(tmp_path, device="cpu", recipe="seals")
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "DWI", "1": "ADC"}}))
    (tmp_path / "plans.json").write_text("{}")
    with pytest.raises(ValueError, match="recipe deepisles-seals runs nnU-Net v1 folders"):
        NnUNetSegmenter(tmp_path, device="cpu", recipe="deepisles-seals").load()


def test_the_example_registry_entry_builds_the_recipe():
    """models.example.yaml's SEALS entry, uncommented as a user does, parses to the recipe option."""
    import yaml

    from isles_pipeline.models import parse_registry
    from isles_pipeline.segment.nnunet import NnUNetSegmenter

    text = (REPO_ROOT / "models.example.yaml").read_text()
    block = text[text.index("  # - name: nnunet:deepisles-seals"):].splitlines()[:4]
    entry = yaml.safe_load("\n".join(line.replace("  # ", "  ", 1) for line in block))
    spec = parse_registry({"models": entry}).get("nnunet:deepisles-seals")
    assert (spec.checkpoint, spec.options) == ("/models/seals", {"recipe": "deepisles-seals"})
    segmenter = spec.make(device="cpu")
    assert isinstance(segmenter, NnUNetSegmenter) and segmenter.recipe == "deepisles-seals"



def test_a_cuda_out_of_memory_reruns_the_case_on_the_cpu(v1):
    """The v1 model's fallback: a CUDA out-of-memory error reruns the case on a CPU copy of the
    network, and says so (the model stands in for a GPU one: it never runs there)."""
    import torch

    from isles_pipeline.segment.nnunet import from_nnunet_layout, nnunet_spacing, to_nnunet_layout
    from isles_pipeline.segment.nnunet_v1 import NnUNetV1Model

    class OutOfMemoryOnCuda(NnUNetV1Model):
        def fold_softmax(self, data, index, network=None):
            if network is None and self.device.type == "cuda":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().fold_softmax(data, index, network)

    model = OutOfMemoryOnCuda(v1.models.model, torch.device("cpu"))
    model.device = torch.device("cuda")
    images = {column: nifti.decode(path.read_bytes(), str(path)) for column, path in v1.files["iso"].items()}
    affine = images["dwi"].affine
    stacked = np.stack([to_nnunet_layout(nifti.as_float32(images[c]), affine, "SimpleITKIO") for c in ("dwi", "adc")])
    labels, info = model.predict(stacked, nnunet_spacing(affine, "SimpleITKIO", nifti.header_spacing(images["dwi"])))
    assert info["device"] == "cpu"
    assert info["fallbacks"] == ["out of memory on cuda (CUDA out of memory. Tried to allocate 2.00 GiB); retried on cpu"]
    mask = from_nnunet_layout(labels > 0, affine, images["dwi"].shape, "SimpleITKIO")
    assert _agreement(mask, _mask(v1.models.references["iso"])[0]) >= AGREEMENT
