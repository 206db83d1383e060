"""Building a segmenter from its name (``ISLES_SEGMENTER``) and options."""

from __future__ import annotations

from .base import Segmenter

SEGMENTERS = ("rules", "network")
# Options only the network segmenter has; the rule segmenter is built without them.
NETWORK_OPTIONS = ("target_spacing", "roi_size", "overlap", "sw_batch_size", "amp", "size_divisible", "endpoint")


def make_segmenter(name: str, device: str = "auto", checkpoint: str | None = None, **options) -> Segmenter:
    """``rules``: the weight-free DWI/ADC rule (network options are ignored); ``network``: an
    ensemble of checkpoints, with options such as ``target_spacing`` or ``roi_size`` passed on."""
    if name == "rules":
        from .rules import RuleSegmenter

        rule_options = {key: value for key, value in options.items() if key not in NETWORK_OPTIONS}
        return RuleSegmenter(device=device, **rule_options)
    if name == "network":
        if not checkpoint:
            raise ValueError("the network segmenter needs a checkpoint: set ISLES_CHECKPOINT to a path or a Hub model repo id")
        from .network import NetworkSegmenter

        return NetworkSegmenter.from_spec(checkpoint, device=device, **options)
    raise ValueError(f"unknown segmenter {name!r}: expected one of {', '.join(SEGMENTERS)}")
