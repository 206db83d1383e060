"""DeepISLES' SEALS recipe around an nnU-Net v1 model (registry option ``recipe: deepisles-seals``).

DeepISLES runs its nnU-Net v1 member, SEALS, through ``src/SEALS/nnunet_launcher.sh``; on DWI + ADC
without FLAIR (ISLES'24) that is all DeepISLES runs. Each step here follows the DeepISLES file
named (github.com/ezequieldlrosa/DeepIsles, ``src/SEALS/``), with SimpleITK configured as it is
configured there:

1. ``nnunet/dataset_conversion/Task500_Ischemic_Stroke_Test.py``: DWI to 1 x 1 x 1 mm
   (``respacing_file``: linear, identity transform, the DWI's origin and direction, size = input
   size x spacing, truncated), ADC onto that grid (``reimplement_resize``: linear, float32).
2. ``nnUNet_predict -m 3d_fullres -f K -z --disable_postprocessing``, once per fold: nnU-Net v1 on
   the 1 mm images (:class:`.nnunet_v1.NnUNetV1Model`), each fold's softmax resampled back to the
   cropped 1 mm grid as v1 exports it, and stored as float16 (``-z`` writes ``softmax`` with
   ``np.float16``).
3. ``recover_softmax.py``: the fold's softmax pasted into the 1 mm volume (background 1 outside
   the crop box) and each channel resampled onto the DWI grid (``reimplement_resize`` on the bare
   array: origin 0, identity direction, spacing 1, so output voxel i samples the 1 mm array at
   index i x DWI spacing; linear, float32).
4. ``ensemble_predictions.py``: the mean of the folds' recovered softmaxes; its argmax is the mask
   (ties go to background), which ``threshold_redirect.py`` writes on the DWI grid.

Where this differs from DeepISLES, deliberately:

* the 1 mm size is ``(size / (1 / spacing))`` truncated, without DeepISLES' ``.astype(np.uint8)``,
  which wraps at 256: a 256 mm field of view becomes 0 voxels there, 300 mm 44 voxels. Below
  256 mm (ISLES'24's 512 x 0.4 mm is 205 mm) the sizes agree;
* the DWI is resampled as float32 (the pipeline hands segmenters float32 voxels with the header
  scaling applied); DeepISLES keeps the DWI file's pixel type, so an integer-typed DWI gets its
  1 mm values cast back to integers there;
* DeepISLES resamples the ADC's softmax channel with the ADC file's grid; the pipeline's images
  share one grid, so both channels use the DWI's;
* no skull stripping: DeepISLES runs HD-BET only when asked (``skull_strip``, off by default) or
  for non-NIfTI inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SEALS_RECIPE = "deepisles-seals"
RECIPES = (SEALS_RECIPE,)
# The channels SEALS reads, in its order (Task500_Ischemic_Stroke_Test.py: _0000 DWI, _0001 ADC).
SEALS_COLUMNS = ("dwi", "adc")
TARGET_SPACING_MM = (1.0, 1.0, 1.0)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def check_recipe(recipe: str | None, columns: tuple[str, ...], model: str) -> None:
    if recipe is None:
        return
    if recipe not in RECIPES:
        raise ValueError(f"nnU-Net model {model}: unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    if tuple(columns) != SEALS_COLUMNS:
        raise ValueError(f"nnU-Net model {model}: recipe {recipe} needs a model reading dwi, adc; this one reads {', '.join(columns)}")


def itk_image(volume: np.ndarray, affine: np.ndarray, spacing: Sequence[float] | None = None):
    """The SimpleITK image ``sitk.ReadImage`` makes of a NIfTI holding ``volume`` (voxel axes i, j, k)
    with ``affine`` and ``spacing`` (the header's pixdim; without it the affine's column norms):
    the array as (k, j, i), direction and origin in LPS."""
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=np.float64)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in (sizes if spacing is None else spacing)])
    image.SetDirection((LPS_FROM_RAS @ (affine[:3, :3] / sizes)).ravel().tolist())
    image.SetOrigin((LPS_FROM_RAS @ affine[:3, 3]).tolist())
    return image


def one_mm_size(image, target_spacing=TARGET_SPACING_MM) -> list[int]:
    """``respacing_file``'s target size, ``origin_size / (target / origin_spacing)``, truncated as
    ``.astype`` truncates, but to int64: DeepISLES' uint8 wraps at 256."""
    factor = np.array(target_spacing) / np.array(image.GetSpacing())
    return (np.array(image.GetSize()) / factor).astype(np.int64).tolist()


