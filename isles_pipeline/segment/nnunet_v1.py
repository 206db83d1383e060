"""nnU-Net v1 trained-model folders, run through nnU-Net v1's own code (``nnunet`` 1.7.1, the
``nnunet1`` extra).

What v1's ``predict_cases`` does for a 3d_fullres model is done here with v1's own functions, on
arrays instead of files: ``ImageCropper.crop`` (crop to the nonzero union of the channels), the
plans' preprocessor's ``resample_and_normalize`` (target spacing, separate z, z-score),
``Generic_UNet.predict_3D`` per fold (sliding window, Gaussian weighting, mirroring; the
softmaxes of the folds averaged), and ``resample_data_or_seg`` back to the cropped grid as
``save_segmentation_nifti_from_softmax`` decides it (order 1, separate z likewise), then argmax
and the crop box pasted into a zero volume. The input array is what v1's SimpleITK reader makes of
the image: the voxel axes reversed (z, y, x) and the spacing with them.

What is not v1's: the files are read by :mod:`.nnunet_v1_files` (an allow-list instead of
``pickle.load``), and the network is built from the plans as ``nnUNetTrainerV2.initialize_network``
builds it instead of by importing the trainer class ``.model.pkl`` names. ``postprocessing.json``
(v1's optional largest-component step) is not applied, as DeepISLES runs SEALS
(``--disable_postprocessing``) and as nnunetv2's predictor does not.

nnU-Net v1 prints on import (a citation, and a warning per unset ``nnUNet_raw_data_base``,
``nnUNet_preprocessed``, ``RESULTS_FOLDER``: none is needed for inference) and while it predicts;
every call into it here prints to stderr, so that a command's stdout stays its JSON summary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..formatting import first_line
from .base import prints_to_stderr
from .nnunet_v1_files import (
    V1ModelError,
    available_folds,
    channel_names_of,
    load_checkpoint,
    pick_checkpoint_name,
    read_fold_files,
)

# The preprocessors of nnunet.preprocessing.preprocessing a plans file may name (3-D ones).
PREPROCESSORS = ("GenericPreprocessor", "GenericPreprocessor_linearResampling")
# nnUNetTrainerV2's test-time mirroring of a 3-D network (default_3D_augmentation_params).
MIRROR_AXES = (0, 1, 2)


def import_v1():
    """Import nnU-Net v1 quietly (its import prints), or say how to install it."""
    try:
        with prints_to_stderr():
            import nnunet.inference.segmentation_export  # noqa: F401
            import nnunet.network_architecture.generic_UNet  # noqa: F401
            import nnunet.preprocessing.cropping  # noqa: F401
            import nnunet.preprocessing.preprocessing  # noqa: F401
    except ImportError as exc:
        raise V1ModelError(
            f"nnU-Net v1 models need nnU-Net v1 ({exc.name or exc}): pip install torch==<your torch> 'isles_pipeline[nnunet1]'"
        ) from None


class NnUNetV1Model:
    """A v1 trained-model folder ready to predict: the plans of its stage, every fold's weights in
    memory (as v1's ``load_model_and_checkpoint_files`` keeps them) and one network on ``device``
    that each fold's weights are loaded into in turn, as v1's ``predict_cases`` does."""

    def __init__(
        self,
        folder: Path,
        device: torch.device,
        tile_step_size: float = 0.5,
        use_gaussian: bool = True,
        use_mirroring: bool = True,
        folds: Sequence[int | str] | None = None,
        checkpoint_name: str | None = None,
    ):
        import_v1()
        self.folder = Path(folder)
        self.checkpoint_name = pick_checkpoint_name(self.folder, checkpoint_name)
        present = available_folds(self.folder, self.checkpoint_name)
        self.folds = tuple(folds) if folds else present
        missing = [fold for fold in self.folds if fold not in present]
        if missing:
            raise V1ModelError(f"nnU-Net v1 model folder {str(self.folder)!r} has no {self.checkpoint_name}.model (+ .pkl) "
                               f"for fold(s) {', '.join(map(str, missing))} (present: {', '.join(map(str, present))})")
        files = read_fold_files(self.folder, self.folds, self.checkpoint_name)
        self.trainer, self.plans, self.stage = files.trainer, files.plans, files.stage
        self.stage_plans = self.plans["plans_per_stage"][self.stage]
        self.patch_size = np.array(self.stage_plans["patch_size"]).astype(int)
        if len(self.patch_size) != 3:
            raise V1ModelError(f"nnU-Net v1 model {self.folder}: only 3-D networks are supported (patch size {list(self.patch_size)})")
        self.transpose_forward = list(self.plans.get("transpose_forward") or [0, 1, 2])
        self.transpose_backward = list(self.plans.get("transpose_backward") or [0, 1, 2])
        self.checkpoints = files.checkpoints
        self.state_dicts = [load_checkpoint(path)["state_dict"] for path in files.checkpoints]
        self.tile_step_size, self.use_gaussian, self.use_mirroring = tile_step_size, use_gaussian, use_mirroring
        self.device = device
        self.network = self.build_network(device)
        self._cpu_network = None

    @property
    def channel_names(self) -> dict[str, str]:
        return channel_names_of(self.plans, self.checkpoints[0])

    # ---------------------------------------------------------------- the network
    def build_network(self, device: torch.device) -> torch.nn.Module:
        """Generic_UNet exactly as ``nnUNetTrainerV2.initialize_network`` makes it from the plans
        (instance norm eps 1e-5, LeakyReLU 0.01, strided-conv pooling, transposed-conv upsampling),
        with deep supervision off and softmax as the inference non-linearity."""
        from nnunet.network_architecture.generic_UNet import Generic_UNet
        from nnunet.network_architecture.initialization import InitWeights_He
        from nnunet.utilities.nd_softmax import softmax_helper
        from torch import nn

        plans = self.plans
        network = Generic_UNet(
            plans["num_modalities"], plans["base_num_features"], plans["num_classes"] + 1,
            len(self.stage_plans["pool_op_kernel_sizes"]), plans.get("conv_per_stage", 2), 2,
            nn.Conv3d, nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, nn.Dropout3d, {"p": 0, "inplace": True},
            nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True}, True, False, lambda x: x, InitWeights_He(1e-2),
            self.stage_plans["pool_op_kernel_sizes"], self.stage_plans["conv_kernel_sizes"], False, True, True,
        )
        network.inference_apply_nonlin = softmax_helper
        network.do_ds = False
        return network.to(device).eval()

    def _load_fold(self, network: torch.nn.Module, index: int) -> None:
        """One fold's weights into the network (a DistributedDataParallel 'module.' prefix dropped,
        as v1's ``load_checkpoint_ram`` does)."""
        expected = set(network.state_dict())
        weights = {
            (key[len("module.") :] if key not in expected and key.startswith("module.") else key): value
            for key, value in self.state_dicts[index].items()
        }
        try:
            network.load_state_dict(weights)
        except RuntimeError as exc:
            raise V1ModelError(f"{self.checkpoints[index]}: weights do not fit the network the plans describe ({first_line(exc)})") from None

    # ---------------------------------------------------------------- v1's steps
    def preprocess(self, data: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, dict]:
        """``data`` (C, z, y, x) with ``spacing`` (z, y, x) as v1's ``preprocess_patient`` leaves
        it: cropped, transposed, resampled to the stage's spacing and normalised; and its properties."""
        from collections import OrderedDict

        import nnunet.preprocessing.preprocessing as v1_preprocessing
        from nnunet.preprocessing.cropping import ImageCropper

        if not np.any(data):
            raise ValueError(f"nnU-Net v1 model {self.folder}: every input channel is zero (v1 crops to the nonzero voxels)")
        name = self.plans.get("preprocessor_name") or "GenericPreprocessor"
        if name not in PREPROCESSORS:
            raise V1ModelError(f"nnU-Net v1 model {self.folder}: preprocessor {name} is not supported ({', '.join(PREPROCESSORS)} are)")
        properties = OrderedDict(
            original_size_of_raw_data=np.array(data.shape[1:]),
            original_spacing=np.array(spacing, dtype=float),
        )
        preprocessor = getattr(v1_preprocessing, name)(
            self.plans["normalization_schemes"], self.plans["use_mask_for_norm"], self.transpose_forward,
            self.plans["dataset_properties"]["intensityproperties"],
        )
        with prints_to_stderr():
            cropped, seg, properties = ImageCropper.crop(np.asarray(data, np.float32).copy(), properties, None)
            axes = (0, *[i + 1 for i in self.transpose_forward])
            cropped, seg = cropped.transpose(axes), seg.transpose(axes)
            cropped, _, properties = preprocessor.resample_and_normalize(cropped, self.stage_plans["current_spacing"], properties, seg)
        return cropped.astype(np.float32), properties

    def fold_softmax(self, data: np.ndarray, index: int, network: torch.nn.Module | None = None) -> np.ndarray:
        """One fold's softmax on the preprocessed grid (``predict_preprocessed_data_return_seg_and_softmax``
        with nnUNet_predict's settings: sliding window, mixed precision on CUDA)."""
        network = self.network if network is None else network
        self._load_fold(network, index)
        with prints_to_stderr():
            _, softmax = network.predict_3D(
                data, do_mirroring=self.use_mirroring, mirror_axes=MIRROR_AXES, use_sliding_window=True,
                step_size=self.tile_step_size, patch_size=self.patch_size, regions_class_order=None,
                use_gaussian=self.use_gaussian, pad_border_mode="constant", pad_kwargs={"constant_values": 0},
                all_in_gpu=False, verbose=False, mixed_precision=next(network.parameters()).is_cuda,
            )
        return softmax

    def to_cropped_grid(self, softmax: np.ndarray, properties: dict) -> np.ndarray:
        """The softmax back on the cropped input grid, as ``save_segmentation_nifti_from_softmax``
        resamples it (the plans' ``segmentation_export_params``, else order 1, z order 0, separate
        z decided from the original spacing, then from the stage's)."""
        from nnunet.preprocessing.preprocessing import get_do_separate_z, get_lowres_axis, resample_data_or_seg

        softmax = softmax.transpose([0] + [i + 1 for i in self.transpose_backward])
        export = self.plans.get("segmentation_export_params") or {}
        force_separate_z = export.get("force_separate_z")
        order, order_z = export.get("interpolation_order", 1), export.get("interpolation_order_z", 0)
        target = properties["size_after_cropping"]
        if tuple(softmax.shape[1:]) == tuple(target):
            return softmax
        if force_separate_z is None:
            if get_do_separate_z(properties["original_spacing"]):
                separate_z, axis = True, get_lowres_axis(properties["original_spacing"])
            elif get_do_separate_z(properties["spacing_after_resampling"]):
                separate_z, axis = True, get_lowres_axis(properties["spacing_after_resampling"])
            else:
                separate_z, axis = False, None
        else:
            separate_z = force_separate_z
            axis = get_lowres_axis(properties["original_spacing"]) if separate_z else None
        if axis is not None and len(axis) != 1:
            separate_z = False
        with prints_to_stderr():
            return resample_data_or_seg(softmax, target, is_seg=False, axis=axis, order=order, do_separate_z=separate_z, order_z=order_z)

    @staticmethod
    def paste(values: np.ndarray, properties: dict, fill: float = 0) -> np.ndarray:
        """``values`` (..., cropped grid) placed in the crop box of the uncropped grid, ``fill`` elsewhere."""
        shape = tuple(int(n) for n in properties["original_size_of_raw_data"])
        out = np.full(values.shape[:-3] + shape, fill, dtype=values.dtype)
        (z0, z1), (y0, y1), (x0, x1) = properties["crop_bbox"]
        out[..., z0:z1, y0:y1, x0:x1] = values
        return out

    # ---------------------------------------------------------------- a case
    def predict(self, data: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, dict]:
        """The label map (z, y, x) v1's ``predict_cases`` writes for these channels, and a record
        of the run (device, seconds, fallbacks)."""
        started = time.perf_counter()
        preprocessed, properties = self.preprocess(data, spacing)
        softmaxes, device, fallbacks = self.fold_softmaxes(preprocessed)
        softmax = softmaxes[0]
        for other in softmaxes[1:]:  # as predict_cases: summed in fold order, then divided
            softmax += other
        if len(softmaxes) > 1:
            softmax /= len(softmaxes)
        labels = self.paste(self.to_cropped_grid(softmax, properties).argmax(0).astype(np.uint8), properties)
        return labels, {"device": device, "seconds": time.perf_counter() - started, "fallbacks": fallbacks}

    def fold_softmaxes(self, preprocessed: np.ndarray) -> tuple[list[np.ndarray], str, list[str]]:
        """Every fold's softmax on the preprocessed grid. A CUDA out-of-memory error reruns the
        case on a CPU copy of the network, and the fallback says so."""
        try:
            return [self.fold_softmax(preprocessed, i) for i in range(len(self.folds))], str(self.device), []
        except torch.OutOfMemoryError as exc:
            if self.device.type != "cuda":
                raise
            fallback = f"out of memory on {self.device} ({first_line(exc)}); retried on cpu"
        torch.cuda.empty_cache()
        if self._cpu_network is None:
            self._cpu_network = self.build_network(torch.device("cpu"))
        softmaxes = [self.fold_softmax(preprocessed, i, self._cpu_network) for i in range(len(self.folds))]
        return softmaxes, "cpu", [fallback]
