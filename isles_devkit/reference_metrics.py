"""The plain, obviously-correct scoring used to check ``isles_pipeline.metrics`` (tests, benchmark).

Written the slow way on purpose: scipy labelling (independent of cc3d), one boolean mask per
lesion, IoU of every overlapping pair computed from those masks, and the metrics.md formulas
spelled out. It returns the same dict as ``CaseScores.as_dict()``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components numbered 1..n in raster order (scipy, not cc3d)."""
    labels, n = ndimage.label(mask, structure=CONNECTIVITY_26)
    return labels, int(n)


def reference_scores(pred: np.ndarray, gt: np.ndarray, affine: np.ndarray) -> dict[str, float | int]:
    """Every ``CaseScores`` number, computed lesion by lesion."""
    pred, gt = np.asarray(pred) > 0.5, np.asarray(gt) > 0.5
    voxel_ml = abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])) / 1000.0
    gt_labels, n_gt = label(gt)
    pred_labels, n_pred = label(pred)

    gt_voxels, pred_voxels = int(gt.sum()), int(pred.sum())
    both_sizes = gt_voxels + pred_voxels
    dice = 1.0 if both_sizes == 0 else 2.0 * int((gt & pred).sum()) / both_sizes

    tp22 = sum(1 for i in range(1, n_gt + 1) if pred[gt_labels == i].any())
    fp22 = sum(1 for j in range(1, n_pred + 1) if not gt[pred_labels == j].any())
    fn22 = n_gt - tp22

    tp24 = _greedy_matches(gt_labels, n_gt, pred_labels)
    fp24, fn24 = n_pred - tp24, n_gt - tp24

    return {
        "dice": dice,
        "avd_ml": abs(gt_voxels - pred_voxels) * voxel_ml,
        "lesion_count_diff": abs(n_gt - n_pred),
        "f1_isles22": _f1(tp22, fp22, fn22),
        "f1_isles24": _f1(tp24, fp24, fn24),
        "gt_ml": gt_voxels * voxel_ml,
        "pred_ml": pred_voxels * voxel_ml,
        "gt_lesions": n_gt,
        "pred_lesions": n_pred,
        "tp_isles22": tp22,
        "fp_isles22": fp22,
        "fn_isles22": fn22,
        "tp_isles24": tp24,
        "fp_isles24": fp24,
        "fn_isles24": fn24,
    }


def _greedy_matches(gt_labels: np.ndarray, n_gt: int, pred_labels: np.ndarray) -> int:
    """panoptica's naive threshold matching: pairs by IoU descending (ties: P label, then G
    label), each lesion used once, a pair counts when IoU >= 0.2."""
    pairs = []
    for i in range(1, n_gt + 1):
        g = gt_labels == i
        for j in np.unique(pred_labels[g]):
            if j == 0:
                continue  # background: pairs that do not overlap have IoU 0
            p = pred_labels == j
            iou = (g & p).sum() / (g | p).sum()
            pairs.append((-iou, int(j), i))
    used_gt: set[int] = set()
    used_pred: set[int] = set()
    for neg_iou, j, i in sorted(pairs):
        if -neg_iou >= 0.2 and i not in used_gt and j not in used_pred:
            used_gt.add(i)
            used_pred.add(j)
    return len(used_gt)


def _f1(tp: int, fp: int, fn: int) -> float:
    if tp + fp + fn == 0:
        return 1.0
    return tp / (tp + (fp + fn) / 2)
