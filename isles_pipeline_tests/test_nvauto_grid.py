"""NVAUTO's 1 mm grid as DeepISLES ran it (MONAI 0.9 ``Spacingd``), and the ROI kept whole.

``resample.py`` is checked against MONAI's own ``Spacing`` (the installed one) on the same inputs:
the grid shape and every value, going to the target spacing and back (``Spacing.inverse``, what
``Invertd`` runs), with the parameters DeepISLES pins for NVAUTO (bilinear, ``padding_mode="border"``,
``diagonal=False``). On these generated grids the installed MONAI's ``Spacing`` gives what MONAI
0.9.1's does (checked once: monai 0.9.1 from PyPI, its one numpy-2 breakage, ``ndarray.ptp``,
patched, gives the same shapes and values, and on the real ISLES'22 case the values of this module
to 2e-4 of 1619). Where the two versions part (the real case's float32 affine), the test says how
and compares with MONAI's own resampling onto 0.9's grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing

from isles_pipeline import nifti
from isles_pipeline.segment.network import NetworkSegmenter, network_input
from isles_pipeline.segment.resample import from_target_spacing, to_target_spacing

# MONAI resamples in float32 whatever the input dtype: values agree to float32 rounding.
MONAI_ATOL = 1e-6


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


def monai_spacing(target) -> Spacing:
    """MONAI's transform with the NVAUTO recipe's parameters."""
    return Spacing(pixdim=target, diagonal=False, mode="bilinear", padding_mode="border", dtype=np.float64)


def monai_resampled(volume: np.ndarray, affine: np.ndarray, target) -> MetaTensor:
    return monai_spacing(target)(MetaTensor(torch.from_numpy(volume)[None], affine=torch.as_tensor(affine)))


@pytest.mark.parametrize(
    ("shape", "spacing", "target", "expected"),
    [
        ((112, 112, 73), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (223, 223, 145)),  # the ISLES'22 grid
        ((512, 512, 80), (0.43, 0.43, 2.0), (1.0, 1.0, 1.0), (221, 221, 159)),  # an ISLES'24 NCCT grid
        ((100, 100, 24), (0.45, 0.45, 2.0), (1.0, 1.0, 1.0), (46, 46, 47)),
        ((40, 30, 20), (1.0, 1.0, 1.0), (4.0, 3.0, 2.0), (11, 11, 10)),  # spans 9.75, 9.67, 9.5 (+1, half to even)
        ((13, 20, 9), (2.0, 0.75, 3.0), (1.0, 1.0, 1.0), (25, 15, 25)),
        ((7, 9, 5), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (7, 9, 5)),
    ],
)
@pytest.mark.parametrize("orientation", ["axis-aligned", "oblique"])
def test_the_grid_and_its_values_are_monais_spacing(shape, spacing, target, expected, orientation):
    affine = np.diag([*spacing, 1.0]) if orientation == "axis-aligned" else oblique(spacing)
    volume = np.random.default_rng(0).random(shape)
    ours = to_target_spacing(torch.from_numpy(volume)[None, None], affine, target)[0, 0].numpy()
    monai = monai_resampled(volume, affine, target)
    assert ours.shape == tuple(monai.shape[1:]) == expected
    np.testing.assert_allclose(ours, monai[0].numpy(), rtol=0, atol=MONAI_ATOL)
    # MONAI's grid keeps the first voxel centre, the axes' directions and sets their lengths to the target
    np.testing.assert_allclose(np.asarray(monai.affine)[:3, 3], affine[:3, 3], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(monai.affine)[:3, :3], axis=0), target, rtol=1e-12)


@pytest.mark.parametrize("orientation", ["axis-aligned", "oblique"])
def test_back_to_the_input_grid_is_monais_inverse(orientation):
    """``Invertd`` runs ``Spacing.inverse``: a volume on the target grid goes back onto the input grid."""
    shape, spacing, target = (13, 20, 9), (2.0, 0.75, 3.0), (1.0, 1.0, 1.0)
    affine = np.diag([*spacing, 1.0]) if orientation == "axis-aligned" else oblique(spacing)
    rng = np.random.default_rng(1)
    transform = monai_spacing(target)
    there = transform(MetaTensor(torch.from_numpy(rng.random(shape))[None], affine=torch.as_tensor(affine)))
    probs = MetaTensor(torch.from_numpy(rng.random(there.shape)), affine=there.affine, applied_operations=there.applied_operations)
    monai = transform.inverse(probs)
    ours = from_target_spacing(probs.as_tensor()[None], affine, target, shape)[0, 0].numpy()
    assert ours.shape == tuple(monai.shape[1:]) == shape
    np.testing.assert_allclose(ours, monai[0].numpy(), rtol=0, atol=MONAI_ATOL)


def test_a_sheared_grid_is_refused():
    """MONAI's grid for a sheared affine is not a per-axis resampling: refused, not approximated."""
    affine = np.eye(4)
    affine[:3, :3] = [[1.2, 0.3, 0.0], [0.0, 0.9, 0.2], [0.1, 0.0, 2.5]]
    volume = torch.zeros((1, 1, 30, 26, 14))
    with pytest.raises(ValueError, match="sheared"):
        to_target_spacing(volume, affine, (1.0, 1.0, 1.0))


