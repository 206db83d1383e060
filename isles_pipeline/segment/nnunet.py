"""nnU-Net v2 trained-model folders, run through nnunetv2's own ``nnUNetPredictor``.

A model folder holds ``dataset.json`` (its ``channel_names`` say which images it reads),
``plans.json`` and ``fold_K/checkpoint_final.pth`` (or ``checkpoint_best.pth``); every fold
present, or the ones asked for, is ensembled as nnU-Net does (mean of the logits). The folder is
a local path or a Hub model repo ``[hf://]org/name[@revision][:subfolder]``, downloaded by
``snapshot_download`` as the ``network`` segmenter's checkpoints are
(:mod:`~isles_pipeline.segment.hub_models`).

nnU-Net reads images with the reader its plans name; ``SimpleITKIO`` and ``NibabelIO`` both hand
the network the voxel array with its axes reversed (z, y, x) and the spacing reversed, and
``NibabelIOWithReorient`` first reorients to the closest canonical (RAS) axes. This module builds
exactly that array from the case's images and the affine, so the mask equals what nnU-Net's
own file-based prediction gives, and it maps the mask back onto the input grid.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from isles_pipeline.formatting import first_line
from isles_pipeline.nifti import voxel_sizes_mm
from isles_pipeline.segment.base import prints_to_stderr, resolve_device
from isles_pipeline.segment.channels import columns_for_channels, folder_channel_names
from isles_pipeline.segment.hub_models import HUB_PREFIX, CheckpointError, download_model_folder, parse_hub_spec
from isles_pipeline.segment.nnunet_v1_files import is_v1_folder
from isles_pipeline.segment.seals import RECIPES, check_recipe, seals_mask

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
# Readers whose array layout is the image's voxel axes reversed; the *Reorient ones reorient first.
PLAIN_READERS = ("SimpleITKIO", "NibabelIO")
REORIENTING_READERS = ("NibabelIOWithReorient",)


def resolve_model_folder(spec: str | os.PathLike[str], endpoint: str | None = None) -> Path:
    """A local trained-model folder for ``spec`` (a path, or a Hub repo downloaded into the HF cache)."""
    text = os.fspath(spec)
    local = Path(text).expanduser()
    if not text.startswith(HUB_PREFIX) and local.exists():
        folder = local
    elif parse_hub_spec(text) is not None:
        folder = download_model_folder(text, endpoint)
    else:
        raise CheckpointError(f"nnU-Net model {text!r}: no such folder and not a Hub repo id (org/name)")
    if is_v1_folder(folder):
        return folder
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise CheckpointError(f"nnU-Net model folder {str(folder)!r} has no {name} (nor an nnU-Net v1 plans.pkl)")
    return folder


def available_folds(folder: Path, checkpoint_name: str) -> tuple[int | str, ...]:
    """The folds whose ``checkpoint_name`` exists, in fold order (``fold_all`` last)."""
    found = [p.name[len("fold_") :] for p in folder.glob("fold_*") if (p / checkpoint_name).is_file()]
    return tuple(sorted(int(f) for f in found if f.isdigit())) + (("all",) if "all" in found else ())


def pick_checkpoint_name(folder: Path, checkpoint_name: str | None) -> str:
    """``checkpoint_name`` as given, else checkpoint_final.pth where any fold has it, else checkpoint_best.pth."""
    names = (checkpoint_name,) if checkpoint_name else CHECKPOINT_NAMES
    for name in names:
        if available_folds(folder, name):
            return name
    raise CheckpointError(f"nnU-Net model folder {str(folder)!r} has no fold_*/{' or '.join(names)}")


def to_nnunet_layout(volume: np.ndarray, affine: np.ndarray, reader: str) -> np.ndarray:
    """The array nnU-Net's ``reader`` would make of this image (voxel axes reversed, maybe reoriented)."""
    if reader in REORIENTING_READERS:
        volume = apply_orientation(volume, io_orientation(affine))
    return np.ascontiguousarray(volume.transpose(2, 1, 0))


def from_nnunet_layout(mask: np.ndarray, affine: np.ndarray, shape: Sequence[int], reader: str) -> np.ndarray:
    """The inverse of :func:`to_nnunet_layout`: a mask back on the input voxel grid."""
    mask = mask.transpose(2, 1, 0)
    if reader in REORIENTING_READERS:
        to_canonical = io_orientation(affine)
        back = ornt_transform(np.column_stack([np.arange(3), np.ones(3)]), to_canonical)
        mask = apply_orientation(mask, back)
    if tuple(mask.shape) != tuple(shape):
        raise RuntimeError(f"nnU-Net returned shape {mask.shape} for input shape {tuple(shape)}")
    return np.ascontiguousarray(mask)


