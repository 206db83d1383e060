"""Scoring a predicted lesion mask against the ground truth: the official ISLES'22 and ISLES'24 numbers.

Definitions (see ``shared/reference/metrics.md``): masks binarised at ``> 0.5`` after the header
scaling (a uint16 {0, 65535} mask with scl_slope 1/65535 reads as {0, 1}; the official ISLES'24
script truncates it to 0 and scores a perfect prediction Dice 0, see docs/network-segmenter.md,
section 7; the > 0.5 rule is the right one); components are
26-connected (cc3d); voxel volume from ``|det(affine[:3, :3])|``.

* Dice = 2|P∩G| / (|P| + |G|), 1 when both are empty.
* AVD (ml) = | |G| - |P| | x voxel volume; lesion count difference = | #G - #P |.
* ISLES'22 lesion F1: a G component overlapping P by >= 1 voxel is a TP (else FN); a P component
  touching no G voxel is an FP; F1 = TP / (TP + (FP + FN) / 2).
* ISLES'24 lesion F1 (panoptica ``NaiveThresholdMatching(0.2)``): (G, P) component pairs sorted
  by IoU descending are matched greedily one-to-one when IoU >= 0.2; F1 = TP / (TP + FP/2 + FN/2).
* Both F1 are 1 when both masks are empty.

Everything comes from one labelling pass: G and P are labelled once, and one joint histogram of
(G label, P label) over the voxels where either is set gives every intersection and every
component size, hence every IoU. No loop runs over voxels or lesions.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import cc3d
import nibabel as nib
import numpy as np
from upath import UPath

from isles_pipeline.nifti import (
    NiftiError,
    as_mask,
    check_same_grid,
    decode,
    voxel_volume_ml,
)

CONNECTIVITY = 26
ISLES24_IOU_THRESHOLD = 0.2
# Above this many (G label, P label) cells the dense joint histogram costs more memory than
# sorting the overlapping voxels; both give the same cells.
DENSE_TABLE_MAX_CELLS = 1 << 22

HEADLINE_KEYS = ("dice", "avd_ml", "lesion_count_diff", "f1_isles22", "f1_isles24", "gt_ml", "pred_ml")


@dataclass(frozen=True)
class CaseScores:
    """All numbers for one case; the first seven fields are the headline metrics."""

    dice: float
    avd_ml: float
    lesion_count_diff: int
    f1_isles22: float
    f1_isles24: float
    gt_ml: float
    pred_ml: float
    gt_lesions: int
    pred_lesions: int
    tp_isles22: int
    fp_isles22: int
    fn_isles22: int
    tp_isles24: int
    fp_isles24: int
    fn_isles24: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain Python numbers (JSON-ready), headline metrics first in the documented order."""
        return asdict(self)


@dataclass(frozen=True)
class _Overlaps:
    """Component sizes and the non-empty intersections of a labelled pair of masks."""

    gt_sizes: np.ndarray  # voxels of G component i at index i - 1
    pred_sizes: np.ndarray
    gt_label: np.ndarray  # one entry per overlapping (G, P) pair, labels from 1
    pred_label: np.ndarray
    voxels: np.ndarray  # intersection size of that pair


