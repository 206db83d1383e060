"""GPU figures per case at the ISLES'24 grid (512x512x80 @ 0.43x0.43x2 mm): NVAUTO with AMP on and
off, and an nnU-Net v2 model; seconds per case and peak GPU memory. Needs CUDA.

    python benchmarks/gpu_segment.py                     # NVAUTO: 15 SegResNet(16) TorchScript models (as DeepISLES ships)
    python benchmarks/gpu_segment.py --models 1 --runs 3 --skip-nnunet

The weights are random (none can be downloaded); the figures measure the inference path, not
accuracy. NVAUTO runs the project's ``network`` segmenter with the DeepISLES recipe (MONAI 0.9
1 mm grid, ROI 192x192x128, overlap 0.625, Gaussian, sw_batch_size 2). The nnU-Net model folder is
made by nnunetv2's own fingerprint extractor and planner on two synthetic cases of the same grid
(its default 3d_fullres plans for that spacing, 5 folds x 0 trained epochs: 1 fold timed, and all
folds present for an ensemble figure with --folds), then run by the ``nnunet`` segmenter (nnU-Net
defaults: tile step 0.5, Gaussian, mirroring). Peak memory is ``torch.cuda.max_memory_allocated``.
Prints markdown tables and the command; paste them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from benchmarks.network import write_random_ensemble  # noqa: E402
from benchmarks.segment import SHAPE, VOXEL_MM, synthetic_head  # noqa: E402
from isles_pipeline.segment.network import NetworkSegmenter  # noqa: E402


class _Env:
    """``monkeypatch.setenv`` for the model-folder builder, outside pytest (nnU-Net's paths)."""

    def setenv(self, key: str, value: str) -> None:
        os.environ[key] = value


def timed(segment, runs: int, device: torch.device) -> dict:
    segment()  # warm-up: loading, CUDA context, kernel selection
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        segment()
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {"median": statistics.median(seconds), "min": min(seconds), "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def nvauto_rows(args, device, case) -> list[str]:
    dwi, adc, affine, _ = case
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_random_ensemble(Path(tmp), args.models, 16)
        for amp in (True, False):
            segmenter = NetworkSegmenter(Path(tmp), device=device, amp=amp)
            r = timed(lambda s=segmenter: s.segment(dwi, adc, affine), args.runs, device)
            info = segmenter.last_info
            rows.append(
                f"| NVAUTO, {args.models} SegResNet(16) | {'x'.join(map(str, info['resampled_shape']))} | "
                f"{'on' if amp else 'off'} | {r['median']:.2f} (min {r['min']:.2f}, n={args.runs}) | "
                f"{r['median'] / args.models:.2f} | {r['peak_mb']:.0f} | {info['device']}; fallbacks: {info['fallbacks'] or 'none'} |"
            )
    return rows


def nnunet_rows(args, device, case) -> list[str]:
    from isles_devkit.nnunet_models import build_model_folder
    from isles_pipeline.segment.nnunet import NnUNetSegmenter

    dwi, adc, affine, _ = case
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = build_model_folder(Path(tmp), _Env(), channels=("DWI", "ADC"), folds=tuple(range(args.folds)),
                                      dataset_id=990, cases=2, shape=SHAPE, spacing=VOXEL_MM)
        segmenter = NnUNetSegmenter(model, device=device)
        r = timed(lambda: segmenter.segment(dwi, adc, affine), args.runs, device)
        patch = segmenter.load().configuration_manager.patch_size
        rows.append(
            f"| nnU-Net v2 3d_fullres (patch {'x'.join(map(str, patch))}), {args.folds} fold(s), mirroring | "
            f"nnU-Net's | fp16 autocast (nnU-Net's) | {r['median']:.2f} (min {r['min']:.2f}, n={args.runs}) | "
            f"{r['median'] / args.folds:.2f} | {r['peak_mb']:.0f} | {segmenter.last_info['device']} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=15, help="NVAUTO ensemble size (DeepISLES: 15)")
    parser.add_argument("--folds", type=int, default=1, help="nnU-Net folds to ensemble")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-nnunet", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available: this benchmark measures GPU figures only", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    case = synthetic_head(SHAPE, VOXEL_MM)
    print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}; grid {'x'.join(map(str, SHAPE))} @ {VOXEL_MM} mm\n")
    print("| model | network grid | AMP | seconds per case | seconds per model | peak GPU memory (MB) | device |")
    print("|---|---|---|---|---|---|---|")
    for row in nvauto_rows(args, device, case):
        print(row, flush=True)
    if not args.skip_nnunet:
        for row in nnunet_rows(args, device, case):
            print(row, flush=True)
    print(f"\ncommand: python benchmarks/gpu_segment.py {shlex.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
