"""Dagster layer for training: the ``segmenter_checkpoint`` asset and the ``train_segmenter`` job.

The asset reads cases that ``case_inputs`` materialised (with :func:`~isles_pipeline.inputs.
read_case_images`, which takes the file names from each case's ``source.json``) through the
``case_store`` resource, trains with :func:`isles_pipeline.train.train_segmenter`, and writes
``<root>/models/segmenter_checkpoint/`` ``model.ts``, its sidecar ``model.json`` (target spacing,
ROI, overlap: how to run it), ``loss.png`` and ``training.json`` through ``CaseStore``.
``ISLES_CHECKPOINT=<root>/models/segmenter_checkpoint/model.ts`` then runs it in the pipeline with
the settings it was trained and scored with. torch is imported when the asset runs, not when the
code location loads.
"""

# No ``from __future__ import annotations``: Dagster reads the asset's parameter annotations
# (config class, resource type) at definition time and needs real types there.
import base64
import json
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from ..inputs import read_case_images
from ..nifti import as_float32, as_mask, check_same_grid
from ..store import CaseStore
from .resources import CaseStoreResource

if TYPE_CHECKING:
    from ..train.training import TrainConfig, TrainingCase, TrainResult

MODEL_AREA = ("models", "segmenter_checkpoint")


class SegmenterCheckpointConfig(dg.Config):
    """Which cases to train and score on, and the training settings (see ``TrainConfig``)."""

    train_case_ids: list[str] = Field(description="cases to train on (their case_inputs must be materialised)")
    held_out_case_ids: list[str] = Field(default_factory=list, description="cases scored with the trained model")
    validation_case_ids: list[str] = Field(default_factory=list, description="cases that pick the best epoch (exported)")
    folds: int = Field(default=0, description="k >= 2: split train_case_ids into k folds by case; validate on fold `fold`")
    fold: int = Field(default=0, description="which fold validates, when folds >= 2")
    epochs: int = 50
    steps_per_epoch: int = 16
    batch_size: int = 2
    patch_size: list[int] = Field(default_factory=lambda: [96, 96, 64], description="three multiples of 8")
    arch: str = Field(default="SegResNet", description="SegResNet or DynUNet")
    init_filters: int = 16
    target_spacing: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], description="mm per voxel axis")
    learning_rate: float = 1e-3
    seed: int = 0
    device: str = Field(default="auto", description="auto, cpu or cuda[:N]")
    amp: bool = True
    augment: bool = Field(default=True, description="MONAI flips, affine and intensity augmentation")
    warmup_epochs: int = Field(default=1, description="linear learning-rate warm-up, then a cosine")
    validate_every: int = Field(default=1, description="epochs between validations")
    time_budget_s: float | None = Field(default=None, description="stop after the epoch that passes this many seconds")


def read_training_case(store: CaseStore, case_id: str) -> "TrainingCase":
    """One materialised case's DWI, ADC, lesion mask and affine, read through the store."""
    from ..train.training import TrainingCase

    try:
        images = read_case_images(store, case_id)
    except FileNotFoundError as exc:  # MissingInputsError (no source.json) or a file it names
        where = store.case_path(case_id)
        raise dg.Failure(f"case {case_id}: stored inputs missing in {where}; materialise case_inputs for {case_id} first") from exc
    if "lesion_mask" not in images:
        raise dg.Failure(f"case {case_id}: no lesion_mask among its stored inputs; it cannot be trained or scored on")
    grid = check_same_grid(images)
    return TrainingCase(
        case_id=case_id,
        dwi=as_float32(images["dwi"]),
        adc=as_float32(images["adc"]),
        mask=as_mask(images["lesion_mask"]),
        affine=grid.affine,
    )


def _train_config(config: SegmenterCheckpointConfig) -> "TrainConfig":
    from ..train.training import TrainConfig

    settings = config.model_dump(exclude={"train_case_ids", "held_out_case_ids", "validation_case_ids", "folds", "fold"})
    try:
        return TrainConfig(**{**settings, "patch_size": tuple(config.patch_size), "target_spacing": tuple(config.target_spacing)})
    except ValueError as exc:
        raise dg.Failure(f"invalid training config: {exc}") from exc


def case_split(config: SegmenterCheckpointConfig) -> tuple[list[str], list[str], list[str]]:
    """(training, validation, held-out) case ids, pairwise disjoint: with ``folds`` >= 2 the
    validation cases are fold ``fold`` of ``train_case_ids`` split by case (``kfold_splits``)."""
    from ..train.training import kfold_splits

    training, validation = list(config.train_case_ids), list(config.validation_case_ids)
    if config.folds >= 2:
        if validation:
            raise dg.Failure("give validation_case_ids or folds, not both")
        try:
            training, validation = kfold_splits(training, config.folds, config.seed)[config.fold]
        except (ValueError, IndexError) as exc:
            raise dg.Failure(f"cannot take fold {config.fold} of {config.folds} from {len(training)} cases: {exc}") from exc
    held_out = list(config.held_out_case_ids)
    groups = {"train": set(training), "validation": set(validation), "held-out": set(held_out)}
    shared = sorted((groups["train"] & groups["validation"]) | (groups["train"] & groups["held-out"]) | (groups["validation"] & groups["held-out"]))
    if not training or shared:
        raise dg.Failure(f"need train_case_ids, disjoint from the validation and held-out cases (shared: {shared})")
    return training, validation, held_out


