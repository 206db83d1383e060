"""Exact ISLES'22 / ISLES'24 case scores on hand-made masks, against a plain reference, and on a
real ISLES'22 mask."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from isles_devkit.reference_metrics import reference_scores
from isles_pipeline import metrics, nifti
from isles_pipeline.metrics import HEADLINE_KEYS, score_files, score_images, score_masks

# 10 mm isotropic voxels: 1 voxel = 1 ml. np.linalg.det goes through a log, so the voxel volume
# is 1 ml to within rounding; volumes below are written as voxel counts times ML.
ML_AFFINE = np.diag([10.0, 10.0, 10.0, 1.0])
ML = nifti.voxel_volume_ml(ML_AFFINE)


def line_mask(length: int, *runs: tuple[int, int]) -> np.ndarray:
    """A (length, 1, 1) volume with voxels [start, stop) set for each run."""
    mask = np.zeros((length, 1, 1), dtype=bool)
    for start, stop in runs:
        mask[start:stop] = True
    return mask


def box_mask(shape: tuple[int, int, int], *boxes: tuple[slice, slice, slice]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[box] = True
    return mask


# --- hand-made cases, one per rule -------------------------------------------------------------


def test_test_voxel_is_one_ml():
    assert ML == pytest.approx(1.0, rel=1e-12)


def test_empty_vs_empty_scores_perfect():
    empty = np.zeros((4, 4, 4), dtype=bool)
    s = score_masks(empty, empty, ML_AFFINE)
    assert (s.dice, s.f1_isles22, s.f1_isles24) == (1.0, 1.0, 1.0)
    assert (s.avd_ml, s.lesion_count_diff, s.gt_ml, s.pred_ml) == (0.0, 0, 0.0, 0.0)
    assert (s.gt_lesions, s.pred_lesions, s.tp_isles24, s.fp_isles24, s.fn_isles24) == (0, 0, 0, 0, 0)


def test_empty_prediction_misses_every_lesion():
    gt = box_mask((6, 6, 6), np.s_[0:2, 0:2, 0:2], np.s_[5:6, 5:6, 5:6])  # 8 + 1 voxels
    s = score_masks(np.zeros_like(gt), gt, ML_AFFINE)
    assert (s.dice, s.f1_isles22, s.f1_isles24) == (0.0, 0.0, 0.0)
    assert (s.avd_ml, s.gt_ml, s.pred_ml, s.lesion_count_diff) == (9 * ML, 9 * ML, 0.0, 2)
    assert (s.tp_isles22, s.fp_isles22, s.fn_isles22) == (0, 0, 2)
    assert (s.tp_isles24, s.fp_isles24, s.fn_isles24) == (0, 0, 2)


def test_false_positives_only():
    pred = box_mask((6, 6, 6), np.s_[0:1, 0:1, 0:3], np.s_[4:6, 4:6, 4:6])  # 3 + 8 voxels
    s = score_masks(pred, np.zeros_like(pred), ML_AFFINE)
    assert (s.dice, s.f1_isles22, s.f1_isles24) == (0.0, 0.0, 0.0)
    assert (s.avd_ml, s.gt_ml, s.pred_ml, s.lesion_count_diff) == (11 * ML, 0.0, 11 * ML, 2)
    assert (s.tp_isles22, s.fp_isles22, s.fn_isles22) == (0, 2, 0)
    assert (s.tp_isles24, s.fp_isles24, s.fn_isles24) == (0, 2, 0)


def test_lesion_split_in_two_by_the_prediction():
    # G: 20 voxels; P: its two ends (8 voxels each), split by an empty slice: 2 components.
    gt = box_mask((2, 2, 5), np.s_[:, :, 0:5])
    pred = box_mask((2, 2, 5), np.s_[:, :, 0:2], np.s_[:, :, 3:5])
    s = score_masks(pred, gt, ML_AFFINE)
    assert s.dice == 2 * 16 / 36
    assert (s.avd_ml, s.lesion_count_diff, s.gt_lesions, s.pred_lesions) == (4 * ML, 1, 1, 2)
    # ISLES'22: the lesion is found, and both pieces touch it.
    assert (s.tp_isles22, s.fp_isles22, s.fn_isles22, s.f1_isles22) == (1, 0, 0, 1.0)
    # ISLES'24: one-to-one, both pairs have IoU 8/20; the second piece is a false positive.
    assert (s.tp_isles24, s.fp_isles24, s.fn_isles24) == (1, 1, 0)
    assert s.f1_isles24 == 1 / (1 + 0.5)


def test_overlap_below_iou_threshold_counts_for_isles22_only():
    gt = line_mask(20, (0, 10))
    pred = line_mask(20, (9, 19))  # one shared voxel: IoU 1/19
    s = score_masks(pred, gt, ML_AFFINE)
    assert s.dice == 2 * 1 / 20
    assert (s.tp_isles22, s.fp_isles22, s.fn_isles22, s.f1_isles22) == (1, 0, 0, 1.0)
    assert (s.tp_isles24, s.fp_isles24, s.fn_isles24, s.f1_isles24) == (0, 1, 1, 0.0)


def test_iou_exactly_at_threshold_matches():
    gt = line_mask(12, (0, 6))
    pred = line_mask(12, (4, 10))  # intersection 2, union 10: IoU exactly 0.2
    s = score_masks(pred, gt, ML_AFFINE)
    assert (s.tp_isles24, s.fp_isles24, s.fn_isles24, s.f1_isles24) == (1, 0, 0, 1.0)


def test_iou_ties_go_to_the_lower_prediction_label_like_panoptica():
    # G1 [4,14) meets P1 [0,8) and P2 [10,18) with the same IoU 4/14; G2 [16,18) meets P2 with
    # IoU 2/8. Taking (G1, P1) first leaves P2 for G2: two matches. (G1, P2) first would give one.
    gt = line_mask(20, (4, 14), (16, 18))
    pred = line_mask(20, (0, 8), (10, 18))
    s = score_masks(pred, gt, ML_AFFINE)
    assert (s.tp_isles24, s.fp_isles24, s.fn_isles24, s.f1_isles24) == (2, 0, 0, 1.0)


def test_diagonal_contact_is_one_component():
    gt = np.zeros((3, 3, 3), dtype=bool)
    gt[0, 0, 0] = gt[1, 1, 1] = True  # corner contact only: one lesion under 26-connectivity
    pred = np.zeros_like(gt)
    pred[0, 0, 0] = True
    s = score_masks(pred, gt, ML_AFFINE)
    assert (s.gt_lesions, s.pred_lesions, s.lesion_count_diff) == (1, 1, 0)
    assert (s.f1_isles22, s.f1_isles24, s.tp_isles24) == (1.0, 1.0, 1)  # IoU 1/2
    assert s.dice == 2 * 1 / 3


def test_line_shaped_volumes_are_labelled():
    # cc3d 4.1 fails on boolean volumes with two axes of length 1; score_masks must not.
    for shape in ((1, 1, 3), (1, 3, 1), (3, 1, 1)):
        pred = np.array([True, False, True]).reshape(shape)
        s = score_masks(pred, np.zeros(shape, dtype=bool), ML_AFFINE)
        assert (s.pred_lesions, s.fp_isles22, s.fp_isles24) == (2, 2, 2)


def test_oblique_affine_uses_the_determinant():
    # Shear: column norms (zooms) are 2, sqrt(10), 4 (product 25.3), but the voxel is 24 mm^3.
    affine = np.array([[2.0, 1.0, 0.0, 5.0], [0.0, 3.0, 0.0, -7.0], [0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    gt = box_mask((4, 4, 4), np.s_[0:1, 0:1, 0:5])  # 4 voxels
    pred = box_mask((4, 4, 4), np.s_[0:1, 0:1, 0:2])  # 2 voxels
    s = score_masks(pred, gt, affine)
    assert (s.gt_ml, s.pred_ml, s.avd_ml) == pytest.approx((4 * 0.024, 2 * 0.024, 2 * 0.024), rel=1e-12)


def test_rotated_affine_volume():
    c, s_ = math.cos(math.radians(30)), math.sin(math.radians(30))
    rotation = np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 2.0, 3.0])  # 9 mm^3 voxels
    gt = box_mask((3, 3, 3), np.s_[0:1, 0:1, 0:3])
    s = score_masks(gt, gt, affine)
    assert s.gt_ml == pytest.approx(3 * 0.009, rel=1e-12)
    assert s.avd_ml == 0.0


def test_non_boolean_arrays_are_binarised_above_half():
    gt = np.array([0.0, 0.5, 0.51, 1.0]).reshape(4, 1, 1)  # 2 voxels > 0.5, both connected
    s = score_masks(gt, gt > 0.5, ML_AFFINE)
    assert (s.gt_ml, s.pred_ml, s.dice, s.gt_lesions) == (2 * ML, 2 * ML, 1.0, 1)


def test_as_dict_starts_with_the_headline_metrics():
    s = score_masks(line_mask(5, (0, 2)), line_mask(5, (1, 4)), ML_AFFINE)
    keys = list(s.as_dict())
    assert keys[:7] == ["dice", "avd_ml", "lesion_count_diff", "f1_isles22", "f1_isles24", "gt_ml", "pred_ml"]
    assert tuple(keys[:7]) == HEADLINE_KEYS
    assert keys[7:] == ["gt_lesions", "pred_lesions", "tp_isles22", "fp_isles22", "fn_isles22",
                        "tp_isles24", "fp_isles24", "fn_isles24"]  # fmt: skip
    assert all(type(v) in (int, float) for v in s.as_dict().values())  # JSON-ready


def test_scores_are_frozen():
    s = score_masks(line_mask(3, (0, 1)), line_mask(3, (0, 1)), ML_AFFINE)
    with pytest.raises(AttributeError):
        s.dice = 0.5  # type: ignore[misc]


def test_score_masks_refuses_mismatched_arrays():
    with pytest.raises(ValueError, match="one shape"):
        score_masks(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool), ML_AFFINE)
    with pytest.raises(ValueError, match="3-D"):
        score_masks(np.zeros((2, 2), bool), np.zeros((2, 2), bool), ML_AFFINE)
    with pytest.raises(ValueError, match="4x4"):
        score_masks(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), np.eye(3))


# --- NIfTI images and files --------------------------------------------------------------------


def uint16_mask_image(raw: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A uint16 mask stored with scl_slope 1/65535, read back as a pipeline would read it."""
    image = nib.Nifti1Image(raw.astype(np.uint16), affine)
    image.header.set_data_dtype(np.uint16)
    image.header.set_slope_inter(1 / 65535, 0)
    return nifti.decode(nifti.encode(image))