def score_masks(pred: np.ndarray, gt: np.ndarray, affine: np.ndarray) -> CaseScores:
    """Score prediction ``pred`` against ground truth ``gt``: 3-D arrays of one grid (voxel -> mm
    ``affine``). Boolean arrays are used as they are; any other dtype is binarised at ``> 0.5``."""
    pred_mask, gt_mask = _binarise(pred), _binarise(gt)
    if pred_mask.ndim != 3 or pred_mask.shape != gt_mask.shape:
        raise ValueError(f"need two 3-D masks of one shape, got prediction {pred_mask.shape} and ground truth {gt_mask.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    gt_labels, n_gt = _label(gt_mask)
    pred_labels, n_pred = _label(pred_mask)
    overlaps = _overlaps(gt_labels, n_gt, pred_labels, n_pred, gt_mask | pred_mask)
    return _scores(overlaps, voxel_volume_ml(affine))


def score_images(pred_img: nib.Nifti1Image, gt_img: nib.Nifti1Image) -> CaseScores:
    """Score two NIfTI images (header scaling applied); refuse images on different grids."""
    try:
        grid = check_same_grid({"ground truth": gt_img, "prediction": pred_img})
    except NiftiError as exc:
        raise NiftiError(f"refusing to score: {exc}") from exc
    return score_masks(as_mask(pred_img), as_mask(gt_img), grid.affine)


def score_files(pred_path: str | os.PathLike[str], gt_path: str | os.PathLike[str]) -> CaseScores:
    """Score two ``.nii``/``.nii.gz`` files, local paths or fsspec URLs."""
    pred_img = decode(UPath(pred_path).read_bytes(), what=str(pred_path))
    gt_img = decode(UPath(gt_path).read_bytes(), what=str(gt_path))
    return score_images(pred_img, gt_img)


def _binarise(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask > 0.5


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components numbered 1..n in raster order.

    The mask goes in as a uint8 view: cc3d 4.1's boolean fast path raises "maximum length
    exception" on line-shaped volumes (two axes of length 1); the uint8 path labels them.
    """
    labels, n = cc3d.connected_components(mask.view(np.uint8), connectivity=CONNECTIVITY, return_N=True)
    return labels, int(n)


def _overlaps(gt_labels: np.ndarray, n_gt: int, pred_labels: np.ndarray, n_pred: int, either: np.ndarray) -> _Overlaps:
    """One joint histogram of (G label, P label) over the voxels where either mask is set."""
    gt_l = gt_labels[either].astype(np.int64)
    pred_l = pred_labels[either].astype(np.int64)
    width = n_pred + 1
    gt_cell, pred_cell, count = _joint_histogram(gt_l * width + pred_l, (n_gt + 1) * width, width)
    gt_sizes = np.bincount(gt_cell, weights=count, minlength=n_gt + 1)[1:].astype(np.int64)
    pred_sizes = np.bincount(pred_cell, weights=count, minlength=n_pred + 1)[1:].astype(np.int64)
    both = (gt_cell > 0) & (pred_cell > 0)
    return _Overlaps(gt_sizes, pred_sizes, gt_cell[both], pred_cell[both], count[both])


def _joint_histogram(keys: np.ndarray, n_cells: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-empty cells of the histogram of ``keys = row * width + col``: (rows, cols, counts)."""
    if n_cells <= DENSE_TABLE_MAX_CELLS:
        table = np.bincount(keys, minlength=n_cells)
        cells = np.flatnonzero(table)
        counts = table[cells]
    else:
        cells, counts = np.unique(keys, return_counts=True)
    return cells // width, cells % width, counts.astype(np.int64)


def _scores(o: _Overlaps, voxel_ml: float) -> CaseScores:
    n_gt, n_pred = len(o.gt_sizes), len(o.pred_sizes)
    gt_voxels, pred_voxels = int(o.gt_sizes.sum()), int(o.pred_sizes.sum())
    tp22 = len(np.unique(o.gt_label))
    fp22, fn22 = n_pred - len(np.unique(o.pred_label)), n_gt - tp22
    tp24 = _greedy_iou_matches(o)
    fp24, fn24 = n_pred - tp24, n_gt - tp24
    return CaseScores(
        dice=_dice(int(o.voxels.sum()), gt_voxels, pred_voxels),
        avd_ml=abs(gt_voxels - pred_voxels) * voxel_ml,
        lesion_count_diff=abs(n_gt - n_pred),
        f1_isles22=_f1(tp22, fp22, fn22),
        f1_isles24=_f1(tp24, fp24, fn24),
        gt_ml=gt_voxels * voxel_ml,
        pred_ml=pred_voxels * voxel_ml,
        gt_lesions=n_gt,
        pred_lesions=n_pred,
        tp_isles22=tp22,
        fp_isles22=fp22,
        fn_isles22=fn22,
        tp_isles24=tp24,
        fp_isles24=fp24,
        fn_isles24=fn24,
    )


def _greedy_iou_matches(o: _Overlaps) -> int:
    """Number of one-to-one (G, P) matches with IoU >= 0.2, taken greedily by IoU descending.

    Ties in IoU go to the lower P label, then the lower G label: panoptica's order (a stable sort
    of pairs enumerated by (P label, G label)). Labels are cc3d's raster-order numbering.
    """
    union = o.gt_sizes[o.gt_label - 1] + o.pred_sizes[o.pred_label - 1] - o.voxels
    iou = o.voxels / union
    keep = iou >= ISLES24_IOU_THRESHOLD
    iou, gt_label, pred_label = iou[keep], o.gt_label[keep], o.pred_label[keep]
    order = np.lexsort((gt_label, pred_label, -iou))
    matched_gt: set[int] = set()
    matched_pred: set[int] = set()
    for g, p in zip(gt_label[order].tolist(), pred_label[order].tolist()):
        if g not in matched_gt and p not in matched_pred:
            matched_gt.add(g)
            matched_pred.add(p)
    return len(matched_gt)


def _dice(intersection: int, gt_voxels: int, pred_voxels: int) -> float:
    total = gt_voxels + pred_voxels
    return 1.0 if total == 0 else 2.0 * intersection / total


def _f1(tp: int, fp: int, fn: int) -> float:
    denominator = tp + (fp + fn) / 2
    return 1.0 if denominator == 0 else tp / denominator