def test_the_real_isles22_case_is_monai09s_223x223x145_at_1mm(isles22_dir):
    """On the real case the two MONAI versions part: its float32 affine is orthogonal to ~1e-9 only,
    so no corner of the input lands exactly on the new grid's minimum, and MONAI >= 1.0's
    ``compute_shape_offset`` then centres the grid (half a voxel off here) where 0.9 keeps the
    first voxel centre. The shape is both versions'; the values are MONAI's own ``SpatialResample``
    onto 0.9's grid (MONAI's ``zoom_affine``, first voxel centre kept) and back."""
    from monai.data.utils import zoom_affine
    from monai.transforms import SpatialResample

    def load(kind):
        path = next(isles22_dir.glob(f"*_{kind}.nii.gz"))
        return nifti.decode(path.read_bytes(), str(path))

    dwi, adc = load("dwi"), load("adc")
    image = network_input(nifti.as_float32(dwi), nifti.as_float32(adc), dwi.affine, (1.0, 1.0, 1.0), torch.device("cpu"))
    assert tuple(image.shape) == (1, 2, 223, 223, 145)

    volume = np.asarray(nifti.as_float32(dwi), dtype=np.float64)
    ours = to_target_spacing(torch.from_numpy(volume)[None, None], dwi.affine, (1.0, 1.0, 1.0))[0, 0].numpy()
    current = monai_resampled(volume, dwi.affine, (1.0, 1.0, 1.0))
    assert ours.shape == tuple(current.shape[1:]) == (223, 223, 145)
    grid = zoom_affine(dwi.affine, (1.0, 1.0, 1.0), diagonal=False)
    grid[:3, 3] = dwi.affine[:3, 3]  # MONAI 0.9: the first voxel centre stays where it is
    offset = np.linalg.solve(grid[:3, :3], np.asarray(current.affine)[:3, 3] - grid[:3, 3])
    np.testing.assert_allclose(offset, 0.5, atol=1e-5)  # MONAI >= 1.0: centred, half a voxel off

    resample = SpatialResample(mode="bilinear", padding_mode="border", dtype=np.float64)
    monai09 = resample(MetaTensor(torch.from_numpy(volume)[None], affine=torch.as_tensor(dwi.affine)),
                       dst_affine=torch.as_tensor(grid), spatial_size=ours.shape)
    atol = MONAI_ATOL * float(np.abs(volume).max())
    np.testing.assert_allclose(ours, monai09[0].numpy(), rtol=0, atol=atol)
    back = from_target_spacing(torch.from_numpy(ours)[None, None], dwi.affine, (1.0, 1.0, 1.0), volume.shape)[0, 0].numpy()
    monai_back = resample(MetaTensor(torch.from_numpy(ours)[None], affine=torch.as_tensor(grid)),
                          dst_affine=torch.as_tensor(dwi.affine), spatial_size=volume.shape)
    np.testing.assert_allclose(back, monai_back[0].numpy(), rtol=0, atol=atol)


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