def test_uint16_masks_are_scaled_before_binarising():
    """The dataset's masks: uint16 with scale 1/65535, so the stored 65535 is lesion 1.0."""
    raw = np.zeros((4, 1, 1), dtype=np.uint16)
    raw[:2] = 65535
    image = uint16_mask_image(raw, ML_AFFINE)
    assert image.dataobj.get_unscaled()[0, 0, 0] == 65535  # the test really stores {0, 65535}
    truth = nib.Nifti1Image(np.array([1, 1, 0, 0], np.uint8).reshape(4, 1, 1), ML_AFFINE)
    s = score_images(image, truth)
    assert (s.dice, s.pred_ml, s.gt_ml, s.pred_lesions) == (1.0, 2 * ML, 2 * ML, 1)


def test_a_scaled_mask_with_more_than_one_positive_value_is_refused_with_its_values():
    """0.61 and 0.46 after scaling are no lesion label: a threshold would keep one and drop the other."""
    raw = np.array([65535, 40000, 0, 30000], dtype=np.uint16).reshape(4, 1, 1)
    truth = nib.Nifti1Image(np.array([1, 1, 0, 0], np.uint8).reshape(4, 1, 1), ML_AFFINE)
    with pytest.raises(nifti.NiftiError, match=r"not a binary lesion mask: values 0, 0.457771, 0.610361, 1"):
        score_images(uint16_mask_image(raw, ML_AFFINE), truth)