def _resample_linear(image, spacing, size, origin=None, direction=None, float32: bool = False):
    """SimpleITK's linear resampling with the identity transform, as DeepISLES configures it each time:
    ``image``'s own grid (``SetReferenceImage``) with the spacing and size given, and the origin,
    direction and float32 output where given."""
    import SimpleITK as sitk

    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(image)
    if origin is not None:
        resampler.SetOutputOrigin(origin)
    if direction is not None:
        resampler.SetOutputDirection(direction)
    resampler.SetOutputSpacing(list(spacing))
    resampler.SetSize(list(size))
    if float32:
        resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetTransform(sitk.Transform(3, sitk.sitkIdentity))
    resampler.SetInterpolator(sitk.sitkLinear)
    return resampler.Execute(image)


def respacing_file(image, target_spacing=TARGET_SPACING_MM):
    """Task500_Ischemic_Stroke_Test.py ``respacing_file(image, [1, 1, 1], sitk.sitkLinear)``: the
    reference image's origin and direction, 1 mm spacing, linear, the input's pixel type."""
    return _resample_linear(image, target_spacing, one_mm_size(image, target_spacing))


def resample_onto(image, target):
    """Task500_Ischemic_Stroke_Test.py ``reimplement_resize(image, target, sitk.sitkLinear)``: onto
    ``target``'s origin, direction, spacing and size; linear; float32."""
    return _resample_linear(image, target.GetSpacing(), target.GetSize(), target.GetOrigin(), target.GetDirection(), float32=True)


def recover_channel(values: np.ndarray, dwi) -> np.ndarray:
    """recover_softmax.py ``reimplement_resize(origin_array[c], dwi_path)``: a (z, y, x) array on the
    1 mm grid, as a bare image (origin 0, identity direction, spacing 1), resampled with the bare
    image's origin and direction and the DWI's spacing and size; linear; float32 (z, y, x)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(_resample_linear(sitk.GetImageFromArray(values), dwi.GetSpacing(), dwi.GetSize(), float32=True))


def seals_mask(
    model, images: Mapping[str, np.ndarray], affine: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, dict]:
    """The SEALS mask of one case on its input grid (voxel axes i, j, k), and the run's record.
    ``model`` is an :class:`.nnunet_v1.NnUNetV1Model` reading DWI and ADC; ``spacing`` the header's."""
    import time

    import SimpleITK as sitk

    started = time.perf_counter()
    dwi = itk_image(images["dwi"], affine, spacing)
    dwi_1mm = respacing_file(dwi)
    adc_1mm = resample_onto(itk_image(images["adc"], affine, spacing), dwi_1mm)
    data = np.stack([sitk.GetArrayFromImage(dwi_1mm), sitk.GetArrayFromImage(adc_1mm)]).astype(np.float32)
    preprocessed, properties = model.preprocess(data, dwi_1mm.GetSpacing()[::-1])
    softmaxes, device, fallbacks = model.fold_softmaxes(preprocessed)
    total = None
    for softmax in softmaxes:
        stored = model.to_cropped_grid(softmax, properties).astype(np.float16)  # what -z writes
        fills = [1.0] + [0.0] * (len(stored) - 1)  # recover_softmax: background 1 outside the crop box
        on_1mm = [model.paste(channel.astype(np.float32), properties, fill) for channel, fill in zip(stored, fills)]
        recovered = np.stack([recover_channel(channel, dwi) for channel in on_1mm])
        total = recovered if total is None else total + recovered
    mean = total / len(softmaxes)  # ensemble_predictions: np.mean over the folds
    mask = mean.argmax(0).astype(bool).transpose(2, 1, 0)
    info = {
        "device": device, "fallbacks": fallbacks, "seconds": time.perf_counter() - started,
        "recipe": SEALS_RECIPE, "one_mm_shape": list(data.shape[1:]),
    }
    return np.ascontiguousarray(mask), info