def _summary(config: SegmenterCheckpointConfig, result: "TrainResult", checkpoint_sha256: str) -> dict[str, object]:
    """``training.json``: enough to know what produced the checkpoint (no secrets in it)."""
    return {
        "config": config.model_dump(),
        "arch": result.arch,
        "network_kwargs": result.network_kwargs,
        "losses": result.losses,
        "validation_case_ids": result.validation_case_ids,
        "validation_dice": result.validation_dice,
        "best_epoch": result.best_epoch,
        "held_out_dice": result.held_out_dice,
        "inference": result.inference,
        "device": result.device,
        "seconds": result.seconds,
        "checkpoint_sha256": checkpoint_sha256,
    }


def chance_dice(cases: "list[TrainingCase]") -> float:
    """The Dice a random mask scores on these cases, on average: a mask drawing each voxel with
    the lesion's own voxel fraction p has expected Dice p (all-zeros scores 0)."""
    return float(sum(float(case.mask.mean()) for case in cases) / len(cases)) if cases else float("nan")


def _loss_markdown(png: bytes, path: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f"![training loss](data:image/png;base64,{encoded})\n\n`{path}`"


@dg.asset(
    group_name="training",
    kinds={"pytorch", "monai"},
    deps=[dg.AssetKey("case_inputs")],
    description="A SegResNet/DynUNet trained on materialised cases, exported as TorchScript model.ts.",
)
def segmenter_checkpoint(
    context: dg.AssetExecutionContext, config: SegmenterCheckpointConfig, case_store: CaseStoreResource
) -> dg.MaterializeResult:
    from ..train.training import save_loss_plot, train_segmenter

    train_ids, validation_ids, held_out_ids = case_split(config)
    train_config = _train_config(config)
    store = case_store.store()
    cases = [read_training_case(store, case_id) for case_id in train_ids]
    validation = [read_training_case(store, case_id) for case_id in validation_ids]
    held_out = [read_training_case(store, case_id) for case_id in held_out_ids]

    def log_epoch(epoch: int, loss: float) -> None:
        context.log.info(f"epoch {epoch}/{config.epochs}: loss {loss:.4f}")

    result = train_segmenter(cases, held_out, train_config, on_epoch=log_epoch, validation=validation)

    checkpoint = store.path(*MODEL_AREA, "model.ts")
    checkpoint_sha256 = store.write_bytes(checkpoint, result.checkpoint_bytes())
    sidecar = store.path(*MODEL_AREA, "model.json")  # beside model.ts: the segmenter reads it from there
    store.write_text(sidecar, result.sidecar_text())
    png = save_loss_plot(result.losses, title=f"{result.arch} training loss")
    loss_plot = store.path(*MODEL_AREA, "loss.png")
    store.write_bytes(loss_plot, png)
    store.write_text(store.path(*MODEL_AREA, "training.json"), json.dumps(_summary(config, result, checkpoint_sha256), indent=2))

    mean_dice = result.mean_held_out_dice
    return dg.MaterializeResult(
        metadata={
            "epochs": dg.MetadataValue.int(result.epochs),
            "final_loss": dg.MetadataValue.float(result.losses[-1]),
            "held_out_dice_mean": dg.MetadataValue.float(mean_dice) if held_out else dg.MetadataValue.null(),
            "held_out_dice": dg.MetadataValue.json(result.held_out_dice),
            "held_out_chance_dice": dg.MetadataValue.float(chance_dice(held_out)) if held_out else dg.MetadataValue.null(),
            "train_case_ids": dg.MetadataValue.json(train_ids),
            "validation_case_ids": dg.MetadataValue.json(validation_ids),
            "validation_dice": dg.MetadataValue.json({str(k): v for k, v in result.validation_dice.items()}),
            "best_epoch": dg.MetadataValue.int(result.best_epoch) if result.best_epoch else dg.MetadataValue.null(),
            "held_out_case_ids": dg.MetadataValue.json(list(config.held_out_case_ids)),
            "loss_curve": dg.MetadataValue.md(_loss_markdown(png, str(loss_plot))),
            "loss_plot_path": dg.MetadataValue.path(str(loss_plot)),
            "checkpoint_path": dg.MetadataValue.path(str(checkpoint)),
            "checkpoint_sha256": dg.MetadataValue.text(checkpoint_sha256),
            "sidecar_path": dg.MetadataValue.path(str(sidecar)),
            "inference_settings": dg.MetadataValue.json(result.inference),
            "arch": dg.MetadataValue.text(result.arch),
            "device": dg.MetadataValue.text(result.device),
            "seconds": dg.MetadataValue.float(result.seconds),
        },
        data_version=dg.DataVersion(checkpoint_sha256),
    )


train_segmenter_job = dg.define_asset_job(
    "train_segmenter", selection=[segmenter_checkpoint], description="Train and export the network segmenter."
)
