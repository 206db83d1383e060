"""NVAUTO's 1 mm grid as DeepISLES ran it (MONAI 0.9 ``Spacingd``), and the ROI kept whole.

MONAI 0.9's ``compute_shape_offset`` gives ``n' = round((n - 1) s / t) + 1`` voxels per axis and
its ``Resample`` (``grid_sample(align_corners=True)`` on voxel indices, border padding) samples
source index ``j t / s`` for output voxel j. A linear ramp along each voxel axis is reproduced
exactly by linear interpolation, so the resampled ramp shows which source coordinates were read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isles_pipeline import nifti
from isles_pipeline.segment.network import NetworkSegmenter, network_input
from isles_pipeline.segment.resample import (
    from_target_spacing,
    monai09_voxel_sizes,
    spacing_shape,
    to_target_spacing,
)


def oblique(spacing, degrees=(25.0, -10.0, 40.0), flip=(-1, 1, 1)) -> np.ndarray:
    """A rotated, flipped grid with these voxel sizes."""
    a, b, c = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(np.multiply(flip, spacing))
    affine[:3, 3] = (-91.0, 12.5, 40.0)
    return affine


def formula_shape(shape, spacing, target):
    """``compute_shape_offset`` literally: ``np.round(ptp + 1.0)``, numpy rounding half to even
    (so a span of 9.5 voxels gives 10, where round(9.5) + 1 would give 11)."""
    return tuple(int(np.round((n - 1) * s / t + 1.0)) for n, s, t in zip(shape, spacing, target, strict=True))


@pytest.mark.parametrize(
    ("shape", "spacing", "target", "expected"),
    [
        ((112, 112, 73), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (223, 223, 145)),  # the ISLES'22 grid
        ((512, 512, 80), (0.43, 0.43, 2.0), (1.0, 1.0, 1.0), (221, 221, 159)),  # an ISLES'24 NCCT grid
        ((100, 100, 24), (0.45, 0.45, 2.0), (1.0, 1.0, 1.0), (46, 46, 47)),
        ((40, 30, 20), (1.0, 1.0, 1.0), (4.0, 3.0, 2.0), (11, 11, 10)),  # spans 9.75, 9.67, 9.5 (+1, half to even)
        ((7, 9, 5), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (7, 9, 5)),
    ],
)
def test_output_shape_is_monai09s(shape, spacing, target, expected):
    assert spacing_shape(shape, spacing, target) == formula_shape(shape, spacing, target) == expected
    volume = torch.zeros((1, 1, *shape))
    for affine in (np.diag([*spacing, 1.0]), oblique(spacing)):
        np.testing.assert_allclose(monai09_voxel_sizes(affine), spacing, rtol=1e-12)
        assert tuple(to_target_spacing(volume, affine, target).shape[2:]) == expected


@pytest.mark.parametrize("affine", [np.diag([2.0, 0.75, 3.0, 1.0]), oblique((2.0, 0.75, 3.0))], ids=["anisotropic", "oblique"])
def test_output_voxel_j_samples_source_index_j_t_over_s(affine):
    shape, target = (13, 20, 9), (1.0, 1.0, 1.0)
    spacing = (2.0, 0.75, 3.0)
    for axis in range(3):
        index = np.arange(shape[axis], dtype=np.float64)
        ramp = np.broadcast_to(index.reshape([-1 if a == axis else 1 for a in range(3)]), shape)
        out = to_target_spacing(torch.from_numpy(np.ascontiguousarray(ramp))[None, None], affine, target)[0, 0].numpy()
        n_out = formula_shape(shape, spacing, target)[axis]
        # edge values beyond the last source voxel (padding_mode="border")
        sampled = np.minimum(np.arange(n_out) * target[axis] / spacing[axis], shape[axis] - 1)
        line = np.moveaxis(out, axis, 0)[(slice(None), *([0] * 2))]
        np.testing.assert_allclose(line, sampled, atol=1e-9)
        assert np.ptp(np.moveaxis(out, axis, 0).reshape(n_out, -1), axis=1).max() < 1e-12  # constant across


def test_back_to_the_input_grid_samples_i_s_over_t():
    """Invertd: input voxel i reads the 1 mm grid at i s / t; a ramp goes there and back exactly
    wherever i s / t lies on the 1 mm grid (beyond its last voxel the edge value is read)."""
    shape, spacing = (13, 20, 9), (2.0, 0.75, 3.0)
    affine = oblique(spacing)
    ramp = torch.from_numpy(np.indices(shape).sum(axis=0).astype(np.float64))[None, None]
    there = to_target_spacing(ramp, affine, (1.0, 1.0, 1.0))
    back = from_target_spacing(there, affine, (1.0, 1.0, 1.0), shape)[0, 0].numpy()
    reach = [np.arange(n) * s <= m - 1 for n, s, m in zip(shape, spacing, there.shape[2:], strict=True)]
    inside = np.ix_(*reach)
    assert back[inside].size == 13 * 19 * 9  # 19 * 0.75 = 14.25 lies beyond the last voxel (14) of 15
    np.testing.assert_allclose(back[inside], ramp[0, 0].numpy()[inside], atol=1e-9)


def test_the_real_isles22_case_is_223x223x145_at_1mm(isles22_dir):
    def load(kind):
        path = next(isles22_dir.glob(f"*_{kind}.nii.gz"))
        return nifti.decode(path.read_bytes(), str(path))

    dwi, adc = load("dwi"), load("adc")
    image = network_input(nifti.as_float32(dwi), nifti.as_float32(adc), dwi.affine, (1.0, 1.0, 1.0), torch.device("cpu"))
    assert tuple(image.shape) == (1, 2, 223, 223, 145)


class _WindowRecorder(torch.nn.Module):
    """Two-class logits from the input, recording every window shape it is called with."""

    def __init__(self):
        super().__init__()
        self.windows: list[tuple[int, ...]] = []

    def forward(self, x):
        self.windows.append(tuple(x.shape))
        return torch.cat([x[:, :1] * 0, x[:, 1:2]], dim=1)


def test_a_volume_smaller_than_the_roi_is_padded_not_the_roi_shrunk():
    from monai.inferers import sliding_window_inference

    rng = np.random.default_rng(0)
    dwi = rng.random((12, 10, 6)).astype(np.float32) + 1
    adc = rng.random((12, 10, 6)).astype(np.float32) + 1
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    network = _WindowRecorder()
    segmenter = NetworkSegmenter([network], device="cpu", roi_size=(24, 24, 16), overlap=0.5, sw_batch_size=1)
    mask = segmenter.segment(dwi, adc, affine)
    assert segmenter.last_info["resampled_shape"] == (18, 14, 11)  # round(17.5), round(14.5), 11: half to even
    assert segmenter.last_info["roi_size"] == (24, 24, 16)
    assert set(network.windows) == {(1, 2, 24, 24, 16)}
    # What MONAI's own inferer gives on the same input (it pads symmetrically with zeros).
    image = network_input(dwi, adc, affine, (1.0, 1.0, 1.0), torch.device("cpu"))
    logits = sliding_window_inference(image, (24, 24, 16), 1, network, overlap=0.5, mode="gaussian")
    probs = from_target_spacing(torch.softmax(logits, dim=1), affine, (1.0, 1.0, 1.0), dwi.shape)
    np.testing.assert_array_equal(mask, (probs.argmax(dim=1)[0] != 0).numpy())
    assert 0 < mask.sum() < mask.size
