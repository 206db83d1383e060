"""Deterministic synthetic head phantoms: follow-up DWI, ADC and the lesion mask of one case.

A phantom is drawn from random generators seeded by a stable hash of (global seed, case id), so
the same call gives the same voxels in every process (numpy's generators are version-stable). The anatomy is defined
in world (mm) coordinates and sampled through the case's affine: changing the orientation or the
grid changes the array layout, not the head. Layers from outside in: air (Rician noise), scalp,
skull (dark on DWI), a CSF rim, cortex (grey matter), white matter with deep grey nuclei, lateral
ventricles (CSF: DWI dark, ADC ~3.0e-3 mm^2/s), and one or more irregular infarcts (DWI bright,
ADC restricted), some cases with one pseudo-normalised lesion (DWI bright, ADC ~0.7e-3) that an
ADC threshold misses. Everything is plain numpy: cosine-sum noise fields instead of filtering.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal, get_args

import nibabel as nib
import numpy as np

from isles_pipeline.catalogue import UnknownCaseError, shard_index

AdcUnits = Literal["1e-3", "1e-6"]
Orientation = Literal["RAS", "LAS", "LPS", "oblique"]
ADC_UNITS: tuple[str, ...] = get_args(AdcUnits)
ORIENTATIONS: tuple[str, ...] = get_args(Orientation)
# Per-axis flips of the diagonal orientations (array axis i points along +world axis i when +1).
_AXIS_SIGNS = {"RAS": (1.0, 1.0, 1.0), "LAS": (-1.0, 1.0, 1.0), "LPS": (-1.0, -1.0, 1.0)}
# Default orientation by catalogue index modulo 4: a quarter oblique, a quarter LPS.
_DEFAULT_ORIENTATION_CYCLE: tuple[str, ...] = ("LAS", "LPS", "RAS", "oblique")
MASK_SCALE = 65535  # a scaled mask stores {0, 65535} with scl_slope = 1 / 65535

# Tissue ADC in 10^-3 mm^2/s and DWI relative to the normal-brain level.
_ADC = {"wm": 0.76, "gm": 0.88, "deep": 0.8, "csf": 3.0, "scalp": 1.1}
_DWI = {"wm": 0.95, "gm": 1.08, "deep": 1.02, "csf": 0.22, "scalp": 0.45, "skull": 0.04}
# Lesion contrast ranges: DWI as a multiple of the brain level, ADC in 10^-3 mm^2/s.
_LESION_DWI = (1.6, 2.5)
_LESION_ADC = (0.35, 0.55)
_PSEUDO_DWI = (1.5, 2.0)
_PSEUDO_ADC = (0.66, 0.78)
_LESION_EDGE_MM = 3.5  # depth below a lesion's edge where DWI and ADC reach their core values


@dataclass(frozen=True)
class GridSpec:
    """A voxel grid: array shape and voxel edge lengths in mm (the affine adds the orientation)."""

    name: str
    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.voxel_mm)) / 1000.0

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "voxel_mm": list(self.voxel_mm)}


GRIDS: dict[str, GridSpec] = {
    "real": GridSpec("real", (512, 512, 80), (0.43, 0.43, 2.0)),  # like the ISLES'24 NCCT grid
    "demo": GridSpec("demo", (192, 192, 40), (1.15, 1.15, 4.0)),  # fast: well under 1 s a volume
    "tiny": GridSpec("tiny", (48, 48, 16), (4.6, 4.6, 8.0)),  # unit tests
}


def grid_spec(grid: str | GridSpec) -> GridSpec:
    """A named preset (``real``, ``demo``, ``tiny``) or a GridSpec passed through."""
    if isinstance(grid, GridSpec):
        return grid
    try:
        return GRIDS[grid]
    except KeyError:
        raise ValueError(f"unknown grid {grid!r}: expected one of {sorted(GRIDS)} or a GridSpec") from None


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text via sha256 (unlike hash(), the same in every process)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def case_rng(case_id: str, seed: int, purpose: str) -> np.random.Generator:
    """An independent generator per (case, global seed, purpose): changing one use of randomness
    (e.g. the ctp bytes) never shifts another (the anatomy)."""
    return np.random.default_rng(stable_seed("isles-phantom", seed, case_id, purpose))


def case_number(case_id: str) -> int:
    """The catalogue index of a known case; a stable hash for any other id."""
    try:
        return shard_index(case_id)
    except UnknownCaseError:
        return stable_seed("case-number", case_id) % 1_000_003


@dataclass(frozen=True)
class CaseFormat:
    """How a case's files are written: ADC unit, orientation and mask storage."""

    adc_units: AdcUnits
    orientation: Orientation
    mask_scaled: bool


