"""Time the network segmenter (an ensemble of SegResNet(init_filters=16) TorchScript models) and,
optionally, a short training run.

    python benchmarks/network.py                      # CUDA: 512x512x80 @ 0.43x0.43x2 mm, AMP on and off
                                                      # CPU only: 128x128x40 @ 0.43x0.43x2 mm
    python benchmarks/network.py --shape 512 512 80 --models 3 --runs 3
    python benchmarks/network.py --train --train-steps 20

The models are randomly initialised (no weights can be downloaded here): the figures measure the
inference path (load, resample on the device, z-score, sliding window, ensemble, resample back),
not accuracy. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak
RSS on the CPU. Prints markdown tables and the command.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import SegResNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from benchmarks.segment import SHAPE as REAL_SHAPE  # noqa: E402
from benchmarks.segment import VOXEL_MM, synthetic_head  # noqa: E402
from isles_pipeline.segment.base import resolve_device  # noqa: E402
from isles_pipeline.segment.checkpoints import torchscript_bytes  # noqa: E402
from isles_pipeline.segment.network import NetworkSegmenter  # noqa: E402
from isles_pipeline.train.training import TrainConfig, TrainingCase, train_segmenter  # noqa: E402

CPU_SHAPE = (128, 128, 40)


def write_random_ensemble(folder: Path, models: int, init_filters: int) -> None:
    """``models`` randomly initialised SegResNet TorchScript files (as NVAUTO ships them)."""
    for i in range(models):
        torch.manual_seed(i)
        net = SegResNet(spatial_dims=3, in_channels=2, out_channels=2, init_filters=init_filters).eval()
        (folder / f"fold{i}.ts").write_bytes(torchscript_bytes(torch.jit.script(net)))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def time_inference(folder: Path, device: torch.device, amp: bool, runs: int, case, roi: tuple[int, ...]) -> dict:
    """Median/min seconds per case over ``runs`` calls after one warm-up, and the peak memory."""
    dwi, adc, affine, _ = case
    segmenter = NetworkSegmenter(folder, device=device, amp=amp, roi_size=roi)
    segmenter.segment(dwi, adc, affine)  # warm-up: loading, CUDA context, kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        segmenter.segment(dwi, adc, affine)
        seconds.append(time.perf_counter() - start)
    info = segmenter.last_info
    return {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "peak_mb": peak_memory_mb(device),
        "resampled": info["resampled_shape"],
        "roi": info["roi_size"],
        "fallbacks": info["fallbacks"],
        "amp": info["amp"],
    }


def time_training(device: torch.device, steps: int, patch: tuple[int, int, int], init_filters: int, amp: bool) -> dict:
    """Seconds per optimiser step (median, first step excluded) on one synthetic case."""
    dwi, adc, affine, lesion = synthetic_head(CPU_SHAPE if device.type == "cpu" else REAL_SHAPE, VOXEL_MM)
    case = TrainingCase("bench", dwi, adc, lesion, affine)
    config = TrainConfig(
        epochs=steps, steps_per_epoch=1, batch_size=2, patch_size=patch, init_filters=init_filters,
        device=str(device), amp=amp,
    )
    stamps = [time.perf_counter()]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def stamp(epoch: int, loss: float) -> None:
        stamps.append(time.perf_counter())

    result = train_segmenter([case], [], config, on_epoch=stamp)
    per_step = np.diff(stamps)[1:] if steps > 1 else np.diff(stamps)
    return {
        "step_median": float(np.median(per_step)),
        "total": result.seconds,
        "peak_mb": peak_memory_mb(device),
        "first_loss": result.losses[0],
        "last_loss": result.losses[-1],
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--shape", type=int, nargs=3, help=f"default {REAL_SHAPE} on CUDA, {CPU_SHAPE} on CPU")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--roi", type=int, nargs=3, default=(192, 192, 128))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also time a short training run")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--patch", type=int, nargs=3, help="training patch; default 96 96 64 on CUDA, 32 32 32 on CPU")
    args = parser.parse_args(argv)
    command = "python benchmarks/network.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    device = resolve_device(args.device)
    shape = tuple(args.shape or (REAL_SHAPE if device.type == "cuda" else CPU_SHAPE))
    case = synthetic_head(shape, VOXEL_MM)
    grid = "x".join(map(str, shape)) + " @ " + "x".join(map(str, VOXEL_MM)) + " mm"

    print(f"\nNetwork segmenter: ensemble of {args.models} x SegResNet(init_filters={args.init_filters}), random weights\n")
    print("| grid | resampled (1 mm) | ROI | device | AMP | seconds per case | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        write_random_ensemble(Path(tmp), args.models, args.init_filters)
        for amp in (True, False) if device.type == "cuda" else (False,):
            r = time_inference(Path(tmp), device, amp, args.runs, case, tuple(args.roi))
            print(
                f"| {grid} | {'x'.join(map(str, r['resampled']))} | {'x'.join(map(str, r['roi']))} "
                f"| {device_name(device)} | {'on' if r['amp'] else 'off'} "
                f"| {r['median']:.2f} (min {r['min']:.2f}, n={args.runs}) | {r['peak_mb']:.0f} |"
            )
            if r["fallbacks"]:
                print(f"\nfallbacks: {r['fallbacks']}")
    if args.train:
        patch = tuple(args.patch or ((96, 96, 64) if device.type == "cuda" else (32, 32, 32)))
        t = time_training(device, args.train_steps, patch, args.init_filters, amp=device.type == "cuda")
        print(f"\nTraining: SegResNet(init_filters={args.init_filters}), batch 2 x {'x'.join(map(str, patch))} patches\n")
        print("| device | seconds per step | total seconds (steps, export) | peak memory (MB) | loss first -> last |")
        print("|---|---|---|---|---|")
        print(
            f"| {device_name(device)} | {t['step_median']:.3f} | {t['total']:.1f} ({args.train_steps}) "
            f"| {t['peak_mb']:.0f} | {t['first_loss']:.3f} -> {t['last_loss']:.3f} |"
        )
    if device.type != "cuda":
        print("\nGPU figures pending: CUDA is not available on this machine (run the same command on a GPU host).")
    print(f"\ncommand: `{command.strip()}`")


if __name__ == "__main__":
    main()
