"""A picture of one case: DWI slices where the lesion is largest, the expert mask and the
prediction drawn as contours, the case's numbers in the title. Plain numpy + matplotlib (Agg).

The panels are composed voxel-exactly in numpy (each voxel a ``scale`` x ``scale`` block, nearest
neighbour) and placed on the figure pixel for pixel, so a contour pixel is a boundary voxel of
its mask: the mask's voxels that touch (6-connectivity, in the slice: 4) a voxel outside it.
Panel layout: ``np.flipud(volume[:, :, z].T)`` (x to the right, y upward), left to right by z.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .formatting import fmt_dice, fmt_ml

EXPERT_RGB = (0, 255, 0)  # expert mask: green
PREDICTION_RGB = (255, 0, 255)  # prediction: magenta (drawn over the expert contour)
PANELS = 3
GAP_PX = 8
MARGIN_PX = 8
TITLE_PX = 60
LEGEND_PX = 40
TARGET_PANEL_PX = 256
DPI = 100


@dataclass(frozen=True)
class Layout:
    scale: int
    slices: list[int]
    panel_width: int  # pixels
    panel_height: int
    width: int
    height: int

    def panel_origin(self, index: int) -> tuple[int, int]:
        """(column, row) in the PNG of panel ``index``'s top-left pixel."""
        return MARGIN_PX + index * (self.panel_width + GAP_PX), TITLE_PX


def largest_lesion_slices(gt: np.ndarray, pred: np.ndarray, count: int = PANELS) -> list[int]:
    """The axial slices (last axis) with the most lesion voxels, true or predicted, in z order;
    the middle slice when neither mask has a voxel."""
    area = (gt | pred).sum(axis=(0, 1))
    if not area.any():
        return [gt.shape[2] // 2]
    ranked = [int(z) for z in np.argsort(-area, kind="stable")[:count] if area[z] > 0]
    return sorted(ranked)


def layout_for(shape: tuple[int, int, int], slices: list[int], scale: int | None = None) -> Layout:
    scale = scale or max(1, TARGET_PANEL_PX // max(shape[0], shape[1]))
    panel_width, panel_height = shape[0] * scale, shape[1] * scale
    width = 2 * MARGIN_PX + len(slices) * panel_width + (len(slices) - 1) * GAP_PX
    return Layout(scale, slices, panel_width, panel_height, width, TITLE_PX + panel_height + LEGEND_PX)


def boundary(mask2d: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a 4-neighbour outside it (the slice's edge counts as outside)."""
    padded = np.pad(mask2d, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask2d & ~inner


def _grey(dwi2d: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = np.clip((dwi2d - low) / (high - low if high > low else 1.0), 0.0, 1.0)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=2)


def _panel(dwi2d: np.ndarray, gt2d: np.ndarray, pred2d: np.ndarray, low: float, high: float, scale: int) -> np.ndarray:
    rgb = _grey(dwi2d, low, high)
    rgb[boundary(gt2d)] = EXPERT_RGB
    rgb[boundary(pred2d)] = PREDICTION_RGB
    shown = np.flipud(np.transpose(rgb, (1, 0, 2)))
    return np.repeat(np.repeat(shown, scale, axis=0), scale, axis=1)


def _title(record: dict) -> str:
    """Three short lines, so that the title fits over a single narrow panel too."""
    who = f"{record.get('case_id', '?')} · {record.get('model', '')}".rstrip(" ·")
    return (
        f"{who}\nDice {fmt_dice(record.get('dice'))} · lesions (ISLES'24) TP {record.get('tp_isles24', '-')} "
        f"FP {record.get('fp_isles24', '-')} FN {record.get('fn_isles24', '-')}\n"
        f"true {fmt_ml(record.get('gt_ml'))} ml · predicted {fmt_ml(record.get('pred_ml'))} ml"
    )


def render_case_overlay(dwi: np.ndarray, gt_mask: np.ndarray, pred_mask: np.ndarray, record: dict, scale: int | None = None) -> bytes:
    """PNG bytes: the slices where the lesion (true or predicted) is largest, contours of the expert
    mask (green) and the prediction (magenta), Dice / TP / FP / FN in the title."""
    dwi = np.asarray(dwi, dtype=np.float32)
    gt, pred = np.asarray(gt_mask) > 0.5, np.asarray(pred_mask) > 0.5
    if not (dwi.shape == gt.shape == pred.shape) or dwi.ndim != 3:
        raise ValueError(f"case {record.get('case_id', '?')}: overlay needs three 3-D arrays of one shape, got {dwi.shape}, {gt.shape}, {pred.shape}")
    finite = dwi[np.isfinite(dwi)]
    low, high = (np.percentile(finite, (1, 99.5)) if finite.size else (0.0, 1.0))
    dwi = np.nan_to_num(dwi, nan=float(low))
    lay = layout_for(dwi.shape, largest_lesion_slices(gt, pred), scale)
    canvas = np.zeros((lay.panel_height, lay.width, 3), dtype=np.uint8)
    for index, z in enumerate(lay.slices):
        left = lay.panel_origin(index)[0]
        canvas[:, left:left + lay.panel_width] = _panel(dwi[:, :, z], gt[:, :, z], pred[:, :, z], float(low), float(high), lay.scale)
    return _figure_png(canvas, lay, record)


def _figure_png(canvas: np.ndarray, lay: Layout, record: dict) -> bytes:
    figure = Figure(figsize=(lay.width / DPI, lay.height / DPI), dpi=DPI, facecolor="black")
    figure.figimage(canvas, xo=0, yo=LEGEND_PX, origin="upper")
    fontsize = 9 if lay.width >= 300 else 7
    figure.text(0.5, 1 - 3 / lay.height, _title(record), ha="center", va="top", color="white", fontsize=fontsize, linespacing=1.3)
    for index, z in enumerate(lay.slices):
        left = lay.panel_origin(index)[0]
        figure.text((left + 4) / lay.width, (LEGEND_PX + 4) / lay.height, f"z={z}", color="white", fontsize=8)
    handles = [Line2D([], [], color=np.array(c) / 255, lw=2) for c in (EXPERT_RGB, PREDICTION_RGB)]
    figure.legend(handles, ["expert mask", "prediction"], loc="lower center", ncol=2, frameon=False,
                  labelcolor="white", fontsize=8, bbox_to_anchor=(0.5, 0.0))
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="black")
    return buffer.getvalue()
