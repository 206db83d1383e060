"""Training a lesion segmentation network on DWI + ADC cases (plain Python, no Dagster).

Cases are preprocessed exactly as :class:`~isles_pipeline.segment.network.NetworkSegmenter`
preprocesses them (resample to the target spacing, [ADC, DWI], MONAI's ``NormalizeIntensity``
over non-zero voxels) and padded to one patch with MONAI's ``SpatialPad``. Patches come from
MONAI's ``RandCropByPosNegLabeld`` (a share centred on lesion voxels) and are augmented with
MONAI's ``RandFlipd`` (each axis), ``RandAffined`` (rotation, scaling), ``RandScaleIntensityd``
and ``RandShiftIntensityd``. A MONAI SegResNet or DynUNet is fitted with DiceCE loss (mixed
precision on CUDA), the learning rate warming up linearly and then following a cosine; with
validation cases, the network is scored through the segmenter every ``validate_every`` epochs and
the best-scoring weights are the ones exported. :func:`kfold_splits` splits case ids into folds
by case, so no case is in both a fold's training and its validation set. ``time_budget_s`` ends
training after the epoch that passes it.

The result carries a TorchScript module that the network segmenter loads, the inference settings
to run it with (written as the checkpoint's sidecar), and the held-out Dice of that very module
run through the segmenter with those settings.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    FgBgToIndices,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPad,
)
from monai.utils import set_determinism

from isles_pipeline.metrics import score_masks
from isles_pipeline.segment.base import resolve_device
from isles_pipeline.segment.checkpoints import (
    build_network,
    sidecar_text,
    torchscript_bytes,
)
from isles_pipeline.segment.network import NetworkSegmenter, network_input
from isles_pipeline.segment.resample import to_target_spacing

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
    augment: bool = True  # MONAI flips, affine and intensity augmentation of every patch
    warmup_epochs: int = 1  # linear warm-up of the learning rate, then a cosine to 1% of it
    validate_every: int = 1  # epochs between validations (with validation cases)
    time_budget_s: float | None = None  # stop after the epoch that passes it

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        step = 2**DOWNSAMPLINGS
        if len(self.patch_size) != 3 or any(p % step for p in self.patch_size):
            raise ValueError(f"patch_size needs three multiples of {step}, got {self.patch_size}")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1 or self.init_filters < 1:
            raise ValueError("epochs, steps_per_epoch, batch_size and init_filters must be positive")
        if self.warmup_epochs < 0 or self.validate_every < 1:
            raise ValueError(f"need warmup_epochs >= 0 and validate_every >= 1, got {self.warmup_epochs}, {self.validate_every}")
        if not 0 <= self.positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {self.positive_fraction}")


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
    learning_rates: list[float] = field(default_factory=list)  # the learning rate of every step
    validation_dice: dict[int, float] = field(default_factory=dict)  # epoch -> mean validation Dice
    best_epoch: int | None = None  # the epoch whose weights were exported (None: the last, no validation)
    validation_case_ids: list[str] = field(default_factory=list)

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
    foreground: torch.Tensor  # flat indices of lesion voxels (RandCropByPosNegLabel's centres)
    background: torch.Tensor  # flat indices of the other voxels

    @property
    def lesion_voxels(self) -> torch.Tensor:
        return self.foreground


def kfold_splits(case_ids: Sequence[str], folds: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """``folds`` (training, validation) splits by case: every case is validated in exactly one
    fold and trained on in the others; the case order is shuffled with ``seed``."""
    ids = list(dict.fromkeys(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("case ids repeat: a case would leak between training and validation")
    if not 2 <= folds <= len(ids):
        raise ValueError(f"need 2 <= folds <= {len(ids)} cases, got {folds}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    parts = [list(part) for part in np.array_split(np.array(order, dtype=object), folds)]
    return [([c for c in order if c not in set(part)], part) for part in parts]


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
    pad = SpatialPad(spatial_size=config.patch_size, method="end")
    image, label = torch.as_tensor(pad(image[0])), torch.as_tensor(pad(label[0]))
    foreground, background = FgBgToIndices()(label)
    return _PreparedCase(image=image, label=label, foreground=torch.as_tensor(foreground), background=torch.as_tensor(background))


class PatchSampler:
    """Training patches: MONAI's RandCropByPosNegLabeld, then (``augment``) MONAI's random flips,
    affine and intensity transforms; MONAI's random states are seeded from ``seed``."""

    def __init__(self, config: TrainConfig, seed: int, device: torch.device):
        keys = ("image", "label")
        positive = config.positive_fraction
        self.crop = RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=config.patch_size, pos=positive, neg=1.0 - positive,
            num_samples=1, fg_indices_key="foreground", bg_indices_key="background",
        )
        self.crop.set_random_state(seed=seed)
        self.augment = None
        if config.augment:
            self.augment = Compose([
                *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)),
                RandAffined(keys, prob=0.2, rotate_range=(math.pi / 12,) * 3, scale_range=(0.1,) * 3,
                            mode=("bilinear", "nearest"), padding_mode="zeros", device=device),
                RandScaleIntensityd("image", factors=0.1, prob=0.15),
                RandShiftIntensityd("image", offsets=0.1, prob=0.15),
            ])
            self.augment.set_random_state(seed=seed + 1)

    def __call__(self, case: _PreparedCase) -> tuple[torch.Tensor, torch.Tensor]:
        data = {"image": case.image, "label": case.label, "foreground": case.foreground, "background": case.background}
        patch = self.crop(data)[0]
        if self.augment is not None:
            patch = self.augment({"image": patch["image"], "label": patch["label"]})
        return torch.as_tensor(patch["image"]), torch.as_tensor(patch["label"])