def test_score_images_refuses_different_shapes():
    a = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), ML_AFFINE)
    b = nib.Nifti1Image(np.zeros((2, 2, 3), np.uint8), ML_AFFINE)
    with pytest.raises(nifti.NiftiError, match=r"refusing to score: prediction shape \(2, 2, 3\) differs"):
        score_images(b, a)


def test_score_images_refuses_different_affines():
    shifted = ML_AFFINE.copy()
    shifted[0, 3] = 1.0
    a = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), ML_AFFINE)
    b = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), shifted)
    with pytest.raises(nifti.NiftiError, match="refusing to score: prediction affine differs"):
        score_images(b, a)


def test_score_files_reads_gzipped_nifti(tmp_path: Path):
    gt = line_mask(10, (0, 4))
    pred = line_mask(10, (2, 6))
    for name, mask in (("gt.nii.gz", gt), ("pred.nii.gz", pred)):
        (tmp_path / name).write_bytes(nifti.encode(nib.Nifti1Image(mask.astype(np.uint8), ML_AFFINE)))
    s = score_files(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz")
    assert s == score_masks(pred, gt, ML_AFFINE)
    assert s.dice == 0.5


# --- against the plain reference ---------------------------------------------------------------


def assert_matches_reference(pred: np.ndarray, gt: np.ndarray, affine: np.ndarray) -> None:
    assert score_masks(pred, gt, affine).as_dict() == reference_scores(pred, gt, affine)


def test_reference_agrees_on_the_hand_made_split_case():
    # The reference itself must give the hand-computed numbers, or the property test proves nothing.
    gt = box_mask((2, 2, 5), np.s_[:, :, 0:5])
    pred = box_mask((2, 2, 5), np.s_[:, :, 0:2], np.s_[:, :, 3:5])
    ref = reference_scores(pred, gt, ML_AFFINE)
    assert (ref["f1_isles22"], ref["f1_isles24"], ref["lesion_count_diff"]) == (1.0, 1 / 1.5, 1)


small_shapes = st.tuples(*(st.integers(1, 7) for _ in range(3)))


@st.composite
def mask_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(small_shapes)
    gt = draw(arrays(np.bool_, shape))
    pred = draw(arrays(np.bool_, shape))
    return pred, gt


@settings(max_examples=300, deadline=None)
@given(mask_pairs())
def test_matches_reference_on_hypothesis_masks(pair: tuple[np.ndarray, np.ndarray]):
    pred, gt = pair
    assert_matches_reference(pred, gt, ML_AFFINE)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    density=st.floats(0.02, 0.6),
    shift=st.tuples(*(st.integers(-1, 1) for _ in range(3))),
    noise=st.floats(0.0, 0.3),
)
def test_matches_reference_on_noisy_shifted_masks(seed, density, shift, noise):
    # Prediction = shifted ground truth with flipped voxels: many partial overlaps and IoU ties.
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 12, size=3))
    gt = rng.random(shape) < density
    pred = np.roll(gt, shift, axis=(0, 1, 2)) ^ (rng.random(shape) < noise * density)
    affine = np.diag([*rng.uniform(0.5, 3.0, size=3), 1.0])
    assert_matches_reference(pred, gt, affine)


