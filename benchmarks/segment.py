"""Time the rule segmenter on a real-size synthetic case (512x512x80, 0.43x0.43x2 mm).

    python benchmarks/segment.py [--runs 5] [--threads N] [--devices cpu cuda]

Prints the median and minimum of several runs per device, the median seconds per stage, and a
markdown table row to paste into docs/benchmarks.md. CUDA is skipped, with a note, when absent.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from isles_pipeline.metrics import score_masks  # noqa: E402
from isles_pipeline.segment.rules import RuleSegmenter  # noqa: E402

SHAPE = (512, 512, 80)
VOXEL_MM = (0.43, 0.43, 2.0)


def synthetic_head(shape: tuple[int, int, int] = SHAPE, voxel_mm: tuple[float, float, float] = VOXEL_MM):
    """DWI, ADC (10^-3 mm^2/s) and affine of a noisy head-like ellipsoid with a CSF core and one
    DWI-bright, ADC-dark lesion; built in float32 with broadcasting (no full-size float64)."""
    axes = [((np.arange(n, dtype=np.float32) + 0.5) * s - n * s / 2) for n, s in zip(shape, voxel_mm)]
    x, y, z = np.ix_(*axes)
    head = (x / 90) ** 2 + (y / 105) ** 2 + (z / 65) ** 2 < 1
    csf = (x / 12) ** 2 + (y / 30) ** 2 + (z / 15) ** 2 < 1
    lesion = ((x - 40) / 15) ** 2 + ((y + 20) / 20) ** 2 + ((z - 10) / 12) ** 2 < 1
    noise = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    dwi = (100.0 + 8.0 * noise) * head
    adc = (0.8 + 0.08 * noise) * head
    dwi[csf], adc[csf] = 30.0, 3.0
    dwi[lesion], adc[lesion] = 260.0, 0.45
    return dwi, adc, np.diag([*voxel_mm, 1.0]), lesion


def time_device(device: str, runs: int, case) -> dict:
    """Median/min seconds over ``runs`` calls (after one warm-up) and median seconds per stage."""
    dwi, adc, affine, lesion = case
    segmenter = RuleSegmenter(device=device)
    mask = segmenter.segment(dwi, adc, affine)  # warm-up: allocator, CUDA context, kernels
    totals, stages = [], []
    for _ in range(runs):
        start = time.perf_counter()
        segmenter.segment(dwi, adc, affine)
        totals.append(time.perf_counter() - start)
        stages.append(segmenter.last_info["seconds"])
    return {
        "median": statistics.median(totals),
        "min": min(totals),
        "stages": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
        "dice": score_masks(mask, lesion, affine).dice,
        "name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
    }


def markdown_row(device: str, result: dict, runs: int, command: str) -> str:
    stages = ", ".join(f"{k} {v:.3f}" for k, v in result["stages"].items())
    grid = "x".join(map(str, SHAPE)) + " @ " + "x".join(map(str, VOXEL_MM)) + " mm"
    return (
        f"| rules segmenter | {grid} | {device} ({result['name']}, {torch.get_num_threads()} threads) "
        f"| {result['median']:.3f} s (min {result['min']:.3f}, n={runs}) | {stages} | `{command}` |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/segment.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    case = synthetic_head()
    print("| what | grid | device | seconds per case | median seconds per stage | command |")
    print("|---|---|---|---|---|---|")
    notes = []
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            notes.append("cuda: skipped, torch.cuda.is_available() is False on this machine")
            continue
        result = time_device(device, args.runs, case)
        print(markdown_row(device, result, args.runs, command.strip()))
        notes.append(f"{device}: Dice against the synthetic lesion {result['dice']:.3f}")
    for note in notes:
        print(f"\n- {note}", end="")
    print()


if __name__ == "__main__":
    main()
