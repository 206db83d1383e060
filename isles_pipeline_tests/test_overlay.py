"""The per-case overlay PNG (size, contour pixels on the masks' boundary voxels) and the
numbers-for-people formatting."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import ndimage

from isles_pipeline import formatting
from isles_pipeline.overlay import (
    EXPERT_RGB,
    GAP_PX,
    LEGEND_PX,
    MARGIN_PX,
    PREDICTION_RGB,
    TITLE_PX,
    _title,
    largest_lesion_slices,
    render_case_overlay,
)

SHAPE, SCALE, Z = (20, 16, 5), 4, 2
RECORD = {"case_id": "sub-x", "model": "rules", "dice": 0.512345678, "tp_isles24": 1, "fp_isles24": 0, "fn_isles24": 0,
          "gt_ml": 0.3, "pred_ml": 0.123456}


def squares():
    dwi = np.random.default_rng(0).uniform(0, 100, SHAPE).astype(np.float32)
    gt, pred = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    gt[4:10, 3:9, Z] = True  # 6 x 6 voxels
    pred[6:12, 5:11, Z] = True
    return dwi, gt, pred


def boundary_voxels(mask2d: np.ndarray) -> set[tuple[int, int]]:
    """Reference: the mask minus its erosion by the 4-neighbour cross (outside the slice = background)."""
    inner = ndimage.binary_erosion(mask2d, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return {tuple(v) for v in np.argwhere(mask2d & ~inner)}


def pixels_of(rgb: np.ndarray, colour: tuple[int, int, int]) -> set[tuple[int, int]]:
    """(x, y) voxel of every panel pixel in ``colour``; the panel is flipud(slice.T) at SCALE px per voxel."""
    rows, cols = np.nonzero(np.all(rgb == np.array(colour), axis=2))
    found = set()
    for r, c in zip(rows, cols, strict=True):
        if TITLE_PX <= r < TITLE_PX + SHAPE[1] * SCALE and MARGIN_PX <= c < MARGIN_PX + SHAPE[0] * SCALE:
            x, y = (c - MARGIN_PX) // SCALE, SHAPE[1] - 1 - (r - TITLE_PX) // SCALE
            found.add((int(x), int(y)))
    return found


def test_overlay_png_size_and_contours_on_the_boundary_voxels():
    dwi, gt, pred = squares()
    png = render_case_overlay(dwi, gt, pred, RECORD, scale=SCALE)
    image = imread(io.BytesIO(png))
    assert image.shape[:2] == (TITLE_PX + SHAPE[1] * SCALE + LEGEND_PX, 2 * MARGIN_PX + SHAPE[0] * SCALE)  # one slice has lesion
    rgb = np.round(image[..., :3] * 255).astype(int)
    pred_edge, gt_edge = boundary_voxels(pred[:, :, Z]), boundary_voxels(gt[:, :, Z])
    assert len(pred_edge) == 20 and len(gt_edge) == 20
    assert pixels_of(rgb, PREDICTION_RGB) == pred_edge
    assert pixels_of(rgb, EXPERT_RGB) == gt_edge - pred_edge  # the prediction is drawn on top
    # every pixel of a contour voxel's block has the colour: SCALE x SCALE pixels per voxel
    magenta = np.all(rgb == np.array(PREDICTION_RGB), axis=2)[TITLE_PX:TITLE_PX + SHAPE[1] * SCALE, MARGIN_PX:MARGIN_PX + SHAPE[0] * SCALE]
    assert magenta.sum() == len(pred_edge) * SCALE * SCALE


def test_overlay_shows_the_slices_where_the_lesion_is_largest():
    gt, pred = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    gt[2:8, 2:8, 1] = True  # 36 voxels
    pred[2:4, 2:4, 3] = True  # 4
    pred[2:12, 2:12, 4] = True  # 100
    gt[0, 0, 0] = True  # 1
    assert largest_lesion_slices(gt, pred) == [1, 3, 4]
    assert largest_lesion_slices(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)) == [SHAPE[2] // 2]
    png = render_case_overlay(np.ones(SHAPE), gt, pred, RECORD, scale=SCALE)
    width = 2 * MARGIN_PX + 3 * SHAPE[0] * SCALE + 2 * GAP_PX
    assert imread(io.BytesIO(png)).shape[:2] == (TITLE_PX + SHAPE[1] * SCALE + LEGEND_PX, width)


def test_overlay_title_carries_dice_and_lesion_counts_rounded_for_people():
    title = _title(RECORD)
    assert "Dice 0.512" in title and "TP 1 FP 0 FN 0" in title and "predicted 0.12 ml" in title and "true 0.30 ml" in title
    assert title.count("\n") == 2


def test_overlay_refuses_masks_on_another_grid():
    dwi, gt, _ = squares()
    with pytest.raises(ValueError, match=r"^case sub-x: overlay needs three 3-D arrays of one shape"):
        render_case_overlay(dwi, gt, np.zeros((3, 3, 3)), RECORD)


def test_people_see_dice_to_3_decimals_and_volumes_to_2():
    assert formatting.fmt_metric("dice", 0.8125) == "0.812" and formatting.fmt_metric("f1_isles24", 1) == "1.000"
    assert formatting.fmt_metric("avd_ml", 12.3456) == "12.35" and formatting.fmt_metric("gt_ml", 0.0) == "0.00"
    assert formatting.fmt_metric("lesion_count_diff", 3.0) == "3" and formatting.fmt_metric("dice", float("nan")) == "-"
    assert formatting.rounded("dice", 0.123456789) == 0.123 and formatting.rounded("pred_ml", 1.23456) == 1.23
    assert formatting.rounded("lesion_count_diff", 2) == 2