def default_format(case_id: str) -> CaseFormat:
    """The deterministic per-case mix: orientation cycles LAS, LPS, RAS, oblique over catalogue
    indices; about a quarter of cases (by hash) store ADC in 10^-6 mm^2/s, another independent
    quarter store the mask as uint16 {0, 65535} with scl_slope 1/65535."""
    return CaseFormat(
        adc_units="1e-6" if stable_seed("adc-units", case_id) % 4 == 0 else "1e-3",
        orientation=_DEFAULT_ORIENTATION_CYCLE[case_number(case_id) % 4],
        mask_scaled=stable_seed("mask-scaled", case_id) % 4 == 0,
    )


def _resolve_format(
    case_id: str, adc_units: AdcUnits | None, orientation: Orientation | None, mask_scaled: bool | None
) -> CaseFormat:
    default = default_format(case_id)
    fmt = CaseFormat(
        adc_units=default.adc_units if adc_units is None else adc_units,
        orientation=default.orientation if orientation is None else orientation,
        mask_scaled=default.mask_scaled if mask_scaled is None else bool(mask_scaled),
    )
    for name, value, choices in (("adc_units", fmt.adc_units, ADC_UNITS), ("orientation", fmt.orientation, ORIENTATIONS)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices} or None, got {value!r}")
    return fmt


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues' rotation matrix about ``axis``."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = math.radians(degrees)
    return np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)