def sample_patch(
    case: _PreparedCase, patch_size: Sequence[int], positive: bool, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One un-augmented ``(2, *patch)`` image and ``(1, *patch)`` label patch from MONAI's
    RandCropByPosNegLabeld, centred on a lesion voxel when ``positive`` (and the case has one)."""
    config = TrainConfig(patch_size=tuple(patch_size), positive_fraction=1.0 if positive else 0.0, augment=False)
    return PatchSampler(config, int(rng.integers(2**31)), case.image.device)(case)


def _batch(
    cases: list[_PreparedCase], config: TrainConfig, rng: np.random.Generator, sampler: PatchSampler
) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [sampler(cases[int(rng.integers(len(cases)))]) for _ in range(config.batch_size)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def learning_rate_schedule(optimiser: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per step: linear warm-up over ``warmup_epochs`` (at most all epochs but one) from 1% of the
    rate, then a cosine down to 1%."""
    total = config.epochs * config.steps_per_epoch
    warmup = min(config.warmup_epochs, config.epochs - 1) * config.steps_per_epoch
    floor = 0.01 * config.learning_rate
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total - warmup, eta_min=floor)
    if warmup == 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(optimiser, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimiser, [ramp, cosine], milestones=[warmup])


def train_segmenter(
    cases: list[TrainingCase],
    held_out: list[TrainingCase],
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
    validation: list[TrainingCase] | None = None,
) -> TrainResult:
    """Train on ``cases`` (choosing the best epoch on ``validation`` when given), score the
    exported module on ``held_out``; ``on_epoch(epoch, loss)`` is called after each epoch."""
    if not cases:
        raise ValueError("no training cases")
    validation = list(validation or [])
    check_disjoint(cases, validation, held_out)
    start = time.perf_counter()
    device = resolve_device(config.device)
    set_determinism(seed=config.seed)  # seeds torch, numpy and random; deterministic cuDNN
    rng = np.random.default_rng(config.seed)
    prepared = [prepare_case(case, config, device) for case in cases]
    kwargs = network_kwargs(config)
    model = build_network(config.arch, kwargs).to(device)
    fit = _fit(model, prepared, validation, config, device, rng, on_epoch, start)
    module = export_torchscript(model, config.patch_size)
    dice = {case.case_id: _held_out_dice(module, case, config, device) for case in held_out}
    module = module.cpu()  # scoring moved it to the training device; checkpoints leave on the CPU
    return TrainResult(
        losses=fit.losses,
        held_out_dice=dice,
        module=module,
        arch=config.arch,
        network_kwargs=kwargs,
        device=str(device),
        seconds=time.perf_counter() - start,
        train_case_ids=[case.case_id for case in cases],
        inference=inference_options(config),
        learning_rates=fit.learning_rates,
        validation_dice=fit.validation_dice,
        best_epoch=fit.best_epoch,
        validation_case_ids=[case.case_id for case in validation],
    )


def check_disjoint(*groups: Sequence[TrainingCase]) -> None:
    """Training, validation and held-out cases share no case id (no leakage)."""
    seen: dict[str, int] = {}
    for index, group in enumerate(groups):
        for case in group:
            if seen.setdefault(case.case_id, index) != index:
                raise ValueError(f"case {case.case_id} is in more than one of training, validation and held-out")


@dataclass
class _Fit:
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    validation_dice: dict[int, float] = field(default_factory=dict)
    best_epoch: int | None = None


def _fit(
    model: torch.nn.Module,
    cases: list[_PreparedCase],
    validation: list[TrainingCase],
    config: TrainConfig,
    device: torch.device,
    rng: np.random.Generator,
    on_epoch: Callable[[int, float], None] | None,
    started: float,
) -> _Fit:
    """The optimisation loop; leaves ``model`` with the best validated weights (else the last)."""
    use_amp = config.amp and device.type == "cuda"
    # Batch Dice (one Dice over all patches of a step, as nnU-Net does), so that a lesion-free
    # patch does not score an all-background output as a perfect Dice of its own.
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = learning_rate_schedule(optimiser, config)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    sampler = PatchSampler(config, config.seed, device)
    fit, best_state, best_dice = _Fit(), None, -1.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        total = 0.0
        for _ in range(config.steps_per_epoch):
            images, labels = _batch(cases, config, rng, sampler)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            fit.learning_rates.append(optimiser.param_groups[0]["lr"])
            schedule.step()
            total += float(loss.detach())
        fit.losses.append(total / config.steps_per_epoch)
        if on_epoch is not None:
            on_epoch(epoch, fit.losses[-1])
        last = epoch == config.epochs or (config.time_budget_s is not None and time.perf_counter() - started > config.time_budget_s)
        if validation and (epoch % config.validate_every == 0 or last):
            fit.validation_dice[epoch] = _validation_dice(model, validation, config, device)
            if fit.validation_dice[epoch] > best_dice:
                best_dice, fit.best_epoch = fit.validation_dice[epoch], epoch
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if last:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return fit


def _validation_dice(model: torch.nn.Module, validation: list[TrainingCase], config: TrainConfig, device: torch.device) -> float:
    """Mean Dice of the current weights on the validation cases, run the way the pipeline runs them."""
    segmenter = NetworkSegmenter([model], device=device, sw_batch_size=config.batch_size, amp=config.amp, **inference_options(config))
    with torch.no_grad():
        scores = [score_masks(segmenter.segment(c.dwi, c.adc, c.affine), c.mask, c.affine).dice for c in validation]
    model.train()
    return float(np.mean(scores))


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
