"""A tiny nnU-Net v1 trained-model folder for the tests, made with nnU-Net v1's own tools, and
nnU-Net v1's own predictions to compare the pipeline with.

Everything v1 does runs in one fresh interpreter (``python -m isles_devkit.nnunet_v1_models``):
v1's planner and ``predict_cases`` start worker processes, and a fork of the test process (whose
Hub server threads may hold locks) can deadlock. The child runs in its own process group, which is
killed whole if it overruns, so no worker outlives it.

In the child: a raw dataset of generated DWI + ADC cases (``Task555``), v1's cropping, dataset
analysis and ``ExperimentPlanner3D_v21`` (8 base features instead of 32, for the CPU); per fold,
``nnUNetTrainerV2`` builds its network from the plans (seeded random weights) and saves
``model_final_checkpoint.model`` and ``.model.pkl`` as training does (its history holds numpy
scalars, as real checkpoints' do). Generic_UNet's output convolution has no bias, so a lesion
bias is made the way the network could learn one: one channel of the last decoder block is made
constant (instance-norm weight 0, bias 1) and the output convolution weighs it by the shift, which
adds the shift to the lesion logit everywhere. The shift is the bias case's averaged log-odds at
its ``1 - lesion_fraction`` quantile, so that part of its brain is lesion (not exactly that
fraction: v1 averages softmaxes, not logits). Then ``predict_cases``
(nnUNet_predict's settings, every fold) writes the reference mask of each case, and, for the SEALS
recipe, DeepISLES' own steps run: ``Task500_Ischemic_Stroke_Test.py``'s conversion and one
``predict_cases`` per fold with ``save_npz`` (``-z``). Beside the folder goes a copy laid out as
SEALS' (``nnUNetTrainerV2_DDP``, its weights under DistributedDataParallel's ``module.`` prefix).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from isles_devkit.processes import run_in_own_group

TASK = "Task555_TinyStroke"
TRAINER = "nnUNetTrainerV2"
SEALS_TRAINER = "nnUNetTrainerV2_DDP"
PLANS = "nnUNetPlansv2.1"
CHECKPOINT = "model_final_checkpoint"


@dataclass(frozen=True)
class V1Models:
    model: Path  # the nnUNetTrainerV2 folder
    seals_model: Path  # the same weights as SEALS ships them (nnUNetTrainerV2_DDP, 'module.' keys)
    references: dict[str, Path]  # case name -> predict_cases' mask
    seals_npz: dict[int, Path]  # fold -> predict_cases' -z softmax of the SEALS case's 1 mm images
    seconds: float  # the child's wall time


def build_v1_models(
    work: Path, cases: dict[str, dict[str, Path]], bias_case: str, seals_case: dict[str, Path],
    folds=(0, 1), lesion_fraction: float = 0.15, timeout_s: float = 300,
) -> V1Models:
    """Run the child; ``cases`` maps a name to its {"dwi": path, "adc": path}."""
    import time

    config = {
        "work": str(work), "cases": {k: {c: str(p) for c, p in v.items()} for k, v in cases.items()},
        "bias_case": bias_case, "seals_case": {c: str(p) for c, p in seals_case.items()},
        "folds": list(folds), "lesion_fraction": lesion_fraction,
    }
    started = time.perf_counter()
    done = run_in_own_group([sys.executable, "-m", "isles_devkit.nnunet_v1_models", json.dumps(config)], env=dict(os.environ),
                            timeout_s=timeout_s, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, f"building the nnU-Net v1 model failed:\n{done.stdout[-2000:]}\n{done.stderr[-6000:]}"
    results = Path(work) / "results" / "nnUNet" / "3d_fullres" / TASK
    return V1Models(
        model=results / f"{TRAINER}__{PLANS}",
        seals_model=results / f"{SEALS_TRAINER}__{PLANS}",
        references={name: Path(work) / "reference" / f"{name}.nii.gz" for name in cases},
        seals_npz={fold: Path(work) / "seals" / f"fold{fold}" / "ISLES22_0001.npz" for fold in folds},
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------- the child


def set_v1_paths(work: Path) -> None:
    """nnU-Net v1's folders, inside ``work``: nnunet.paths reads them once, at import (planning
    needs them; the pipeline's inference does not)."""
    os.environ.update(nnUNet_raw_data_base=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                      RESULTS_FOLDER=str(work / "results"))


