"""Building a segmenter from its name (``rules``, ``network``, ``nnunet``), checkpoint and options."""

from __future__ import annotations

from .base import Segmenter
from .options import SEGMENTERS, check_options

__all__ = ["SEGMENTERS", "make_segmenter"]


def make_segmenter(name: str, device: str = "auto", checkpoint: str | None = None, endpoint: str | None = None,
                   **options) -> Segmenter:
    """``rules``: the weight-free DWI/ADC rule; ``network``: an ensemble of checkpoints;
    ``nnunet``: an nnU-Net v2 trained-model folder. ``options`` are the segmenter's own
    (``segment/options.py``), refused when it has no such option; ``endpoint`` is the Hub that a
    Hub checkpoint comes from (None: the client's default)."""
    check_options(name, options)
    if name == "rules":
        from .rules import RuleSegmenter

        return RuleSegmenter(device=device, **options)
    if not checkpoint:
        what = "a checkpoint" if name == "network" else "an nnU-Net trained-model folder"
        raise ValueError(f"the {name} segmenter needs {what}: a path or a Hub model repo id")
    if name == "network":
        from .network import NetworkSegmenter

        return NetworkSegmenter.from_spec(checkpoint, device=device, endpoint=endpoint, **options)
    from .nnunet import NnUNetSegmenter

    return NnUNetSegmenter(checkpoint, device=device, endpoint=endpoint, **options)
