"""Deep-learning segmentation: an ensemble of 3-D networks run with the NVAUTO (DeepISLES) recipe.

Per case, entirely on the segmenter's device: stack [ADC, DWI] -> resample to the target spacing
along the voxel axes as MONAI 0.9's Spacing does (bilinear, its grid and sampling coordinates) -> z-score each channel over its non-zero voxels -> sliding-window
inference of every model (Gaussian blending, mixed precision on CUDA) -> average the softmaxes ->
resample the probabilities back to the input grid -> argmax. Only the final mask leaves the device.

Inference settings (target spacing, ROI, overlap) come, option by option, from the constructor
when given there, else from the checkpoints' sidecars (``model.json`` beside ``model.ts``, see
:mod:`~isles_pipeline.segment.checkpoints`), else from the NVAUTO recipe (1 mm, 192x192x128,
overlap 0.625). A checkpoint without a sidecar stands for the NVAUTO values, so an ensemble
whose members disagree on an option that is not given explicitly is refused.

When CUDA runs out of memory the case is retried with ``sw_batch_size=1``, then on the CPU.
After each case ``last_info`` (a dict, as for the rule segmenter) holds the device that produced
the mask, the batch size, whether AMP ran, the grids, the ROI, the seconds and the fallbacks taken.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import NormalizeIntensity

from isles_pipeline.segment.base import check_segment_inputs, mri_pair, resolve_device
from isles_pipeline.segment.checkpoints import CheckpointError, LoadedModel, load_models
from isles_pipeline.segment.resample import from_target_spacing, to_target_spacing

CheckpointSpecs = str | os.PathLike[str] | Sequence[str | os.PathLike[str] | torch.nn.Module]
CPU = torch.device("cpu")
SPEC_SEPARATOR = ";"


@dataclass(frozen=True)
class InferenceSettings:
    """How a network expects to be run; the defaults are DeepISLES' NVAUTO recipe."""

    target_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    roi_size: tuple[int, int, int] = (192, 192, 128)
    overlap: float = 0.625
    # Kept for sidecars that carry it: the ROI is no longer shrunk (MONAI pads the volume instead).
    size_divisible: int = 16

    def __post_init__(self) -> None:
        if len(self.target_spacing) != 3 or len(self.roi_size) != 3:
            raise ValueError("target_spacing and roi_size need three values (one per voxel axis)")
        spacing = tuple(float(v) for v in self.target_spacing)
        roi = tuple(int(v) for v in self.roi_size)
        if min(spacing) <= 0 or min(roi) < 1:
            raise ValueError(f"target_spacing {spacing} and roi_size {roi} must be positive")
        if not 0 <= float(self.overlap) < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        object.__setattr__(self, "target_spacing", spacing)
        object.__setattr__(self, "roi_size", roi)
        object.__setattr__(self, "overlap", float(self.overlap))
        object.__setattr__(self, "size_divisible", max(1, int(self.size_divisible)))


NVAUTO = InferenceSettings()
SETTING_NAMES = tuple(f.name for f in fields(InferenceSettings))


def resolve_settings(explicit: Mapping[str, object], models: Sequence[LoadedModel]) -> InferenceSettings:
    """Explicit options win; every other option comes from the checkpoints' sidecars, which must
    agree (a checkpoint without a sidecar counts as NVAUTO's values; in-memory modules don't count)."""
    per_model = {m.source: _settings_of(m) for m in models if m.kind != "module"}
    chosen = dict(explicit)
    for name in SETTING_NAMES:
        values = {source: getattr(settings, name) for source, settings in per_model.items()}
        if name in chosen or not values:
            continue
        if len(set(values.values())) > 1:
            listed = "; ".join(f"{source}: {value}" for source, value in values.items())
            raise CheckpointError(
                f"the checkpoints' sidecars disagree on {name} ({listed}; no sidecar means the NVAUTO "
                f"value {getattr(NVAUTO, name)}): give {name} explicitly or ensemble matching checkpoints"
            )
        chosen[name] = next(iter(values.values()))
    return InferenceSettings(**chosen)  # type: ignore[arg-type]