def main(config: dict) -> None:
    work = Path(config["work"])
    set_v1_paths(work)
    import torch

    from isles_pipeline.segment.nnunet_v1_files import PICKLE_GLOBALS

    torch.set_num_threads(1)  # as the tests run the pipeline
    # predict_cases loads checkpoints with torch.load's default, weights_only=True since torch 2.6:
    # the same allow-list as the pipeline, so that v1's own loader runs unchanged.
    torch.serialization.add_safe_globals([(obj, name) for name, obj in PICKLE_GLOBALS.items()])
    folds = tuple(config["folds"])
    plans_file, trainers = plan_and_build(folds)
    _set_lesion_bias(trainers, config["cases"][config["bias_case"]], config["lesion_fraction"])
    model = Path(trainers[0].output_folder).parent  # output_folder is the fold's
    for trainer in trainers:
        trainer.save_checkpoint(str(Path(trainer.output_folder) / f"{CHECKPOINT}.model"))
    shutil.copy(plans_file, model / "plans.pkl")
    _seals_copy(model, model.parent / f"{SEALS_TRAINER}__{PLANS}", folds)

    from nnunet.inference.predict import predict_cases

    for name, case in config["cases"].items():
        predict_cases(str(model), [[case["dwi"], case["adc"]]], [str(work / "reference" / f"{name}.nii.gz")], folds,
                      save_npz=False, num_threads_preprocessing=1, num_threads_nifti_save=1, mixed_precision=True,
                      step_size=0.5, checkpoint_name=CHECKPOINT, disable_postprocessing=True)
    from isles_devkit.deepisles_seals import convert_case

    seals = config["seals_case"]
    converted = convert_case(Path(seals["dwi"]), Path(seals["adc"]), work / "seals" / "imagesTs")
    for fold in folds:  # nnunet_launcher.sh: one nnUNet_predict -f K -z --disable_postprocessing per fold
        predict_cases(str(model), [converted], [str(work / "seals" / f"fold{fold}" / "ISLES22_0001.nii.gz")], (fold,),
                      save_npz=True, num_threads_preprocessing=1, num_threads_nifti_save=1, mixed_precision=True,
                      step_size=0.5, checkpoint_name=CHECKPOINT, disable_postprocessing=True)


