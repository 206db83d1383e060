"""DeepISLES' SEALS steps as DeepISLES writes them, for the tests to compare the pipeline with.

Transcribed from github.com/ezequieldlrosa/DeepIsles (``src/SEALS/``, Apache-2.0; commit 7658b60),
with only the file handling around them reduced: the same SimpleITK calls in the same order,
DeepISLES' ``.astype(np.uint8)`` target size included. Nothing here imports the pipeline's
recipe (``isles_pipeline.segment.seals``), so that comparing the two can fail.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def respacing_file(image_file, target_spacing, resample_method):
    """nnunet/dataset_conversion/Task500_Ischemic_Stroke_Test.py ``respacing_file``."""
    if type(image_file) is not sitk.SimpleITK.Image:
        image_file = sitk.ReadImage(image_file)
    if not isinstance(target_spacing, np.ndarray):
        target_spacing = np.array(target_spacing)
    resampler_image = sitk.ResampleImageFilter()
    origin_spacing = np.array(image_file.GetSpacing())
    origin_size = np.array(image_file.GetSize())
    factor = np.array(target_spacing / origin_spacing)
    target_size = (origin_size / factor).astype(np.uint8)
    resampler_image.SetReferenceImage(image_file)
    resampler_image.SetOutputSpacing(target_spacing.tolist())
    resampler_image.SetSize(target_size.tolist())
    resampler_image.SetTransform(sitk.Transform(3, sitk.sitkIdentity))
    resampler_image.SetInterpolator(resample_method)
    return resampler_image.Execute(image_file)


def task500_reimplement_resize(image_file, target_file, resample_method=sitk.sitkLinear):
    """nnunet/dataset_conversion/Task500_Ischemic_Stroke_Test.py ``reimplement_resize``."""
    if isinstance(image_file, str):
        image_file = sitk.ReadImage(image_file)
    if isinstance(target_file, str):
        target_file = sitk.ReadImage(target_file)
    resampler_image = sitk.ResampleImageFilter()
    resampler_image.SetReferenceImage(image_file)
    resampler_image.SetOutputOrigin(target_file.GetOrigin())
    resampler_image.SetOutputDirection(target_file.GetDirection())
    resampler_image.SetOutputSpacing(target_file.GetSpacing())
    resampler_image.SetSize(target_file.GetSize())
    if resample_method == sitk.sitkNearestNeighbor:
        resampler_image.SetOutputPixelType(sitk.sitkUInt8)
    else:
        resampler_image.SetOutputPixelType(sitk.sitkFloat32)
    resampler_image.SetTransform(sitk.Transform(3, sitk.sitkIdentity))
    resampler_image.SetInterpolator(resample_method)
    return resampler_image.Execute(image_file)


def recover_reimplement_resize(image_file, target_file, resample_method=sitk.sitkLinear):
    """recover_softmax.py ``reimplement_resize`` (the output keeps the *input's* origin and direction)."""
    if isinstance(image_file, str):
        image_file = sitk.ReadImage(image_file)
    elif isinstance(image_file, np.ndarray):
        image_file = sitk.GetImageFromArray(image_file)
    if isinstance(target_file, str):
        target_file = sitk.ReadImage(target_file)
    elif isinstance(target_file, np.ndarray):
        target_file = sitk.GetImageFromArray(target_file)
    resampler_image = sitk.ResampleImageFilter()
    resampler_image.SetReferenceImage(image_file)
    resampler_image.SetOutputOrigin(image_file.GetOrigin())
    resampler_image.SetOutputDirection(image_file.GetDirection())
    resampler_image.SetOutputSpacing(target_file.GetSpacing())
    resampler_image.SetSize(target_file.GetSize())
    if resample_method == sitk.sitkNearestNeighbor:
        resampler_image.SetOutputPixelType(sitk.sitkUInt8)
    else:
        resampler_image.SetOutputPixelType(sitk.sitkFloat32)
    resampler_image.SetTransform(sitk.Transform(3, sitk.sitkIdentity))
    resampler_image.SetInterpolator(resample_method)
    return sitk.GetArrayFromImage(resampler_image.Execute(image_file))


def convert_case(dwi_path: Path, adc_path: Path, images_ts: Path) -> list[str]:
    """Task500_Ischemic_Stroke_Test.py ``__main__``: the 1 mm DWI and the ADC on its grid, written as
    ``ISLES22_0001_0000.nii.gz`` and ``_0001.nii.gz``; returns the two paths."""
    images_ts.mkdir(parents=True, exist_ok=True)
    dwi_file = respacing_file(str(dwi_path), target_spacing=[1, 1, 1], resample_method=sitk.sitkLinear)
    adc_file = task500_reimplement_resize(str(adc_path), target_file=dwi_file, resample_method=sitk.sitkLinear)
    paths = [str(images_ts / "ISLES22_0001_0000.nii.gz"), str(images_ts / "ISLES22_0001_0001.nii.gz")]
    sitk.WriteImage(dwi_file, paths[0])
    sitk.WriteImage(adc_file, paths[1])
    return paths


def recover_softmax(npz_file: Path, dwi_path: Path, adc_path: Path) -> np.ndarray:
    """recover_softmax.py ``__main__`` for one case: the fold's 1 mm softmax (``-z`` npz, its .pkl)
    pasted into the uncropped 1 mm volume and resampled onto the DWI (and ADC) grid."""
    predict_softmax = np.load(npz_file)["softmax"]
    with open(str(npz_file).replace("npz", "pkl"), "rb") as f:
        pkl_dict = pickle.load(f)  # a file this test made
    origin_size = pkl_dict["original_size_of_raw_data"]
    origin_bbox = pkl_dict["crop_bbox"]
    origin_array = np.zeros((2, origin_size[0], origin_size[1], origin_size[2]), dtype=np.float32)
    origin_array[0] = 1.0
    origin_array[:, origin_bbox[0][0]:origin_bbox[0][1], origin_bbox[1][0]:origin_bbox[1][1],
                 origin_bbox[2][0]:origin_bbox[2][1]] = predict_softmax.astype(np.float32)
    target_array_shape = sitk.GetArrayFromImage(sitk.ReadImage(str(dwi_path))).shape
    target_array = np.zeros((2, *target_array_shape), dtype=np.float32)
    target_array[0] = recover_reimplement_resize(origin_array[0], str(dwi_path))
    target_array[1] = recover_reimplement_resize(origin_array[1], str(adc_path))
    return target_array


def ensemble_mask(recovered: list[np.ndarray]) -> np.ndarray:
    """ensemble_predictions.py ``merge_files`` (mean of the folds, argmax, uint8) as
    threshold_redirect.py writes it on the DWI grid: a (z, y, x) array."""
    softmax = np.vstack([r[None] for r in recovered])
    softmax = np.mean(softmax, 0)
    return softmax.argmax(0).astype(np.uint8)
