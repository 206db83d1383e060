"""Training a lesion segmentation network on DWI + ADC cases (plain Python, no Dagster).

Cases are preprocessed exactly as :class:`~isles_pipeline.segment.network.NetworkSegmenter`
preprocesses them (resample to the target spacing, [ADC, DWI], non-zero z-score), patches are
sampled around lesion voxels and anywhere in the volume, and a MONAI SegResNet or DynUNet is
fitted with DiceCE loss (mixed precision on CUDA). The result carries a TorchScript module that
the network segmenter loads, the inference settings to run it with (written as the checkpoint's
sidecar), and the held-out Dice of that very module run through the segmenter with those settings.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.utils import set_determinism

from isles_pipeline.metrics import score_masks
from isles_pipeline.segment.base import resolve_device
from isles_pipeline.segment.checkpoints import (
    build_network,
    sidecar_text,
    torchscript_bytes,
)
from isles_pipeline.segment.network import NetworkSegmenter, network_input
from isles_pipeline.segment.resample import pad_to_at_least, to_target_spacing

ARCHS = ("SegResNet", "DynUNet")
# Both networks below downsample three times: patches must be multiples of 2**3.
DOWNSAMPLINGS = 3
# Sliding-window overlap the held-out cases are scored with, and that the sidecar records.
INFERENCE_OVERLAP = 0.5


@dataclass(frozen=True)
class TrainingCase:
    """One case: DWI and ADC voxels (float), the lesion mask and the voxel -> mm affine."""

    case_id: str
    dwi: np.ndarray
    adc: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; an epoch is ``steps_per_epoch`` optimiser steps of ``batch_size`` patches."""

    epochs: int = 50
    steps_per_epoch: int = 16
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (96, 96, 64)
    arch: str = "SegResNet"
    init_filters: int = 16
    target_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    positive_fraction: float = 0.5  # share of patches centred on a lesion voxel
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        step = 2**DOWNSAMPLINGS
        if len(self.patch_size) != 3 or any(p % step for p in self.patch_size):
            raise ValueError(f"patch_size needs three multiples of {step}, got {self.patch_size}")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1 or self.init_filters < 1:
            raise ValueError("epochs, steps_per_epoch, batch_size and init_filters must be positive")


@dataclass
class TrainResult:
    """What training produced: the loss curve, the held-out Dice and the exported network."""

    losses: list[float]  # mean training loss per epoch
    held_out_dice: dict[str, float]  # case id -> Dice of the exported module via NetworkSegmenter
    module: torch.jit.ScriptModule
    arch: str
    network_kwargs: dict[str, object]
    device: str
    seconds: float
    train_case_ids: list[str] = field(default_factory=list)
    inference: dict[str, object] = field(default_factory=dict)  # NetworkSegmenter options to run it with

    @property
    def epochs(self) -> int:
        return len(self.losses)

    @property
    def mean_held_out_dice(self) -> float:
        """Mean held-out Dice (NaN without held-out cases)."""
        return float(np.mean(list(self.held_out_dice.values()))) if self.held_out_dice else math.nan

    def checkpoint_bytes(self) -> bytes:
        """The TorchScript file (``model.ts``) as bytes, for writing through ``CaseStore``."""
        return torchscript_bytes(self.module)

    def sidecar_text(self) -> str:
        """The checkpoint's sidecar (``model.json``): its inference settings, channels and network."""
        return sidecar_text({**self.inference, "arch": self.arch, "network_kwargs": self.network_kwargs})


@dataclass
class _PreparedCase:
    """A case as the network sees it, kept on the training device for fast patch sampling."""

    image: torch.Tensor  # (2, X, Y, Z) network input on the training device
    label: torch.Tensor  # (1, X, Y, Z) {0, 1} float
    lesion_voxels: torch.Tensor  # (L, 3) indices of label voxels (patch centres)


def network_kwargs(config: TrainConfig) -> dict[str, object]:
    """Constructor arguments of the configured MONAI network (2 inputs, 2 classes)."""
    f = config.init_filters
    if config.arch == "SegResNet":
        # GroupNorm needs the group count to divide every level's channels (f, 2f, 4f, 8f).
        norm = ("GROUP", {"num_groups": math.gcd(8, f)})
        return {"spatial_dims": 3, "in_channels": 2, "out_channels": 2, "init_filters": f, "norm": norm}
    return {
        "spatial_dims": 3,
        "in_channels": 2,
        "out_channels": 2,
        "kernel_size": [3] * (DOWNSAMPLINGS + 1),
        "strides": [1] + [2] * DOWNSAMPLINGS,
        "upsample_kernel_size": [2] * DOWNSAMPLINGS,
        "filters": [f * 2**i for i in range(DOWNSAMPLINGS + 1)],
        "norm_name": "instance",
    }


def inference_options(config: TrainConfig) -> dict[str, object]:
    """How the trained network is to be run: the training spacing, the patch size as ROI."""
    return {
        "target_spacing": list(config.target_spacing),
        "roi_size": list(config.patch_size),
        "overlap": INFERENCE_OVERLAP,
        "size_divisible": 2**DOWNSAMPLINGS,
    }


