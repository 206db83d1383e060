"""What an nnU-Net v1 model run with DeepISLES' SEALS recipe costs per case, by stage.

    python benchmarks/nnunet_v1.py [--work DIR] [--device cpu|cuda] [--threads N] [--folds 5]

The v1 folder is synthetic, planned the way SEALS' would be: nnU-Net v1's own planner
(``ExperimentPlanner3D_v21``, 32 base features) on three generated 1 mm cases of the size ISLES'22
DWI has after DeepISLES' 1 mm resampling (224 x 224 x 146), ``nnUNetTrainerV2``'s network with random
weights. SEALS' real plans are only in the Zenodo archive: its patch size, and so its tile count,
may differ. The case is the phantom on the ``real`` grid (512 x 512 x 80 at 0.43 x 0.43 x 2 mm, like
ISLES'24's), zero outside the brain (as after skull stripping).

One network pass (one fold, one mirroring, every tile) is timed, and each other stage once; a full
SEALS run is then ``input + preprocessing + folds x 8 mirrorings x network pass + folds x export``
(the folds and mirrorings all run the same network over the same tiles). On 2 CPU cores a full
run takes hours, which is why it is computed from the stages rather than run; ``--full`` runs it.
Prints the stages and a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from isles_devkit import nnunet_v1_models  # noqa: E402

MIRRORINGS = 8  # v1's test-time mirroring of a 3-D network: every flip combination of three axes


def build_folder(work: Path) -> Path:
    """One fold of a v1 folder planned for 1 mm ISLES'22-size inputs."""
    nnunet_v1_models.set_v1_paths(work)
    plans_file, trainers = nnunet_v1_models.plan_and_build((0,), shape=(224, 224, 146), spacing=(1.0, 1.0, 1.0), margin=20, base_features=32)
    folder = Path(trainers[0].output_folder).parent
    trainers[0].save_checkpoint(str(Path(trainers[0].output_folder) / "model_final_checkpoint.model"))
    (folder / "plans.pkl").write_bytes(Path(plans_file).read_bytes())
    return folder


def isles24_case():
    from isles_pipeline import nifti
    from isles_pipeline.hub.phantom import make_case, nifti_image

    case = make_case("sub-stroke0004", "real", seed=0, orientation="oblique", adc_units="1e-3")
    dwi = nifti_image((np.asarray(case.dwi.dataobj) * case.brain_mask).astype(np.int16), case.affine)
    adc = nifti_image((np.asarray(case.adc.dataobj) * case.brain_mask).astype(np.float32), case.affine)
    return {"dwi": nifti.as_float32(dwi), "adc": nifti.as_float32(adc)}, case.affine, nifti.header_spacing(dwi)


def timed(seconds: dict, name: str, call):
    started = time.perf_counter()
    value = call()
    seconds[name] = time.perf_counter() - started
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="where the synthetic v1 folder goes (default: a temporary folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--folds", type=int, default=5, help="SEALS has 5")
    parser.add_argument("--full", action="store_true", help="also run the whole recipe (every fold and mirroring)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nnunet-v1-bench-"))

    import SimpleITK as sitk
    import torch

    from isles_pipeline.segment.base import resolve_device
    from isles_pipeline.segment.nnunet import NnUNetSegmenter
    from isles_pipeline.segment.seals import itk_image, recover_channel, resample_onto, respacing_file

    torch.set_num_threads(args.threads)
    seconds: dict[str, float] = {}
    folder = timed(seconds, "build", lambda: build_folder(work))
    images, affine, spacing = isles24_case()
    segmenter = NnUNetSegmenter(folder, device=args.device, use_mirroring=False, recipe="deepisles-seals")
    model = timed(seconds, "load", segmenter.load)
    device = resolve_device(args.device)

    def one_mm():
        dwi = itk_image(images["dwi"], affine, spacing)
        dwi_1mm = respacing_file(dwi)
        adc_1mm = resample_onto(itk_image(images["adc"], affine, spacing), dwi_1mm)
        return dwi, np.stack([sitk.GetArrayFromImage(dwi_1mm), sitk.GetArrayFromImage(adc_1mm)]).astype(np.float32)

    dwi, data = timed(seconds, "input to 1 mm (SimpleITK)", one_mm)
    pre, properties = timed(seconds, "v1 preprocessing (crop, resample, z-score)", lambda: model.preprocess(data, [1.0, 1.0, 1.0]))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        model.fold_softmax(pre[:, :8, :8, :8], 0)  # warm-up (cuDNN autotuning, the allocator)
    softmax = timed(seconds, "network pass (1 fold, 1 mirroring, all tiles)", lambda: (model.fold_softmax(pre, 0), sync())[0])

    def export():
        stored = model.to_cropped_grid(softmax, properties).astype(np.float16)
        fills = [1.0] + [0.0] * (len(stored) - 1)
        on_1mm = [model.paste(c.astype(np.float32), properties, f) for c, f in zip(stored, fills)]
        return [recover_channel(c, dwi) for c in on_1mm]

    timed(seconds, "export per fold (v1 resampling back, recover_softmax)", export)
    steps = [len(s) for s in model.network._compute_steps_for_sliding_window(model.patch_size, pre.shape[1:], 0.5)]
    tiles = int(np.prod(steps))
    network = seconds["network pass (1 fold, 1 mirroring, all tiles)"]
    per_case = (seconds["input to 1 mm (SimpleITK)"] + seconds["v1 preprocessing (crop, resample, z-score)"]
                + args.folds * MIRRORINGS * network + args.folds * seconds["export per fold (v1 resampling back, recover_softmax)"])
    if args.full:
        full = NnUNetSegmenter(folder, device=args.device, recipe="deepisles-seals", folds=[0] * args.folds)
        full.load()
        timed(seconds, "full run, measured", lambda: full.segment_images(images, affine, spacing))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    stage = model.stage_plans
    print(f"plans: patch {[int(n) for n in stage['patch_size']]}, {len(stage['pool_op_kernel_sizes'])} poolings, "
          f"{model.plans['base_num_features']} base features, target spacing {[float(s) for s in stage['current_spacing']]} mm")
    print(f"case: 512 x 512 x 80 at 0.43 x 0.43 x 2 mm -> 1 mm {list(data.shape[1:])} -> preprocessed {list(pre.shape[1:])}, "
          f"{tiles} tiles ({' x '.join(map(str, steps))})")
    for name, value in seconds.items():
        print(f"{name:60s} {value:9.2f} s")
    print(f"{'SEALS per case (' + str(args.folds) + ' folds x 8 mirrorings), from the stages':60s} {per_case:9.1f} s")
    print(f"peak RSS {peak_mb:.0f} MB")
    command = "python benchmarks/nnunet_v1.py " + shlex.join(sys.argv[1:])
    load = os.getloadavg()
    print(f"\nCommand: `{command.strip()}`\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({args.threads} threads), device {device}, load average {load[0]:.1f} while it ran.\n")
    print("| stage | seconds |\n|---|---|")
    for name, value in seconds.items():
        if name not in ("build", "load"):
            print(f"| {name} | {value:.2f} |")
    print(f"| **SEALS per case**: input + preprocessing + {args.folds} x {MIRRORINGS} x network pass + {args.folds} x export | **{per_case:.0f}** |")
    print(f"| model load ({args.folds if args.full else 1} fold(s), once per run) | {seconds['load']:.2f} |")


if __name__ == "__main__":
    main()