def make_affine(grid: GridSpec, orientation: Orientation, rng: np.random.Generator) -> np.ndarray:
    """Voxel -> world (mm) affine with the volume centre at the world origin. ``oblique`` is LAS
    rotated 5-15 degrees about a random axis (mostly a pitch, as in tilted acquisitions)."""
    if orientation == "oblique":
        axis = np.array([1.0, 0.0, 0.0]) + rng.normal(0.0, 0.5, 3)
        direction = _rotation(axis, rng.uniform(5.0, 15.0) * rng.choice([-1.0, 1.0])) @ np.diag(_AXIS_SIGNS["LAS"])
    else:
        direction = np.diag(_AXIS_SIGNS[orientation])
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(grid.voxel_mm)
    centre_index = (np.asarray(grid.shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre_index
    return affine


class SmoothField:
    """A smooth random field of unit variance: a sum of cosines with random wave vectors whose
    wavelengths are about ``scale_mm``, evaluated on voxel grids without any filtering."""

    def __init__(self, rng: np.random.Generator, scale_mm: float, n_modes: int = 6) -> None:
        directions = rng.normal(size=(n_modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = scale_mm * rng.uniform(0.7, 1.4, n_modes)
        self.wave_vectors = directions * (2 * np.pi / wavelengths)[:, None]  # rad/mm
        self.phases = rng.uniform(0.0, 2 * np.pi, n_modes)
        self.amplitude = math.sqrt(2.0 / n_modes)

    def on_grid(self, affine: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
        """The field at the voxel centres ``box`` of a grid whose ``affine`` maps voxels to the
        field's coordinates (mm), as float32.

        The phase is linear in the voxel indices, so each cosine is the real part of an outer
        product of three 1-D complex exponentials: a few multiplies per voxel, no cos() per voxel.
        """
        i, j, k = (np.arange(s.start, s.stop, dtype=np.float64) for s in box)
        out = np.zeros((i.size, j.size, k.size), dtype=np.float32)
        tmp = np.empty_like(out)
        for wave, phase in zip(self.wave_vectors, self.phases):
            a = wave @ affine[:3, :3]
            plane = (np.exp(1j * a[0] * i)[:, None] * np.exp(1j * a[1] * j)[None, :]).astype(np.complex64)
            line = np.exp(1j * (a[2] * k + wave @ affine[:3, 3] + phase)).astype(np.complex64)
            np.multiply(plane.real[:, :, None], line.real, out=tmp)
            out += tmp
            np.multiply(plane.imag[:, :, None], line.imag, out=tmp)
            out -= tmp
        out *= np.float32(self.amplitude)
        return out


@dataclass(frozen=True)
class _Frame:
    """A grid placed on the head: ``affine`` maps voxel indices to mm from the head centre, and
    ``coords`` holds those mm coordinates of every voxel centre (float32, one array per axis)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    coords: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def everywhere(self) -> tuple[slice, slice, slice]:
        return tuple(slice(0, n) for n in self.shape)

    def field(self, field: SmoothField, box: tuple[slice, ...] | None = None) -> np.ndarray:
        return field.on_grid(self.affine, box or self.everywhere)


def _frame(shape: tuple[int, int, int], affine: np.ndarray, head_centre: np.ndarray) -> _Frame:
    head_affine = affine.copy()
    head_affine[:3, 3] -= head_centre
    idx = [np.arange(n, dtype=np.float32).reshape([-1 if a == d else 1 for d in range(3)]) for a, n in enumerate(shape)]
    coords = []
    for row in head_affine[:3].astype(np.float32):
        partial = row[0] * idx[0] + row[1] * idx[1]
        coords.append(np.ascontiguousarray(np.broadcast_to(partial + (row[2] * idx[2] + row[3]), shape)))
    return _Frame(shape=shape, affine=head_affine, coords=tuple(coords))


def _inside(distance_in: np.ndarray, width_mm: float) -> np.ndarray:
    """Partial-volume fraction inside a surface, given the signed depth below it in mm."""
    return np.clip(distance_in / np.float32(width_mm) + np.float32(0.5), 0.0, 1.0)


@dataclass(frozen=True)
class Lesion:
    """One infarct: an ellipsoid (world mm, relative to the head centre) roughened by a noise field."""

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation: tuple[tuple[float, ...], ...]
    dwi_factor: float  # lesion DWI / normal-brain DWI
    adc: float  # 10^-3 mm^2/s
    pseudo_normalised: bool


@dataclass(frozen=True)
class Anatomy:
    """The random draw of one head: geometry, tissue contrast and noise levels."""

    centre_mm: np.ndarray
    head_semi_axes_mm: np.ndarray
    ventricle_scale: float
    csf_rim_mm: float
    brain_level: float  # DWI of normal brain (int16 units)
    adc_scale: float
    dwi_noise: float  # Rician sigma relative to brain_level
    adc_noise: float  # 10^-3 mm^2/s
    lesions: tuple[Lesion, ...]


def _draw_lesions(rng: np.random.Generator, brain_semi_axes: np.ndarray) -> tuple[Lesion, ...]:
    """1-4 lesions with log-uniform volumes (main 0.8-50 ml, satellites 0.3-8 ml) in one territory;
    about 30% of cases get one pseudo-normalised lesion."""
    count = int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1]))
    main_ml = math.exp(rng.uniform(math.log(0.8), math.log(50.0)))
    volumes = [main_ml] + [math.exp(rng.uniform(math.log(0.3), math.log(min(8.0, main_ml)))) for _ in range(count - 1)]
    has_pseudo = rng.random() < 0.3
    if has_pseudo and count == 1:
        volumes.append(math.exp(rng.uniform(math.log(0.5), math.log(6.0))))
    hemisphere = rng.choice([-1.0, 1.0])
    main_centre = brain_semi_axes * np.array([hemisphere * rng.uniform(0.2, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.5)])
    lesions = []
    for i, volume_ml in enumerate(volumes):
        centre = main_centre if i == 0 else main_centre + rng.normal(0.0, 18.0, 3)
        centre = np.clip(centre, -0.65 * brain_semi_axes, 0.65 * brain_semi_axes)
        radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
        aspect = np.exp(rng.normal(0.0, 0.25, 3))
        aspect /= np.prod(aspect) ** (1.0 / 3.0)
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        pseudo = has_pseudo and i == len(volumes) - 1
        lesions.append(Lesion(
            centre_mm=tuple(float(c) for c in centre),
            semi_axes_mm=tuple(float(r) for r in radius * aspect),
            rotation=tuple(tuple(float(v) for v in row) for row in rotation),
            dwi_factor=float(rng.uniform(*(_PSEUDO_DWI if pseudo else _LESION_DWI))),
            adc=float(rng.uniform(*(_PSEUDO_ADC if pseudo else _LESION_ADC))),
            pseudo_normalised=pseudo,
        ))
    return tuple(lesions)


def draw_anatomy(case_id: str, seed: int = 0) -> Anatomy:
    """The case's head, independent of grid and file format."""
    rng = case_rng(case_id, seed, "anatomy")
    head = np.array([72.0, 90.0, 62.0]) * rng.uniform(0.92, 1.04) * rng.uniform(0.96, 1.04, 3)
    return Anatomy(
        centre_mm=rng.normal(0.0, 3.0, 3),
        head_semi_axes_mm=head,
        ventricle_scale=float(rng.uniform(0.8, 1.5)),
        csf_rim_mm=float(rng.uniform(1.5, 3.5)),
        brain_level=float(rng.uniform(300.0, 900.0)),
        adc_scale=float(rng.uniform(0.93, 1.07)),
        dwi_noise=float(rng.uniform(0.03, 0.06)),
        adc_noise=float(rng.uniform(0.03, 0.05)),
        lesions=_draw_lesions(rng, head - 14.0),
    )


@dataclass
class _Tissues:
    """Partial-volume fractions per voxel (they sum to 1 with the air outside the head)."""

    head: np.ndarray
    brain: np.ndarray  # inside the brain surface, ventricles included
    scalp: np.ndarray
    skull: np.ndarray
    csf: np.ndarray
    gm: np.ndarray
    deep: np.ndarray
    wm: np.ndarray

    @property
    def parenchyma(self) -> np.ndarray:
        return self.gm + self.deep + self.wm


def _ellipsoid_depth(x: np.ndarray, y: np.ndarray, z: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Approximate signed depth (mm, positive inside) below an ellipsoid's surface."""
    rho = np.sqrt((x / np.float32(semi[0])) ** 2 + (y / np.float32(semi[1])) ** 2 + (z / np.float32(semi[2])) ** 2)
    return (1.0 - rho) * np.float32(np.mean(semi))


def _tissues(frame: _Frame, anatomy: Anatomy, width: float, rng: np.random.Generator) -> _Tissues:
    x, y, z = frame.coords
    shape_noise = frame.field(SmoothField(rng, 80.0))
    depth = _ellipsoid_depth(x, y, z, anatomy.head_semi_axes_mm) + 2.0 * shape_noise  # mm below the scalp
    head = _inside(depth, width)
    skull_out = _inside(depth - 5.0, width)
    skull_in = _inside(depth - 11.5, width)
    rim = anatomy.csf_rim_mm * (1.0 + 0.4 * frame.field(SmoothField(rng, 25.0)))
    brain = _inside(depth - 11.5 - rim, width)
    cortex_mm = 3.5 * (1.0 + 0.35 * frame.field(SmoothField(rng, 20.0)))
    white = _inside(depth - 11.5 - rim - cortex_mm, width)
    ventricles = np.zeros_like(x)
    deep = np.zeros_like(x)
    s = anatomy.ventricle_scale
    for side in (-1.0, 1.0):
        v_depth = _ellipsoid_depth(x - side * 7.0 * s, y - 4.0, z - 10.0, np.array([4.5 * s, 21.0, 7.0 * s]))
        np.maximum(ventricles, _inside(v_depth, width), out=ventricles)
        d_depth = _ellipsoid_depth(x - side * 21.0, y - 2.0, z + 2.0, np.array([9.0, 15.0, 10.0]))
        np.maximum(deep, _inside(d_depth, width), out=deep)
    ventricles *= white
    deep = np.minimum(deep, white - ventricles)
    return _Tissues(
        head=head, brain=brain, scalp=head - skull_out, skull=skull_out - skull_in, csf=skull_in - brain + ventricles,
        gm=brain - white, deep=deep, wm=white - ventricles - deep,
    )


def _voxel_bbox(affine: np.ndarray, shape: tuple[int, ...], centre: np.ndarray, radius: float) -> tuple[slice, ...] | None:
    """Voxel index box covering a cube of half-width ``radius`` (mm) around ``centre`` (the
    coordinates ``affine`` maps to), clipped to the grid; None if it misses the grid."""
    corners = centre + radius * np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
    ijk = (np.linalg.inv(affine) @ np.c_[corners, np.ones(8)].T)[:3]
    lo = np.maximum(np.floor(ijk.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=1)).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _lesion_fraction(
    frame: _Frame, anatomy: Anatomy, width: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion partial-volume fraction per voxel and, where it is > 0, the lesion's DWI factor and
    ADC (from whichever lesion covers the voxel most)."""
    shape = frame.shape
    fraction = np.zeros(shape, np.float32)
    dwi_factor = np.zeros(shape, np.float32)
    adc = np.zeros(shape, np.float32)
    for lesion in anatomy.lesions:
        field = SmoothField(rng, max(4.0, 0.9 * min(lesion.semi_axes_mm)), n_modes=12)
        centre = np.asarray(lesion.centre_mm)
        box = _voxel_bbox(frame.affine, shape, centre, 1.7 * max(lesion.semi_axes_mm) + 2 * width)
        if box is None:
            continue
        roughness = frame.field(field, box)
        local = [c[box] - np.float32(centre[i]) for i, c in enumerate(frame.coords)]
        rot = np.asarray(lesion.rotation, dtype=np.float32)
        rho2 = sum(((rot[0, a] * local[0] + rot[1, a] * local[1] + rot[2, a] * local[2]) / np.float32(lesion.semi_axes_mm[a])) ** 2 for a in range(3))
        level = 1.0 - rho2 + 0.5 * roughness  # > 0 inside the blob
        radius = float(np.prod(lesion.semi_axes_mm) ** (1.0 / 3.0))
        depth = level * np.float32(radius / 2.0)  # ~ mm below the lesion's edge
        frac = _inside(depth, width)
        # Restriction is strongest in the core: DWI and ADC approach normal tissue near the edge,
        # with patchy texture on top, so part of every lesion fails a threshold rule.
        core = np.clip(depth / np.float32(_LESION_EDGE_MM), 0.0, 1.0)
        texture = frame.field(SmoothField(rng, 6.0, n_modes=8), box)
        lesion_dwi = lesion.dwi_factor * (0.9 + 0.1 * core) * (1.0 + 0.1 * texture)
        lesion_adc = lesion.adc + (_ADC["wm"] - lesion.adc) * 0.6 * (1.0 - core) + 0.07 * texture
        take = frac > fraction[box]
        fraction[box] = np.where(take, frac, fraction[box])
        dwi_factor[box] = np.where(take, lesion_dwi, dwi_factor[box])
        adc[box] = np.where(take, lesion_adc, adc[box])
    return fraction, dwi_factor, adc


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise (Rayleigh in the background)."""
    real = signal + np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(real, imag, out=real)


def _render(
    tissues: _Tissues, lesion: tuple[np.ndarray, np.ndarray, np.ndarray], bias: np.ndarray,
    anatomy: Anatomy, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DWI (float, brain ~ brain_level), ADC (10^-3 mm^2/s) and the lesion fraction in parenchyma."""
    fraction, lesion_dwi, lesion_adc = lesion
    fraction = np.minimum(fraction, tissues.parenchyma)
    t = tissues
    dwi = (t.scalp * _DWI["scalp"] + t.skull * _DWI["skull"] + t.csf * _DWI["csf"]
           + t.gm * _DWI["gm"] + t.deep * _DWI["deep"] + t.wm * _DWI["wm"])
    dwi = (1.0 - fraction) * dwi + fraction * lesion_dwi
    dwi *= bias * np.float32(anatomy.brain_level)
    dwi = _rician(dwi, anatomy.dwi_noise * anatomy.brain_level, rng)

    adc = (t.scalp * _ADC["scalp"] + t.csf * _ADC["csf"] + t.gm * _ADC["gm"]
           + t.deep * _ADC["deep"] + t.wm * _ADC["wm"]) * np.float32(anatomy.adc_scale)
    adc = (1.0 - fraction) * adc + fraction * lesion_adc
    # ADC from a low-signal voxel is noisy: CSF (low DWI) and skull (no signal) much more than tissue.
    sigma = anatomy.adc_noise * (t.parenchyma + t.scalp) + 0.25 * t.csf + 0.4 * t.skull
    adc += sigma * rng.standard_normal(adc.shape, dtype=np.float32)
    np.maximum(adc, 0.0, out=adc)
    adc[t.head < 0.5] = 0.0  # the scanner masks the air
    return dwi, adc, fraction


@dataclass
class PhantomCase:
    """One synthetic case: nibabel images on one grid (identical affines) and the truth."""

    case_id: str
    seed: int
    grid: GridSpec
    format: CaseFormat
    affine: np.ndarray
    dwi: nib.Nifti1Image  # int16
    adc: nib.Nifti1Image  # float32, in format.adc_units
    lesion_mask: nib.Nifti1Image  # uint8 {0,1}, or uint16 {0,65535} with scl_slope 1/65535
    brain_mask: np.ndarray  # bool, inside the brain surface (ventricles included)
    lesion_ml: float  # true lesion volume: mask voxels x voxel volume
    anatomy: Anatomy

    @property
    def images(self) -> dict[str, nib.Nifti1Image]:
        return {"dwi": self.dwi, "adc": self.adc, "lesion_mask": self.lesion_mask}


def nifti_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI image with scanner-coded sform and qform and mm units."""
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return image


def mask_image(mask: np.ndarray, affine: np.ndarray, scaled: bool) -> nib.Nifti1Image:
    """A binary mask as uint8 {0,1}, or as uint16 {0,65535} with scl_slope 1/65535 (reads as {0,1})."""
    if not scaled:
        return nifti_image(mask.astype(np.uint8), affine)
    image = nifti_image(mask.astype(np.uint16) * np.uint16(MASK_SCALE), affine)
    image.header.set_slope_inter(1.0 / MASK_SCALE, 0.0)
    return image


def make_case(
    case_id: str,
    grid: str | GridSpec = "demo",
    seed: int = 0,
    adc_units: AdcUnits | None = None,
    orientation: Orientation | None = None,
    mask_scaled: bool | None = None,
) -> PhantomCase:
    """Generate a case's DWI, ADC and lesion mask. ``None`` options take the case's default
    format (see ``default_format``); the anatomy depends only on (case_id, seed)."""
    spec = grid_spec(grid)
    fmt = _resolve_format(case_id, adc_units, orientation, mask_scaled)
    anatomy = draw_anatomy(case_id, seed)
    affine = make_affine(spec, fmt.orientation, case_rng(case_id, seed, "affine"))
    rng = case_rng(case_id, seed, "voxels")
    width = float(np.prod(spec.voxel_mm) ** (1.0 / 3.0))  # partial-volume edge ~ one voxel
    frame = _frame(spec.shape, affine, anatomy.centre_mm)
    tissues = _tissues(frame, anatomy, width, rng)
    lesion = _lesion_fraction(frame, anatomy, width, rng)
    bias = np.exp(0.1 * frame.field(SmoothField(rng, 150.0, n_modes=4)))
    del frame
    dwi, adc, fraction = _render(tissues, lesion, bias, anatomy, rng)
    mask = fraction >= 0.5
    adc_factor = 1.0 if fmt.adc_units == "1e-3" else 1000.0
    return PhantomCase(
        case_id=case_id, seed=seed, grid=spec, format=fmt, affine=affine,
        dwi=nifti_image(np.clip(np.rint(dwi), 0, np.iinfo(np.int16).max).astype(np.int16), affine),
        adc=nifti_image((adc * np.float32(adc_factor)).astype(np.float32), affine),
        lesion_mask=mask_image(mask, affine, fmt.mask_scaled),
        brain_mask=tissues.brain >= 0.5,
        lesion_ml=float(mask.sum()) * spec.voxel_ml,
        anatomy=anatomy,
    )
