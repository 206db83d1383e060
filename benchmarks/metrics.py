"""Speed of ``score_masks`` against the plain per-lesion reference on a many-lesion volume.

Run from the repository root::

    python -m benchmarks.metrics [--shape 256 256 64] [--lesions 150] [--repeats 7]

Prints the medians, the speed-up (required: >= 10x) and a markdown table row for the docs.
Exits non-zero if the two disagree or the speed-up is below 10x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isles_devkit.reference_metrics import reference_scores  # noqa: E402
from isles_pipeline.metrics import score_masks  # noqa: E402

REQUIRED_SPEEDUP = 10.0
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def blobs(shape: tuple[int, int, int], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Union of ellipsoids (radii in voxels) at integer centres."""
    mask = np.zeros(shape, dtype=bool)
    for (cx, cy, cz), (rx, ry, rz) in zip(centres, radii):
        lo = np.maximum([cx - rx, cy - ry, cz - rz], 0).astype(int)
        hi = np.minimum([cx + rx + 1, cy + ry + 1, cz + rz + 1], shape).astype(int)
        x, y, z = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= inside
    return mask


def synthetic_case(shape: tuple[int, int, int], n_lesions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth with ``n_lesions`` ellipsoids; a prediction that finds most of them (jittered,
    resized), misses some and adds false positives."""
    rng = np.random.default_rng(seed)
    centres = rng.integers([0, 0, 0], shape, size=(n_lesions, 3))
    radii = rng.uniform(1.0, 5.0, size=(n_lesions, 3)) * [1.0, 1.0, 0.5] + 0.6
    gt = blobs(shape, centres, radii)
    found = rng.random(n_lesions) < 0.85
    jitter = rng.integers(-2, 3, size=(n_lesions, 3))
    scale = rng.uniform(0.6, 1.4, size=(n_lesions, 1))
    extra = n_lesions // 5
    pred = blobs(
        shape,
        np.concatenate([centres[found] + jitter[found], rng.integers([0, 0, 0], shape, size=(extra, 3))]),
        np.concatenate([radii[found] * scale[found], rng.uniform(1.0, 3.0, size=(extra, 3))]),
    )
    return pred, gt


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 64))
    parser.add_argument("--lesions", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)

    pred, gt = synthetic_case(shape, args.lesions)
    fast = score_masks(pred, gt, AFFINE)
    if fast.as_dict() != reference_scores(pred, gt, AFFINE):
        print("score_masks and the reference disagree", file=sys.stderr)
        return 1
    fast_s = median_seconds(lambda: score_masks(pred, gt, AFFINE), args.repeats)
    ref_s = median_seconds(lambda: reference_scores(pred, gt, AFFINE), args.reference_repeats)
    speedup = ref_s / fast_s

    size = "x".join(str(n) for n in shape)
    print(f"volume {size}: {fast.gt_lesions} GT lesions, {fast.pred_lesions} predicted, "
          f"dice {fast.dice:.3f}, F1'22 {fast.f1_isles22:.3f}, F1'24 {fast.f1_isles24:.3f}")  # fmt: skip
    print(f"score_masks median of {args.repeats}: {fast_s * 1e3:.1f} ms")
    print(f"reference   median of {args.reference_repeats}: {ref_s * 1e3:.1f} ms")
    print(f"speed-up: {speedup:.1f}x (required >= {REQUIRED_SPEEDUP:.0f}x)")
    print()
    print("| volume | GT / pred lesions | score_masks (ms) | per-lesion reference (ms) | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| {size} | {fast.gt_lesions} / {fast.pred_lesions} | {fast_s * 1e3:.1f} | {ref_s * 1e3:.0f} | {speedup:.0f}x |")
    return 0 if speedup >= REQUIRED_SPEEDUP else 2


if __name__ == "__main__":
    sys.exit(main())
