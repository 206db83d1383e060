"""Rule segmenter: the absolute ADC threshold (0.62 x 10^-3 mm^2/s) against thresholds relative to
the case's brain median ADC, on the real ISLES'22 case and on replica cases.

    python benchmarks/rules_adc.py                         # real case from ../shared/data/isles22, 8 demo replicas
    python benchmarks/rules_adc.py --isles22 DIR --cases 8 --grid demo --factors 0.6 0.65 0.7 0.75 0.8

Prints a markdown table of Dice per rule (the real case; the replicas' mean and minimum) and the
command. Everything else in the rule (DWI factor, brain mask, erosion, minimum cluster) is the default.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from isles_pipeline import nifti  # noqa: E402
from isles_pipeline.catalogue import CASE_IDS  # noqa: E402
from isles_pipeline.hub.phantom import make_case  # noqa: E402
from isles_pipeline.metrics import score_masks  # noqa: E402
from isles_pipeline.segment.rules import RuleSegmenter  # noqa: E402

DEFAULT_ISLES22 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isles22" / "sub-strokecase0009"


def real_case(folder: Path):
    def load(kind):
        path = next(folder.glob(f"*_{kind}.nii.gz"))
        return nifti.decode(path.read_bytes(), str(path))

    dwi, adc, mask = load("dwi"), load("adc"), load("msk")
    return nifti.as_float32(dwi), nifti.as_float32(adc), nifti.as_mask(mask), dwi.affine


def replica_cases(count: int, grid: str):
    for case_id in CASE_IDS[:count]:
        case = make_case(case_id, grid=grid)
        yield case_id, nifti.as_float32(case.dwi), nifti.as_float32(case.adc), nifti.as_mask(case.lesion_mask), case.affine


def dice(segmenter: RuleSegmenter, dwi, adc, truth, affine) -> float:
    return float(score_masks(segmenter.segment(dwi, adc, affine), truth, affine).dice)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isles22", type=Path, default=DEFAULT_ISLES22)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--grid", default="demo")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.6, 0.65, 0.7, 0.75, 0.8])
    args = parser.parse_args()

    rules = {"absolute 0.62": RuleSegmenter(device="cpu")}
    rules.update({f"relative {f:g} x brain median": RuleSegmenter(device="cpu", adc_relative=f) for f in args.factors})
    real = real_case(args.isles22.resolve()) if args.isles22.is_dir() else None
    replicas = list(replica_cases(args.cases, args.grid))
    print(f"| ADC upper threshold | real ISLES'22 case Dice | replicas ({len(replicas)}, {args.grid}) mean Dice | replicas min Dice |")
    print("|---|---|---|---|")
    for name, segmenter in rules.items():
        real_dice = f"{dice(segmenter, *real):.3f}" if real else "n/a"
        if real and name == "absolute 0.62":
            brain_median = segmenter.last_info["brain_median_adc"]
        scores = [dice(segmenter, dwi, adc, truth, affine) for _, dwi, adc, truth, affine in replicas]
        print(f"| {name} | {real_dice} | {np.mean(scores):.3f} | {np.min(scores):.3f} |")
    if real:
        print(f"\nreal case brain median ADC: {brain_median:.3f} x 10^-3 mm^2/s")
    print(f"\ncommand: python benchmarks/rules_adc.py {shlex.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