def _settings_of(model: LoadedModel) -> InferenceSettings:
    """A checkpoint's settings: its sidecar over the NVAUTO defaults."""
    try:
        return InferenceSettings(**(model.settings or {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{model.source}: invalid sidecar settings ({exc})") from exc


class NetworkSegmenter:
    """Segmenter protocol implementation (name ``"network"``) over one or more checkpoints.

    ``checkpoints``: a spec or list of specs understood by
    :func:`~isles_pipeline.segment.checkpoints.resolve_checkpoint_files` (local ``.ts``/``.pt``
    files or folders, Hub ``org/name[@rev][:patterns]``), or in-memory ``torch.nn.Module`` s.
    Models are loaded once, on first use (or by :meth:`load`), and reused for every case.
    ``target_spacing``, ``roi_size``, ``overlap`` and ``size_divisible`` left at None come from
    the sidecars or NVAUTO (see :func:`resolve_settings`); ``settings`` holds the outcome after
    :meth:`load`.
    """

    name = "network"

    def __init__(
        self,
        checkpoints: CheckpointSpecs,
        device: str | torch.device = "auto",
        target_spacing: Sequence[float] | None = None,
        roi_size: Sequence[int] | None = None,
        overlap: float | None = None,
        sw_batch_size: int = 2,
        amp: bool = True,
        endpoint: str | None = None,
        size_divisible: int | None = None,
    ):
        given = {"target_spacing": target_spacing, "roi_size": roi_size, "overlap": overlap, "size_divisible": size_divisible}
        self.explicit = {name: value for name, value in given.items() if value is not None}
        InferenceSettings(**self.explicit)  # type: ignore[arg-type]  # refuse bad values now, not at the first case
        self.checkpoints = checkpoints
        self.device = resolve_device(device)
        self.sw_batch_size = max(1, int(sw_batch_size))
        self.amp = bool(amp)
        self.endpoint = endpoint
        self.settings: InferenceSettings | None = None
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
        """Resolve, download and load the checkpoints and settle the settings (once per instance)."""
        if self._models is None:
            models = load_models(self.checkpoints, self.device, self.endpoint)
            self.settings = resolve_settings(self.explicit, models)
            self._models = models
        return self._models

    def segment_images(self, images: Mapping[str, np.ndarray], affine: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """:meth:`segment` on the case's DWI and ADC (other images are not read; the grid is the affine's)."""
        return self.segment(*mri_pair(images, self.name), affine)

    def segment(self, dwi: np.ndarray, adc: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """The boolean lesion mask of one case on its input grid."""
        check_segment_inputs(dwi, adc, affine)
        models = self.load()
        settings = self.settings  # settled by load()
        start = time.perf_counter()
        fallbacks: list[str] = []
        for device, batch in self._attempts():
            try:
                mask, info = self._segment_on(dwi, adc, affine, models, settings, device, batch)
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
        settings: InferenceSettings,
        device: torch.device,
        sw_batch_size: int,
    ) -> tuple[np.ndarray, dict[str, object]]:
        input_shape = tuple(int(n) for n in dwi.shape)
        use_amp = self.amp and device.type == "cuda"
        with torch.inference_mode():
            image = network_input(dwi, adc, affine, settings.target_spacing, device)
            grid = tuple(int(n) for n in image.shape[2:])
            roi = settings.roi_size  # kept whole: the inferer pads a smaller volume, as MONAI does
            probs = self._ensemble_probabilities(image, models, device, roi, sw_batch_size, use_amp, settings.overlap)
            del image
            probs = from_target_spacing(probs, affine, settings.target_spacing, input_shape)
            mask = (probs.argmax(dim=1)[0] != 0).cpu().numpy()
        info = {
            "device": str(device),  # may differ from self.device after an out-of-memory fallback
            "sw_batch_size": sw_batch_size,
            "models": len(models),
            "amp": self.amp,  # the setting; mixed precision runs on CUDA only
            "amp_ran": use_amp,
            "input_shape": input_shape,
            "target_spacing": settings.target_spacing,
            "resampled_shape": grid,
            "roi_size": roi,
            "overlap": settings.overlap,
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
        overlap: float,
    ) -> torch.Tensor:
        """Mean class probabilities ``(1, K, ...)`` of the models, in float32."""
        total: torch.Tensor | None = None
        for model in models:
            network = model.module.to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                logits = sliding_window_inference(
                    image, roi, sw_batch_size, network, overlap=overlap, mode="gaussian"
                )
            probs = logits_to_probabilities(logits.float())
            total = probs if total is None else total + probs
        assert total is not None
        return total / len(models)


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
    resampled to ``target_spacing`` on MONAI 0.9 Spacing's grid (see
    :mod:`~isles_pipeline.segment.resample`) and z-scored per channel over non-zero voxels (non-finite
    values count as 0). Training uses this too, so that both see identical inputs."""
    stacked = np.stack([np.asarray(adc, dtype=np.float32), np.asarray(dwi, dtype=np.float32)])
    image = torch.nan_to_num(torch.from_numpy(stacked)[None].to(device), nan=0.0, posinf=0.0, neginf=0.0)
    resampled = to_target_spacing(image, affine, target_spacing)
    # MONAI's own NormalizeIntensity, as NVAUTO's NormalizeIntensityd(nonzero=True, channel_wise=True).
    normalised = NormalizeIntensity(nonzero=True, channel_wise=True)(resampled[0])
    return torch.as_tensor(normalised)[None]


def _release_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
