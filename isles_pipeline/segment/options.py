"""The options of each segmenter, checked without importing torch: what a model registry entry may
set (``models.yaml``'s ``options:``) and what :func:`~isles_pipeline.segment.registry.make_segmenter`
passes on. Unset options keep the segmenter's own default (the rule's thresholds, the checkpoint's
sidecar or NVAUTO's recipe, nnU-Net's defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SEGMENTERS = ("rules", "network", "nnunet")


@dataclass(frozen=True)
class RuleParams:
    """Thresholds of the rule; ADC values in 10^-3 mm^2/s, whatever unit the input uses."""

    adc_low: float = 0.1  # below this: background or noise, not tissue
    adc_high: float = 0.62  # clinical ischemic-core threshold (RAPID/DEFUSE)
    # When set, the upper ADC threshold is this multiple of the case's brain median ADC instead
    # of adc_high (see docs/benchmarks.md, "Rule segmenter: ADC threshold", for which is better).
    adc_relative: float | None = None
    dwi_factor: float = 1.4  # DWI brighter than this multiple of the brain median
    csf_adc: float = 1.5  # above this: CSF, left out of the brain statistics
    edge_erosion_mm: float = 4.0  # brain-edge margin (bright rim artefacts): 2 voxels of 2 mm
    min_lesion_ml: float = 0.1  # smaller clusters are noise

    def __post_init__(self) -> None:
        if not 0 <= self.adc_low < self.adc_high < self.csf_adc:
            raise ValueError(f"need 0 <= adc_low < adc_high < csf_adc, got {self}")
        if self.adc_relative is not None and not 0 < self.adc_relative < 2:
            raise ValueError(f"adc_relative must be in (0, 2), got {self.adc_relative}")
        if self.dwi_factor <= 0 or self.edge_erosion_mm < 0 or self.min_lesion_ml < 0:
            raise ValueError(f"dwi_factor must be > 0, edge_erosion_mm and min_lesion_ml >= 0: {self}")


class OptionError(ValueError):
    """An option a segmenter does not have, or a value it cannot take; ``option`` names it."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"option {option}: {problem}" if option else problem)
        self.option = option


Positive = Annotated[float, Field(gt=0)]
Triple = Annotated[list[Positive], Field(min_length=3, max_length=3)]
IntTriple = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=3, max_length=3)]


class _Options(BaseModel):
    # strict: YAML's 1 is not true, "0.5" is not a number; an int is still a float
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RulesOptions(_Options):
    adc_low: float | None = Field(None, ge=0, description="below this ADC: not tissue (10^-3 mm^2/s; 0.1)")
    adc_high: Positive | None = Field(None, description="ischemic-core ADC threshold (10^-3 mm^2/s; 0.62)")
    adc_relative: float | None = Field(None, gt=0, lt=2, description="upper ADC threshold as a multiple of the brain median")
    dwi_factor: Positive | None = Field(None, description="DWI brighter than this multiple of the brain median (1.4)")
    csf_adc: Positive | None = Field(None, description="above this ADC: CSF (10^-3 mm^2/s; 1.5)")
    edge_erosion_mm: float | None = Field(None, ge=0, description="brain-edge margin in mm (4)")
    min_lesion_ml: float | None = Field(None, ge=0, description="smaller clusters are dropped (ml; 0.1)")

    @model_validator(mode="after")
    def _thresholds_in_order(self):
        RuleParams(**self.model_dump(exclude_none=True))
        return self


class NetworkOptions(_Options):
    target_spacing: Triple | None = Field(None, description="mm per voxel axis (sidecar, else 1 1 1)")
    roi_size: IntTriple | None = Field(None, description="sliding-window size in voxels (sidecar, else 192 192 128)")
    overlap: float | None = Field(None, ge=0, lt=1, description="sliding-window overlap (sidecar, else 0.625)")
    sw_batch_size: int | None = Field(None, ge=1, description="windows per forward pass (2)")
    amp: bool | None = Field(None, description="mixed precision, on CUDA only (on)")


class NnUNetOptions(_Options):
    tile_step_size: float | None = Field(None, gt=0, le=1, description="tile step as a fraction of the patch (0.5)")
    use_gaussian: bool | None = Field(None, description="Gaussian weighting of the tiles (on)")
    use_mirroring: bool | None = Field(None, description="test-time mirroring (on)")
    folds: Annotated[list[Annotated[int, Field(ge=0)] | Literal["all"]], Field(min_length=1)] | None = Field(
        None, description="folds to ensemble (every fold present)"
    )
    checkpoint_name: Literal["checkpoint_final.pth", "checkpoint_best.pth"] | None = Field(
        None, description="checkpoint_final.pth, else checkpoint_best.pth"
    )
    recipe: Literal["deepisles-seals"] | None = Field(None, description="run a v1 folder as DeepISLES runs SEALS (segment/seals.py)")


OPTIONS: dict[str, type[_Options]] = {"rules": RulesOptions, "network": NetworkOptions, "nnunet": NnUNetOptions}


def option_names(segmenter: str) -> tuple[str, ...]:
    return tuple(OPTIONS[segmenter].model_fields)


def check_options(segmenter: str, options: dict) -> dict:
    """The options as given, once each is known to ``segmenter`` and has a value it takes."""
    if segmenter not in OPTIONS:
        raise OptionError("", f"unknown segmenter {segmenter!r}: expected one of {', '.join(SEGMENTERS)}")
    unknown = sorted(set(options) - set(option_names(segmenter)))
    if unknown:
        raise OptionError(unknown[0], f"unknown to the {segmenter} segmenter; its options: {', '.join(option_names(segmenter))}")
    try:
        OPTIONS[segmenter](**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = str(error["loc"][0]) if error["loc"] else ""
        problem = str(error["msg"]).removeprefix("Value error, ")
        raise OptionError(where, f"{problem} (got {error['input']!r})" if where else problem) from None
    return dict(options)


def options_that_ran(segmenter: str, info: dict) -> dict:
    """The segmenter's options as the last case ran them, from its ``last_info``: what a
    prediction records beside the options the registry gave."""
    if segmenter == "rules":
        return dict(info.get("params") or {})
    names = (*option_names(segmenter), "amp_ran")  # amp_ran: whether mixed precision ran (CUDA only)
    return {name: _plain(info[name]) for name in names if name in info}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
