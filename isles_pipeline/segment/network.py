"""Deep-learning segmentation: an ensemble of 3-D networks run with the NVAUTO (DeepISLES) recipe.

Per case, entirely on the segmenter's device: stack [ADC, DWI] -> resample to the target spacing
along the voxel axes (trilinear) -> z-score each channel over its non-zero voxels -> sliding-window
inference of every model (Gaussian blending, mixed precision on CUDA) -> average the softmaxes ->
resample the probabilities back to the input grid -> argmax. Only the final mask leaves the device.

When CUDA runs out of memory the case is retried with ``sw_batch_size=1``, then on the CPU.
After each case ``last_info`` (a dict, as for the rule segmenter) holds the device that produced
the mask, the batch size, whether AMP ran, the grids, the ROI, the seconds and the fallbacks taken.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from isles_pipeline.segment.base import resolve_device
from isles_pipeline.segment.checkpoints import LoadedModel, load_models
from isles_pipeline.segment.resample import resampled_shape, resize, voxel_sizes, zscore_nonzero

CheckpointSpecs = str | os.PathLike[str] | Sequence[str | os.PathLike[str] | torch.nn.Module]
CPU = torch.device("cpu")
SPEC_SEPARATOR = ";"


class NetworkSegmenter:
    """Segmenter protocol implementation (name ``"network"``) over one or more checkpoints.

    ``checkpoints``: a spec or list of specs understood by
    :func:`~isles_pipeline.segment.checkpoints.resolve_checkpoint_files` (local ``.ts``/``.pt``
    files or folders, Hub ``org/name[@rev][:patterns]``), or in-memory ``torch.nn.Module`` s.
    Models are loaded once, on first use (or by :meth:`load`), and reused for every case.
    """

    name = "network"

    def __init__(
        self,
        checkpoints: CheckpointSpecs,
        device: str | torch.device = "auto",
        target_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        roi_size: Sequence[int] = (192, 192, 128),
        overlap: float = 0.625,
        sw_batch_size: int = 2,
        amp: bool = True,
        endpoint: str | None = None,
        size_divisible: int = 16,
    ):
        if len(target_spacing) != 3 or len(roi_size) != 3:
            raise ValueError("target_spacing and roi_size need three values (one per voxel axis)")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.checkpoints = checkpoints
        self.device = resolve_device(device)
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = float(overlap)
        self.sw_batch_size = max(1, int(sw_batch_size))
        self.amp = bool(amp)
        self.endpoint = endpoint
        self.size_divisible = max(1, int(size_divisible))
        self._models: list[LoadedModel] | None = None
        self.last_info: dict[str, object] = {}

    @classmethod
    def from_spec(cls, spec: str, device: str | torch.device = "auto", **options: object) -> NetworkSegmenter:
        """Build from one string (``ISLES_CHECKPOINT``): specs separated by ``;`` are ensembled
        (``,`` is taken: it separates file patterns inside a Hub spec)."""
        specs = [part.strip() for part in spec.split(SPEC_SEPARATOR) if part.strip()]
        if not specs:
            raise ValueError("empty checkpoint spec")
        return cls(specs, device=device, **options)  # type: ignore[arg-type]

    def load(self) -> list[LoadedModel]:
        """Resolve, download and load the checkpoints (once per instance)."""
        if self._models is None:
            self._models = load_models(self.checkpoints, self.device, self.endpoint)
        return self._models

    def segment(self, dwi: np.ndarray, adc: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """The boolean lesion mask of one case on its input grid."""
        if dwi.ndim != 3 or dwi.shape != adc.shape:
            raise ValueError(f"dwi {dwi.shape} and adc {adc.shape} must be 3-D arrays of one shape")
        if np.asarray(affine).shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {np.asarray(affine).shape}")
        models = self.load()
        start = time.perf_counter()
        fallbacks: list[str] = []
        for device, batch in self._attempts():
            try:
                mask, info = self._segment_on(dwi, adc, affine, models, device, batch)
            except torch.OutOfMemoryError:
                fallbacks.append(f"out of memory on {device} with sw_batch_size={batch}")
                _release_cuda_cache()
                continue
            self.last_info = {**info, "seconds": time.perf_counter() - start, "fallbacks": fallbacks}
            return mask
        raise torch.OutOfMemoryError("network segmentation ran out of memory in every attempt: " + "; ".join(fallbacks))

    def _attempts(self) -> list[tuple[torch.device, int]]:
        """The configured device and batch, then batch 1, then (from CUDA) the CPU."""
        plan = [(self.device, self.sw_batch_size)]
        if self.sw_batch_size > 1:
            plan.append((self.device, 1))
        if self.device.type == "cuda":
            plan.append((CPU, 1))
        return plan

    def _segment_on(
        self,
        dwi: np.ndarray,
        adc: np.ndarray,
        affine: np.ndarray,
        models: list[LoadedModel],
        device: torch.device,
        sw_batch_size: int,
    ) -> tuple[np.ndarray, dict[str, object]]:
        input_shape = tuple(int(n) for n in dwi.shape)
        use_amp = self.amp and device.type == "cuda"
        with torch.inference_mode():
            image = network_input(dwi, adc, affine, self.target_spacing, device)
            grid = tuple(int(n) for n in image.shape[2:])
            roi = clamp_roi(self.roi_size, grid, self.size_divisible)
            probs = self._ensemble_probabilities(image, models, device, roi, sw_batch_size, use_amp)
            del image
            probs = resize(probs, input_shape)
            mask = (probs.argmax(dim=1)[0] != 0).cpu().numpy()
        info = {
            "device": str(device),  # may differ from self.device after an out-of-memory fallback
            "sw_batch_size": sw_batch_size,
            "models": len(models),
            "amp": use_amp,
            "input_shape": input_shape,
            "resampled_shape": grid,
            "roi_size": roi,
        }
        return mask, info

    def _ensemble_probabilities(
        self,
        image: torch.Tensor,
        models: list[LoadedModel],
        device: torch.device,
        roi: tuple[int, ...],
        sw_batch_size: int,
        use_amp: bool,
    ) -> torch.Tensor:
        """Mean class probabilities ``(1, K, ...)`` of the models, in float32."""
        total: torch.Tensor | None = None
        for model in models:
            network = model.module.to(device)
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with autocast:
                logits = sliding_window_inference(
                    image, roi, sw_batch_size, network, overlap=self.overlap, mode="gaussian"
                )
            probs = logits_to_probabilities(logits.float())
            total = probs if total is None else total + probs
        assert total is not None
        return total / len(models)


def clamp_roi(roi_size: Sequence[int], shape: Sequence[int], size_divisible: int) -> tuple[int, ...]:
    """The ROI, shrunk to the volume where the volume is smaller, rounded up to a multiple of
    ``size_divisible`` (encoder-decoder networks need it; the inferer pads the volume to fit)."""
    def fit(roi: int, size: int) -> int:
        return min(roi, -(-size // size_divisible) * size_divisible)

    return tuple(fit(r, n) for r, n in zip(roi_size, shape, strict=True))


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class channel; a single channel is a sigmoid lesion logit -> [1-p, p]."""
    if logits.shape[1] == 1:
        lesion = torch.sigmoid(logits)
        return torch.cat([1 - lesion, lesion], dim=1)
    return torch.softmax(logits, dim=1)


def network_input(
    dwi: np.ndarray, adc: np.ndarray, affine: np.ndarray, target_spacing: Sequence[float], device: torch.device
) -> torch.Tensor:
    """The NVAUTO input of one case: ``(1, 2, X', Y', Z')`` float32 [ADC, DWI] on ``device``,
    resampled to ``target_spacing`` and z-scored per channel over non-zero voxels (non-finite
    values count as 0). Training uses this too, so that both see identical inputs."""
    stacked = np.stack([np.asarray(adc, dtype=np.float32), np.asarray(dwi, dtype=np.float32)])
    image = torch.nan_to_num(torch.from_numpy(stacked)[None].to(device), nan=0.0, posinf=0.0, neginf=0.0)
    grid = resampled_shape(dwi.shape, voxel_sizes(affine), target_spacing)
    return zscore_nonzero(resize(image, grid))


def _release_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