def plan_and_build(folds, shape=(22, 22, 22), spacing=(10.0, 10.0, 10.0), margin=3, base_features=8, seed=0):
    """v1's cropping, dataset analysis and planner on three generated training cases of ``shape``
    at ``spacing`` (a zero margin of ``margin`` voxels); one ``nnUNetTrainerV2`` per fold, its
    network built (random weights, seeded) but not saved. Call :func:`set_v1_paths` first."""
    import numpy as np
    import torch
    from nnunet.experiment_planning.DatasetAnalyzer import DatasetAnalyzer
    from nnunet.experiment_planning.experiment_planner_baseline_3DUNet_v21 import ExperimentPlanner3D_v21
    from nnunet.experiment_planning.utils import crop
    from nnunet.paths import network_training_output_dir, nnUNet_cropped_data, nnUNet_raw_data, preprocessing_output_dir
    from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2

    raw = Path(nnUNet_raw_data) / TASK
    cases = [f"case_{i:03d}" for i in range(3)]
    for i, case in enumerate(cases):
        _write_training_case(raw, case, seed=seed + i, shape=shape, spacing=spacing, margin=margin)
    dataset = {
        "name": TASK, "modality": {"0": "DWI", "1": "ADC"}, "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(cases), "numTest": 0, "test": [],
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    crop(TASK, False, 1)
    cropped = os.path.join(nnUNet_cropped_data, TASK)
    DatasetAnalyzer(cropped, overwrite=False, num_processes=1).analyze_dataset(False)
    preprocessed = os.path.join(preprocessing_output_dir, TASK)
    os.makedirs(preprocessed, exist_ok=True)
    shutil.copy(os.path.join(cropped, "dataset_properties.pkl"), preprocessed)
    shutil.copy(raw / "dataset.json", preprocessed)
    planner = ExperimentPlanner3D_v21(cropped, preprocessed)
    planner.unet_base_num_features = base_features  # v1's default is 32; the tests take 8 (16x fewer operations)
    planner.plan_experiment()
    plans_file = os.path.join(preprocessed, f"{PLANS}_plans_3D.pkl")
    output = os.path.join(network_training_output_dir, "3d_fullres", TASK, f"{TRAINER}__{PLANS}")
    trainers = []
    for fold in folds:
        torch.manual_seed(1000 + fold)
        trainer = nnUNetTrainerV2(plans_file, fold, output_folder=output, dataset_directory=preprocessed,
                                  batch_dice=True, stage=None, unpack_data=False, deterministic=True, fp16=False)
        trainer.initialize(False)
        # what an epoch of training leaves in the history: numpy scalars
        trainer.all_tr_losses, trainer.all_val_losses = [np.float64(0.61)], [np.float64(0.58)]
        trainer.all_val_eval_metrics = [np.mean([0.2, 0.3])]
        trainers.append(trainer)
    return plans_file, trainers


def _write_training_case(raw: Path, case: str, seed: int, shape=(22, 22, 22), spacing=(10.0, 10.0, 10.0), margin=3) -> None:
    """A DWI + ADC case (noise, a bright-DWI dark-ADC box lesion) with a zero margin, as a
    skull-stripped scan has: v1 crops it away and so normalises inside the nonzero mask."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    inside = np.zeros(shape, bool)
    inside[margin:-margin, margin:-margin, margin:-margin] = True
    lesion = np.zeros(shape, np.uint8)
    size = [max(2, n // 5) for n in shape]
    corner = [int(rng.integers(margin + 1, n - margin - s)) for n, s in zip(shape, size)]
    lesion[tuple(slice(c, c + s) for c, s in zip(corner, size))] = 1
    for k, contrast in enumerate((2.0, 0.5)):  # DWI bright, ADC dark in the lesion
        image = rng.normal(100.0 + 40 * k, 10.0, shape) * np.where(lesion > 0, contrast, 1.0) * inside
        (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), raw / "imagesTr" / f"{case}_{k:04d}.nii.gz")
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(lesion, affine), raw / "labelsTr" / f"{case}.nii.gz")


def _bias_parameters(network):
    """The last decoder block's instance norm and the output convolution (seg_outputs[-1])."""
    norm = network.conv_blocks_localization[-1][-1].blocks[-1].instnorm
    return norm, network.seg_outputs[-1]


def _set_lesion_bias(trainers, case: dict[str, str], fraction: float) -> None:
    import numpy as np
    import torch

    for trainer in trainers:
        norm, output = _bias_parameters(trainer.network)
        with torch.no_grad():
            norm.weight[0], norm.bias[0] = 0.0, 1.0
            output.weight[:, 0] = 0.0
    data, _, properties = trainers[0].preprocess_patient([case["dwi"], case["adc"]])
    softmax = np.mean([t.predict_preprocessed_data_return_seg_and_softmax(data, mixed_precision=False)[1] for t in trainers], axis=0)
    margin = np.log(np.clip(softmax[1], 1e-12, None)) - np.log(np.clip(softmax[0], 1e-12, None))
    shift = -float(np.quantile(margin[data[0] != 0], 1 - fraction))
    for trainer in trainers:
        with torch.no_grad():
            _bias_parameters(trainer.network)[1].weight[1, 0] = shift


def _seals_copy(model: Path, seals: Path, folds) -> None:
    """The folder as SEALS ships it: trained with nnUNetTrainerV2_DDP, whose __init__ takes
    local_rank after fold and distribute_batch_size before fp16, and whose checkpoints hold the
    DistributedDataParallel module's weights ('module.' prefix)."""
    import pickle

    import torch

    seals.mkdir(parents=True, exist_ok=True)
    shutil.copy(model / "plans.pkl", seals / "plans.pkl")
    for fold in folds:
        (seals / f"fold_{fold}").mkdir(exist_ok=True)
        with open(model / f"fold_{fold}" / f"{CHECKPOINT}.model.pkl", "rb") as f:
            info = pickle.load(f)  # a file this child wrote
        plans_file, fold_, output, dataset, batch_dice, stage, unpack, deterministic, fp16 = info["init"]
        info["init"] = (plans_file, fold_, 0, output, dataset, batch_dice, stage, unpack, deterministic, False, fp16)
        info["name"] = SEALS_TRAINER
        with open(seals / f"fold_{fold}" / f"{CHECKPOINT}.model.pkl", "wb") as f:
            pickle.dump(info, f)
        checkpoint = torch.load(model / f"fold_{fold}" / f"{CHECKPOINT}.model", weights_only=True)
        checkpoint["state_dict"] = {f"module.{k}": v for k, v in checkpoint["state_dict"].items()}
        torch.save(checkpoint, seals / f"fold_{fold}" / f"{CHECKPOINT}.model")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