def prepare_case(case: TrainingCase, config: TrainConfig, device: torch.device) -> _PreparedCase:
    """Resample and normalise one case like inference does; pad it to at least one patch."""
    if case.dwi.shape != case.adc.shape or case.dwi.shape != case.mask.shape:
        raise ValueError(f"case {case.case_id}: dwi, adc and mask shapes differ")
    image = network_input(case.dwi, case.adc, case.affine, config.target_spacing, device)
    mask = torch.from_numpy(np.asarray(case.mask, dtype=np.float32))[None, None].to(device)
    # Trilinear then 0.5 keeps thin lesions' shape better than nearest on anisotropic grids.
    label = (to_target_spacing(mask, case.affine, config.target_spacing) > 0.5).float()
    image = pad_to_at_least(image, config.patch_size)[0]
    label = pad_to_at_least(label, config.patch_size)[0]
    return _PreparedCase(image=image, label=label, lesion_voxels=torch.nonzero(label[0]))


def sample_patch(
    case: _PreparedCase, patch_size: Sequence[int], positive: bool, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(2, *patch)`` image and ``(1, *patch)`` label patch, centred on a random lesion
    voxel when ``positive`` (and the case has one), else on a random voxel."""
    shape = case.image.shape[1:]
    if positive and len(case.lesion_voxels):
        centre = case.lesion_voxels[int(rng.integers(len(case.lesion_voxels)))].tolist()
    else:
        centre = [int(rng.integers(n)) for n in shape]
    start = [min(max(c - p // 2, 0), n - p) for c, p, n in zip(centre, patch_size, shape, strict=True)]
    region = tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
    return case.image[(slice(None), *region)], case.label[(slice(None), *region)]


def _batch(
    cases: list[_PreparedCase], config: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [
        sample_patch(cases[int(rng.integers(len(cases)))], config.patch_size, rng.random() < config.positive_fraction, rng)
        for _ in range(config.batch_size)
    ]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def train_segmenter(
    cases: list[TrainingCase],
    held_out: list[TrainingCase],
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train on ``cases``, score the exported module on ``held_out``; ``on_epoch(epoch, loss)``
    is called after each epoch (for logging)."""
    if not cases:
        raise ValueError("no training cases")
    start = time.perf_counter()
    device = resolve_device(config.device)
    set_determinism(seed=config.seed)  # seeds torch, numpy and random; deterministic cuDNN
    rng = np.random.default_rng(config.seed)
    prepared = [prepare_case(case, config, device) for case in cases]
    kwargs = network_kwargs(config)
    model = build_network(config.arch, kwargs).to(device)
    losses = _fit(model, prepared, config, device, rng, on_epoch)
    module = export_torchscript(model, config.patch_size)
    dice = {case.case_id: _held_out_dice(module, case, config, device) for case in held_out}
    module = module.cpu()  # scoring moved it to the training device; checkpoints leave on the CPU
    return TrainResult(
        losses=losses,
        held_out_dice=dice,
        module=module,
        arch=config.arch,
        network_kwargs=kwargs,
        device=str(device),
        seconds=time.perf_counter() - start,
        train_case_ids=[case.case_id for case in cases],
        inference=inference_options(config),
    )


def _fit(
    model: torch.nn.Module,
    cases: list[_PreparedCase],
    config: TrainConfig,
    device: torch.device,
    rng: np.random.Generator,
    on_epoch: Callable[[int, float], None] | None,
) -> list[float]:
    """The optimisation loop; returns the mean loss of each epoch."""
    use_amp = config.amp and device.type == "cuda"
    # Batch Dice (one Dice over all patches of a step, as nnU-Net does), so that a lesion-free
    # patch does not score an all-background output as a perfect Dice of its own.
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model.train()
    losses: list[float] = []
    for epoch in range(config.epochs):
        total = 0.0
        for _ in range(config.steps_per_epoch):
            images, labels = _batch(cases, config, rng)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            total += float(loss.detach())
        losses.append(total / config.steps_per_epoch)
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    return losses


def export_torchscript(model: torch.nn.Module, patch_size: Sequence[int]) -> torch.jit.ScriptModule:
    """Script the trained network on the CPU in eval mode (tracing if scripting fails)."""
    model = model.eval().cpu()
    try:
        return torch.jit.script(model)
    except Exception:  # some MONAI blocks do not script in every version; tracing is shape-safe here
        return torch.jit.trace(model, torch.zeros(1, 2, *patch_size))


def _held_out_dice(module: torch.jit.ScriptModule, case: TrainingCase, config: TrainConfig, device: torch.device) -> float:
    """Dice of the exported module on one case, run the way the pipeline runs it."""
    segmenter = NetworkSegmenter(
        [module], device=device, sw_batch_size=config.batch_size, amp=config.amp, **inference_options(config)
    )
    prediction = segmenter.segment(case.dwi, case.adc, case.affine)
    return float(score_masks(prediction, case.mask, case.affine).dice)


def save_loss_plot(losses: Sequence[float], title: str = "training loss") -> bytes:
    """The loss curve as PNG bytes (a standalone Figure: no pyplot global state)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3), dpi=100)
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), list(losses), marker="o", markersize=3)
    axes.set_xlabel("epoch")
    axes.set_ylabel("DiceCE loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
