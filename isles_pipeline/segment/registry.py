"""Building a segmenter from its name (``ISLES_SEGMENTER``) and options."""

from __future__ import annotations

from .base import Segmenter

SEGMENTERS = ("rules", "network", "nnunet")
# Options only the network segmenter has; the others are built without them.
NETWORK_OPTIONS = ("target_spacing", "roi_size", "overlap", "sw_batch_size", "amp", "size_divisible", "endpoint")
# Options only the nnU-Net segmenter has (nnU-Net's own names).
NNUNET_OPTIONS = ("tile_step_size", "use_gaussian", "use_mirroring", "folds", "checkpoint_name", "recipe")


def _only(options: dict, names: tuple[str, ...]) -> dict:
    return {key: value for key, value in options.items() if key in names}


def _without(options: dict, names: tuple[str, ...]) -> dict:
    return {key: value for key, value in options.items() if key not in names}


def make_segmenter(name: str, device: str = "auto", checkpoint: str | None = None, **options) -> Segmenter:
    """``rules``: the weight-free DWI/ADC rule (model options are ignored); ``network``: an
    ensemble of checkpoints, with options such as ``target_spacing`` or ``roi_size`` passed on;
    ``nnunet``: an nnU-Net v2 or v1 trained-model folder (``tile_step_size``, ``use_mirroring``, ``folds``;
    ``recipe: deepisles-seals`` runs a v1 folder as DeepISLES runs SEALS)."""
    if name == "rules":
        from .rules import RuleSegmenter

        return RuleSegmenter(device=device, **_without(options, NETWORK_OPTIONS + NNUNET_OPTIONS))
    if name in ("network", "nnunet") and not checkpoint:
        what = "a checkpoint" if name == "network" else "an nnU-Net trained-model folder"
        raise ValueError(f"the {name} segmenter needs {what}: set ISLES_CHECKPOINT (--checkpoint) to a path or a Hub model repo id")
    if name == "network":
        from .network import NetworkSegmenter

        return NetworkSegmenter.from_spec(checkpoint, device=device, **_without(options, NNUNET_OPTIONS))
    if name == "nnunet":
        from .nnunet import NnUNetSegmenter

        endpoint = options.get("endpoint")
        return NnUNetSegmenter(checkpoint, device=device, endpoint=endpoint, **_only(options, NNUNET_OPTIONS))
    raise ValueError(f"unknown segmenter {name!r}: expected one of {', '.join(SEGMENTERS)}")
