"""Tiny nnU-Net v2 trained-model folders for the tests and benchmarks, made with nnunetv2's own tools.

A raw dataset of a few generated cases (a bright box lesion) goes through nnunetv2's fingerprint
extractor and experiment planner (its U-Net narrowed, for speed); the network comes from the plans through nnunetv2's trainer
class, and each fold's weights are saved in nnU-Net's checkpoint format. The weights are random;
the lesion logit's bias is set so that the mask is neither empty nor full.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from isles_devkit.processes import run_in_own_group
from isles_pipeline.segment.channels import column_for_channel

CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"


def write_case(folder: Path, case: str, channels: Sequence[str], seed: int, shape=(32, 32, 32), spacing=(1.5, 1.5, 2.0)):
    """One case's channel images ``case_000K.nii.gz`` and its box lesion; returns {shard column: path}."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    lesion = np.zeros(shape, np.uint8)
    size = [max(2, n // 4) for n in shape]
    lo = [int(rng.integers(n // 5, n - s - n // 5 + 1)) for n, s in zip(shape, size, strict=True)]
    lesion[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = 1
    paths = {}
    for k, name in enumerate(channels):
        base = rng.normal(100.0 + 40 * k, 10.0, shape).astype(np.float32)
        image = np.where(lesion > 0, base * (2.0 if k % 2 == 0 else 0.5), base).astype(np.float32)
        path = folder / "imagesTr" / f"{case}_{k:04d}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, affine), path)
        paths[column_for_channel(name)] = path
    label = folder / "labelsTr" / f"{case}.nii.gz"
    label.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(lesion, affine), label)
    return paths


def build_model_folder(
    work: Path, monkeypatch, channels: Sequence[str] = ("DWI", "ADC"), folds: Sequence[int] = (0, 1),
    dataset_id: int = 501, cases: int = 3, lesion_fraction: float = 0.1,
    shape: Sequence[int] = (32, 32, 32), spacing: Sequence[float] = (1.5, 1.5, 2.0),
) -> tuple[Path, list[dict[str, Path]]]:
    """A trained-model folder (dataset.json, plans.json, fold_K/checkpoint_final.pth) and the
    raw cases' image paths."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / variable).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(variable, str(work / variable))
    name = f"Dataset{dataset_id:03d}_Tiny"
    raw = work / "nnUNet_raw" / name
    case_paths = [write_case(raw, f"case_{i:03d}", channels, seed=i, shape=tuple(shape), spacing=tuple(spacing)) for i in range(cases)]
    dataset_json = {
        "channel_names": {str(k): channel for k, channel in enumerate(channels)},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    # The explicit file list keeps nnunetv2 from listing the files with a fork()ed Pool, which can
    # deadlock (a forked worker waits forever on a lock another thread held at the fork).
    listed = {f"case_{i:03d}": {"images": [str(p.relative_to(raw)) for p in paths.values()], "label": f"labelsTr/case_{i:03d}.nii.gz"}
              for i, paths in enumerate(case_paths)}
    (raw / "dataset.json").write_text(json.dumps({**dataset_json, "dataset": listed}, indent=2))
    _plan(dataset_id)
    plans_file = work / "nnUNet_preprocessed" / name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    # The planner's U-Net (32 features and up) as a narrow one: same stages, kernels and strides, a
    # sixteenth of the channels, so that the tests' CPU predictions take a fraction of the time.
    architecture = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    architecture["features_per_stage"] = [max(2, features // 8) for features in architecture["features_per_stage"]]

    model = work / "nnUNet_results" / name / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}"
    model.mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (model / "plans.json").write_text(json.dumps(plans, indent=2))
    manager = PlansManager(plans)
    configuration = manager.get_configuration(CONFIGURATION)
    heads = manager.get_label_manager(dataset_json).num_segmentation_heads
    for fold in folds:
        torch.manual_seed(1000 + fold)
        network = nnUNetTrainer.build_network_architecture(
            manager, configuration, len(channels), heads, enable_deep_supervision=False
        )
        _save_checkpoint(model / f"fold_{fold}" / "checkpoint_final.pth", network, fold)
    set_lesion_bias(model, folds, case_paths[0], lesion_fraction)
    return model, case_paths


def _plan(dataset_id: int) -> None:
    """nnunetv2's fingerprint and planner, in a fresh interpreter and its own process group: the
    fingerprint extractor starts a (spawned) worker pool, which must not outlive a failed run."""
    script = (
        "import sys\n"
        "from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, plan_experiment_dataset\n"
        "extract_fingerprint_dataset(int(sys.argv[1]), num_processes=1, verbose=False, show_progress_bar=False)\n"
        "plan_experiment_dataset(int(sys.argv[1]))\n"
    )
    done = run_in_own_group([sys.executable, "-c", script, str(dataset_id)], env=dict(os.environ))
    assert done.returncode == 0, f"nnU-Net planning failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def _save_checkpoint(path: Path, network: torch.nn.Module, fold: int) -> None:
    """nnU-Net's checkpoint dict (what ``nnUNetTrainer.save_checkpoint`` writes and the predictor reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "network_weights": network.state_dict(),
            "init_args": {"plans": None, "configuration": CONFIGURATION, "fold": fold, "dataset_json": None},
            "trainer_name": TRAINER,
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "current_epoch": 1,
        },
        path,
    )


def set_lesion_bias(model: Path, folds: Sequence[int], images: dict[str, Path], fraction: float) -> None:
    """Shift the lesion logit (same shift in every fold) so that ``fraction`` of the first case's
    voxels are lesion. nnU-Net averages logits over tiles, mirrors and folds, so a bias shift moves
    the averaged logit by exactly that amount."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=tuple(folds))
    data, properties = SimpleITKIO().read_images([str(p) for p in images.values()])
    _, probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
    margin = np.log(np.clip(probabilities[1], 1e-12, None)) - np.log(np.clip(probabilities[0], 1e-12, None))
    shift = -float(np.quantile(margin, 1 - fraction))
    for fold in folds:
        path = model / f"fold_{fold}" / "checkpoint_final.pth"
        checkpoint = torch.load(path, weights_only=False)
        weights = checkpoint["network_weights"]
        # The last deep-supervision head is the full-resolution output the predictor uses.
        key = max((k for k in weights if k.startswith("decoder.seg_layers.") and k.endswith(".bias")), key=lambda k: int(k.split(".")[2]))
        checkpoint["network_weights"][key][1] += shift
        torch.save(checkpoint, path)
