"""Building a segmenter from its name (``ISLES_SEGMENTER``) and options."""

from __future__ import annotations

from .base import Segmenter

SEGMENTERS = ("rules", "network")


def make_segmenter(name: str, device: str = "auto", checkpoint: str | None = None, **options) -> Segmenter:
    """``rules``: the weight-free DWI/ADC rule; ``network``: an ensemble of checkpoints."""
    if name == "rules":
        from .rules import RuleSegmenter

        return RuleSegmenter(device=device, **options)
    if name == "network":
        if not checkpoint:
            raise ValueError("the network segmenter needs a checkpoint: set ISLES_CHECKPOINT to a path or a Hub model repo id")
        from .network import NetworkSegmenter

        return NetworkSegmenter.from_spec(checkpoint, device=device, **options)
    raise ValueError(f"unknown segmenter {name!r}: expected one of {', '.join(SEGMENTERS)}")
