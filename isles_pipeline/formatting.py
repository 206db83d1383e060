"""Numbers and messages for people: Dice to 3 decimals, volumes (ml) to 2, an error in one line.
Only what a person reads (UI markdown and tables, the report's markdown, a refusal) goes through
here; JSON, CSV and parquet keep full precision."""

from __future__ import annotations

import math

DICE_DECIMALS = 3
VOLUME_DECIMALS = 2
# Metrics shown with the Dice precision (scores in [0, 1]) and with the volume precision (ml).
SCORE_KEYS = ("dice", "f1_isles22", "f1_isles24")
VOLUME_SUFFIX = "_ml"


def decimals_for(metric: str) -> int | None:
    """How many decimals a person sees for ``metric``; None for counts and other numbers."""
    if metric in SCORE_KEYS or metric.startswith("dice") or metric.startswith("f1"):
        return DICE_DECIMALS
    if metric.endswith(VOLUME_SUFFIX) or "_ml_" in metric:
        return VOLUME_DECIMALS
    return None


def fmt_dice(value: float | None) -> str:
    return _fixed(value, DICE_DECIMALS)


def fmt_ml(value: float | None) -> str:
    return _fixed(value, VOLUME_DECIMALS)


def fmt_metric(metric: str, value) -> str:
    """``value`` as a person reads it: fixed decimals by metric, counts as integers."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    decimals = decimals_for(metric)
    if decimals is not None:
        return _fixed(value, decimals)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def rounded(metric: str, value):
    """``value`` rounded for a UI table cell (a number, so that the UI can sort it)."""
    decimals = decimals_for(metric)
    if decimals is None or not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return value
    return round(float(value), decimals)


def _fixed(value, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.{decimals}f}"


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