def nnunet_spacing(affine: np.ndarray, reader: str, spacing: Sequence[float] | None = None) -> list[float]:
    """The spacing nnU-Net's reader reports: the header's voxel sizes (``spacing``; without it the
    affine's column norms) in its (reversed) axis order."""
    sizes = np.asarray(voxel_sizes_mm(affine) if spacing is None else spacing, dtype=float)
    if reader in REORIENTING_READERS:
        reoriented = np.empty(3)
        reoriented[io_orientation(affine)[:, 0].astype(int)] = sizes
        sizes = reoriented
    return [float(s) for s in sizes[::-1]]


def _release_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class NnUNetSegmenter:
    """Segmenter protocol implementation (name ``"nnunet"``) over an nnU-Net v2 model folder, or
    a v1 one (``plans.pkl``), which :mod:`.nnunet_v1` runs (with DeepISLES' SEALS steps around it
    when ``recipe="deepisles-seals"``, see :mod:`.seals`).

    The predictor (network and every fold's weights) is built once, on first use, and reused for
    every case. ``tile_step_size``, ``use_gaussian`` and ``use_mirroring`` default to nnU-Net's.
    ``last_info`` holds, after each case, the device that ran, the folds and the seconds. A CUDA
    out-of-memory error that nnU-Net's own retry does not absorb reruns the case on the CPU, and
    ``fallbacks`` says so.
    """

    name = "nnunet"

    def __init__(
        self,
        model: str | os.PathLike[str],
        device: str | torch.device = "auto",
        tile_step_size: float | None = None,
        use_gaussian: bool | None = None,
        use_mirroring: bool | None = None,
        folds: Sequence[int | str] | None = None,
        checkpoint_name: str | None = None,
        endpoint: str | None = None,
        recipe: str | None = None,
    ):
        self.tile_step_size = 0.5 if tile_step_size is None else float(tile_step_size)
        if not 0 < self.tile_step_size <= 1:
            raise ValueError(f"tile_step_size must be in (0, 1], got {self.tile_step_size}")
        self.use_gaussian = True if use_gaussian is None else bool(use_gaussian)
        self.use_mirroring = True if use_mirroring is None else bool(use_mirroring)
        self.model = os.fspath(model)
        self.device = resolve_device(device)
        self.folds = tuple(folds) if folds else None
        self.checkpoint_name = checkpoint_name
        self.endpoint = endpoint
        self.recipe = recipe
        if recipe is not None and recipe not in RECIPES:
            raise ValueError(f"unknown nnU-Net recipe {recipe!r} (known: {', '.join(RECIPES)})")
        self.version = 2  # 1 once load() finds a v1 folder
        self.folder: Path | None = None
        self.columns: tuple[str, ...] = ()
        self.reader = "SimpleITKIO"
        self._predictor = None
        self._cpu = None
        self.last_info: dict[str, object] = {}

    def load(self):
        """Resolve the folder and build nnU-Net's predictor (once per instance)."""
        if self._predictor is None:
            folder = resolve_model_folder(self.model, self.endpoint)
            if is_v1_folder(folder):  # nnU-Net v1's code, not nnunetv2's (either extra may be installed alone)
                return self._load_v1(folder)
            if self.recipe is not None:
                raise ValueError(f"nnU-Net model {self.model}: recipe {self.recipe} runs nnU-Net v1 folders (plans.pkl); this is a v2 folder")
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            self.columns = columns_for_channels(folder_channel_names(folder), f"nnU-Net model {self.model}")
            self.reader = json.loads((folder / "plans.json").read_text()).get("image_reader_writer", "SimpleITKIO")
            if self.reader not in PLAIN_READERS + REORIENTING_READERS:
                raise CheckpointError(f"nnU-Net model {self.model}: image reader {self.reader!r} is not supported ({', '.join(PLAIN_READERS + REORIENTING_READERS)} are)")
            name = pick_checkpoint_name(folder, self.checkpoint_name)
            folds = self.folds or available_folds(folder, name)
            with prints_to_stderr():
                predictor = self._build_predictor(nnUNetPredictor, folder, name, folds)
            self.folder, self.folds, self.checkpoint_name, self._predictor = folder, tuple(folds), name, predictor
        return self._predictor

    def _load_v1(self, folder: Path):
        """A v1 folder: its model, built once (every fold's weights loaded through the allow-list)."""
        from .nnunet_v1 import NnUNetV1Model

        model = NnUNetV1Model(folder, self.device, self.tile_step_size, self.use_gaussian, self.use_mirroring, self.folds, self.checkpoint_name)
        self.columns = columns_for_channels(model.channel_names, f"nnU-Net model {self.model}")
        check_recipe(self.recipe, self.columns, self.model)
        self.version, self.folder, self.folds, self.checkpoint_name, self._predictor = 1, folder, model.folds, model.checkpoint_name, model
        return model

    def _segment_v1(self, model, images: Mapping[str, np.ndarray], affine: np.ndarray, spacing) -> tuple[np.ndarray, dict]:
        """v1 reads with SimpleITK, as the plain v2 readers do: voxel axes and spacing reversed."""
        if self.recipe is not None:
            return seals_mask(model, images, affine, spacing)
        shape = np.shape(images[self.columns[0]])
        stacked = np.stack([to_nnunet_layout(np.asarray(images[c], np.float32), affine, "SimpleITKIO") for c in self.columns])
        labels, info = model.predict(stacked, nnunet_spacing(affine, "SimpleITKIO", spacing))
        return from_nnunet_layout(labels > 0, affine, shape, "SimpleITKIO"), info

    def _build_predictor(self, predictor_class, folder: Path, checkpoint_name: str, folds):
        predictor = predictor_class(
            tile_step_size=self.tile_step_size,
            use_gaussian=self.use_gaussian,
            use_mirroring=self.use_mirroring,
            device=self.device,
            allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds), checkpoint_name=checkpoint_name)
        return predictor

    def segment_images(self, images: Mapping[str, np.ndarray], affine: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """The boolean lesion mask (any non-background label) of one case on its input grid;
        ``spacing`` is the header's voxel sizes, what nnU-Net's readers report."""
        predictor = self.load()
        missing = [column for column in self.columns if column not in images]
        if missing:
            raise ValueError(
                f"nnU-Net model {self.model} reads {', '.join(self.columns)}; the case has no "
                f"{', '.join(missing)} (it has {', '.join(images) or 'no images'})"
            )
        if self.version == 1:
            mask, info = self._segment_v1(predictor, images, affine, spacing)
            self.last_info = {
                **info, "nnunet_version": 1, "folds": list(self.folds or ()), "checkpoint_name": self.checkpoint_name,
                "channels": list(self.columns), "tile_step_size": self.tile_step_size, "use_mirroring": self.use_mirroring,
                "recipe": self.recipe,
            }
            return mask
        shape = np.shape(images[self.columns[0]])
        stacked = np.stack([to_nnunet_layout(np.asarray(images[c], np.float32), affine, self.reader) for c in self.columns])
        started = time.perf_counter()
        properties = {"spacing": nnunet_spacing(affine, self.reader, spacing)}
        fallbacks: list[str] = []
        try:
            labels = self._predict(predictor, stacked, properties)
        except torch.OutOfMemoryError as exc:
            if predictor.device.type != "cuda":
                raise
            # nnU-Net already retries a CUDA OOM with its results on the CPU; past that, the CPU.
            fallbacks.append(f"out of memory on {predictor.device} ({first_line(exc)}); retried on cpu")
            _release_cuda_cache()
            predictor = self._cpu_predictor()
            labels = self._predict(predictor, stacked, properties)
        mask = from_nnunet_layout(np.asarray(labels) > 0, affine, shape, self.reader)
        self.last_info = {
            "device": str(predictor.device),
            "folds": list(self.folds or ()),
            "checkpoint_name": self.checkpoint_name,
            "channels": list(self.columns),
            "tile_step_size": self.tile_step_size,
            "use_gaussian": self.use_gaussian,
            "use_mirroring": self.use_mirroring,
            "seconds": time.perf_counter() - started,
            "fallbacks": fallbacks,
        }
        return mask

    def _predict(self, predictor, stacked: np.ndarray, properties: dict) -> np.ndarray:
        with prints_to_stderr():
            return predictor.predict_single_npy_array(stacked, properties)

    def _cpu_predictor(self):
        """A CPU copy of the predictor for out-of-memory fallbacks (built once, on first need)."""
        if self._cpu is None:
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            self.load()
            assert self.folder is not None
            saved, self.device = self.device, torch.device("cpu")
            try:
                with prints_to_stderr():
                    self._cpu = self._build_predictor(nnUNetPredictor, self.folder, self.checkpoint_name, self.folds)
            finally:
                self.device = saved
        return self._cpu

    def segment(self, dwi: np.ndarray, adc: np.ndarray, affine: np.ndarray) -> np.ndarray:
        return self.segment_images({"dwi": dwi, "adc": adc}, affine)