def test_sparse_joint_histogram_gives_the_same_scores(monkeypatch: pytest.MonkeyPatch):
    # Many-component masks switch from the dense bincount table to np.unique; force that path.
    rng = np.random.default_rng(7)
    gt = rng.random((9, 9, 9)) < 0.2
    pred = np.roll(gt, 1, axis=0) ^ (rng.random((9, 9, 9)) < 0.05)
    dense = score_masks(pred, gt, ML_AFFINE)
    monkeypatch.setattr(metrics, "DENSE_TABLE_MAX_CELLS", 0)
    assert score_masks(pred, gt, ML_AFFINE) == dense
    assert dense.as_dict() == reference_scores(pred, gt, ML_AFFINE)
    assert dense.gt_lesions > 5 and dense.tp_isles24 > 0  # the case is not trivial


# --- a real ISLES'22 ground-truth mask ---------------------------------------------------------

@pytest.fixture(scope="module")
def real_mask(isles22_dir) -> Path:
    return isles22_dir / "sub-strokecase0009_ses-0001_msk.nii.gz"


def test_real_mask_against_itself(real_mask):
    s = score_files(real_mask, real_mask)
    assert (s.dice, s.f1_isles22, s.f1_isles24, s.avd_ml, s.lesion_count_diff) == (1.0, 1.0, 1.0, 0.0, 0)
    assert (s.gt_lesions, s.tp_isles22, s.tp_isles24) == (18, 18, 18)
    assert s.gt_ml == s.pred_ml == 523 * 0.008000000040691615  # 523 voxels, oblique 2 mm grid


def test_real_mask_against_a_shifted_copy(real_mask):
    image = nifti.decode(real_mask.read_bytes())
    gt = nifti.as_mask(image)
    pred = np.roll(gt, (1, 1, 0), axis=(0, 1, 2))  # one voxel along i and j; nothing wraps
    s = score_masks(pred, gt, image.affine)
    assert s.as_dict() == reference_scores(pred, gt, image.affine)
    assert s.dice == 2 * 274 / (523 + 523)
    assert (s.avd_ml, s.lesion_count_diff, s.pred_lesions) == (0.0, 0, 18)
    assert (s.tp_isles22, s.fp_isles22, s.fn_isles22, s.f1_isles22) == (14, 4, 4, 14 / 18)
    assert (s.tp_isles24, s.fp_isles24, s.fn_isles24, s.f1_isles24) == (6, 12, 12, 6 / 18)
