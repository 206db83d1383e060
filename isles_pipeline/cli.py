"""The ``isles-pipeline`` command: the pipeline's parts, usable one at a time outside Dagster.

Each subcommand imports what it needs when it runs, so ``--help`` stays instant. A command reads
the settings (``settings.py``) when it starts; its flags override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from .catalogue import DEFAULT_REPO_ID
from .segment.options import SEGMENTERS
from .settings import read_settings


def _add_replica(sub: argparse._SubParsersAction) -> None:
    replica = sub.add_parser("replica", help="build a synthetic replica of the ISLES'24 dataset repo")
    build = replica.add_subparsers(dest="replica_command", required=True).add_parser(
        "build", help="write OUT/data/train-XXXXX-of-00149.parquet shards with the real schema"
    )
    build.add_argument("out", type=Path)
    which = build.add_mutually_exclusive_group()
    which.add_argument("--cases", type=int, help="the first N case ids of the catalogue (default 8)")
    which.add_argument("--case", action="append", dest="case_ids", metavar="ID", help="a case id (repeatable)")
    build.add_argument("--ctp-mb", type=float, default=20.0, help="size of the incompressible ctp column per case (MB)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--grid", default="demo", help="volume grid: tiny, demo or real (512x512x80)")
    build.add_argument("--adc-units", choices=["1e-3", "1e-6"], default=None, help="default: a mix across cases")
    build.set_defaults(run=_replica_build)


def _replica_build(args: argparse.Namespace) -> int:
    from .hub.replica import build_replica, parse_case_selection

    case_ids = parse_case_selection(args.cases if args.cases or args.case_ids else 8, args.case_ids)
    manifest = build_replica(args.out, case_ids, grid=args.grid, ctp_mb=args.ctp_mb, seed=args.seed, adc_units=args.adc_units)
    print(f"wrote {len(case_ids)} shards to {args.out / 'data'} (grid {args.grid}, ctp {args.ctp_mb:g} MB)")
    return 0 if manifest else 1


def _add_hub(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="serve a local folder as a Hugging Face Hub repo (for tests and air-gapped sites)")
    serve = hub.add_subparsers(dest="hub_command", required=True).add_parser("serve", help="serve ROOT on 127.0.0.1")
    serve.add_argument("root", type=Path, help="the dataset repo folder (holds data/*.parquet)")
    serve.add_argument("--repo", default=DEFAULT_REPO_ID, help="the dataset repo id it answers for")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for a LAN mirror: no authentication)")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--model", action="append", default=[], metavar="REPO_ID=DIR", help="also serve a model repo (repeatable)")
    serve.add_argument("--faults", action="store_true", help="enable fault injection through /_admin (tests and drills only)")
    serve.set_defaults(run=_hub_serve)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a TCP port (0-65535)")
    return int(text)


def _hub_serve(args: argparse.Namespace) -> int:
    from .hub.server import serve_forever

    if not args.root.is_dir():
        raise ValueError(f"{args.root} is not a folder (build one with: isles-pipeline replica build {args.root})")
    models = dict(_split_model(spec) for spec in args.model)
    serve_forever(args.root, repo_id=args.repo, host=args.host, port=args.port, models=models or None, faults=args.faults)
    return 0


def _split_model(spec: str) -> tuple[str, Path]:
    repo_id, sep, folder = spec.partition("=")
    if not sep:
        raise SystemExit(f"--model expects REPO_ID=DIR, got {spec!r}")
    return repo_id, Path(folder)


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    fetch = sub.add_parser("fetch", help="fetch one case's DWI, ADC and mask from its shard; print a JSON summary")
    fetch.add_argument("case_id")
    fetch.add_argument("--out", required=True, help="data directory (local path or fsspec URL); files go to OUT/cases/<case id>/")
    fetch.add_argument("--repo", default=None, help=f"dataset repo (default ISLES_HF_REPO or {DEFAULT_REPO_ID})")
    fetch.add_argument("--revision", default=None, help="branch, tag or commit (default ISLES_HF_REVISION or main)")
    fetch.add_argument("--endpoint", default=None, help="Hub URL (default HF_ENDPOINT or the public Hub)")
    fetch.add_argument("--force", action="store_true", help="download even when the files are current")
    fetch.set_defaults(run=_fetch)


def _fetch(args: argparse.Namespace) -> int:
    from .catalogue import shard_index
    from .inputs import fetch_case
    from .source import ShardReader, ShardSource
    from .store import CaseStore

    shard_index(args.case_id)  # an unknown id fails here, before any request
    settings = read_settings().with_values(hf_repo=args.repo, hf_revision=args.revision, hf_endpoint=args.endpoint)
    source = ShardSource(settings.hf_repo, settings.hf_revision, settings.hf_endpoint)
    result = fetch_case(ShardReader(source), CaseStore(args.out), args.case_id, force=args.force)
    print(json.dumps(result.summary(), indent=2))
    return 0


def _add_segment(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("segment", help="segment a case from its image files (DWI and ADC, or the modalities a model reads)")
    seg.add_argument("--dwi", type=Path)
    seg.add_argument("--adc", type=Path)
    seg.add_argument("--image", action="append", default=[], type=_image, metavar="COLUMN=PATH",
                     help="an image by shard column (ncct, cta, tmax, mtt, cbf, cbv, dwi, adc); repeatable")
    seg.add_argument("--out", required=True, type=Path, help="predicted mask, .nii.gz")
    seg.add_argument("--segmenter", default=None, type=_segmenter, help="rules (weight-free), network or nnunet (default ISLES_SEGMENTER or rules)")
    seg.add_argument("--device", default=None, type=_device, help="auto, cpu or cuda[:N] (default ISLES_DEVICE or auto)")
    seg.add_argument("--checkpoint", default=None, help="network: checkpoint path(s) or Hub model repo id; nnunet: trained-model folder "
                     "or Hub repo (default ISLES_CHECKPOINT)")
    seg.add_argument("--tile-step-size", type=float, default=None, help="nnunet: sliding-window step as a fraction of the patch (default 0.5)")
    seg.add_argument("--no-mirroring", action="store_true", help="nnunet: no test-time mirroring")
    seg.add_argument("--folds", default=None, help="nnunet: folds to ensemble, e.g. 0,1 (default every fold present)")
    seg.add_argument("--recipe", default=None, help="nnunet: deepisles-seals runs a v1 folder as DeepISLES runs SEALS")
    seg.set_defaults(run=_segment)


def _image(text: str) -> tuple[str, Path]:
    from .segment.channels import IMAGE_COLUMNS

    column, sep, path = text.partition("=")
    column = column.strip().lower()
    if not sep or column not in IMAGE_COLUMNS or not path:
        raise argparse.ArgumentTypeError(f"--image expects COLUMN=PATH with COLUMN one of {', '.join(IMAGE_COLUMNS)}, got {text!r}")
    return column, Path(path)


def _segmenter(name: str) -> str:
    if name not in SEGMENTERS:
        raise argparse.ArgumentTypeError(f"unknown segmenter {name!r}: expected one of {', '.join(SEGMENTERS)}")
    return name


def _device(spec: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec.strip().lower()):
        raise argparse.ArgumentTypeError(f"unknown device {spec!r}: expected auto, cpu, cuda or cuda:N")
    return spec.strip().lower()


def _segment(args: argparse.Namespace) -> int:
    from .predict import predict_image_files

    paths = dict(args.image)
    for column in ("dwi", "adc"):
        if getattr(args, column) is not None:
            paths[column] = getattr(args, column)
    if not paths:
        raise ValueError("no images given: use --dwi and --adc, or --image COLUMN=PATH")
    given = {f"--{c}": getattr(args, c) for c in ("dwi", "adc") if getattr(args, c) is not None}
    _require_files(given | {f"--image {column}": path for column, path in args.image})
    settings = read_settings().with_values(segmenter=args.segmenter, checkpoint=args.checkpoint, device=args.device)
    options: dict[str, object] = {}
    if args.tile_step_size is not None:
        options["tile_step_size"] = args.tile_step_size
    if args.no_mirroring:
        options["use_mirroring"] = False
    if args.folds:
        options["folds"] = [int(f) if f.strip().isdigit() else f.strip() for f in args.folds.split(",")]
    if args.recipe:
        options["recipe"] = args.recipe
    spec = command_model(settings.segmenter, settings.checkpoint, options)
    summary = predict_image_files(paths, args.out, spec.segmenter, settings.device, spec.checkpoint, endpoint=settings.hf_endpoint,
                                  **spec.options)
    print(json.dumps(summary, indent=2))
    return 0


def command_model(segmenter: str, checkpoint: str | None, options: dict):
    """The one model a command runs, checked as a registry entry is (``rules``, ``network:given``,
    ``nnunet:given``)."""
    from .models import parse_registry

    name = segmenter if segmenter == "rules" else f"{segmenter}:given"
    entry = {"name": name, **({"checkpoint": checkpoint} if checkpoint else {}), **({"options": options} if options else {})}
    return parse_registry({"models": [entry]}, "the command's flags").models[0]


def _add_score(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser("score", help="score a predicted mask against the ground truth (official ISLES metrics)")
    score.add_argument("--pred", required=True, type=Path)
    score.add_argument("--gt", required=True, type=Path)
    score.set_defaults(run=_score)


def _require_files(files: dict[str, Path]) -> None:
    """Every input file is there, or one line naming each that is not (option and path)."""
    missing = [f"{option} {path}" for option, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no such file: {'; '.join(missing)} (give the path of an existing .nii or .nii.gz file for "
                                f"{'each' if len(missing) > 1 else 'it'})")


def _score(args: argparse.Namespace) -> int:
    from .metrics import score_files

    _require_files({"--pred": args.pred, "--gt": args.gt})
    print(json.dumps(score_files(args.pred, args.gt).as_dict(), indent=2))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the whole pipeline on a local replica, offline, and print the report")
    demo.add_argument("--cases", type=_case_count, default=8, help="number of cases (default 8)")
    demo.add_argument("--home", type=Path, default=Path(".isles"), help="working folder: replica, data, DAGSTER_HOME (default .isles)")
    demo.add_argument("--grid", default="demo", help="replica grid: tiny, demo or real")
    demo.add_argument("--ctp-mb", type=float, default=20.0)
    demo.add_argument("--segmenter", default=None, type=_segmenter, help="one model: default ISLES_SEGMENTER or rules")
    demo.add_argument("--models", default=None, type=_model_list,
                      help="models to compare, e.g. rules,network (a network without --checkpoint is trained on the replica first)")
    demo.add_argument("--checkpoint", default=None, help="the network model's checkpoint (default ISLES_CHECKPOINT)")
    demo.set_defaults(run=_demo)


def _model_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    kinds = {name.split(":", 1)[0] for name in names}
    if not names or not kinds <= {"rules", "network"}:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of rules, network (or <kind>:<label>)")
    return names


def _case_count(text: str) -> int:
    from .catalogue import CASE_IDS

    if not text.isdigit() or not 1 <= int(text) <= len(CASE_IDS):
        raise argparse.ArgumentTypeError(f"--cases must be a number from 1 to {len(CASE_IDS)}, got {text!r}")
    return int(text)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    settings = read_settings().with_values(segmenter=args.segmenter, checkpoint=args.checkpoint)
    return run_demo(args.home, cases=args.cases, grid=args.grid, ctp_mb=args.ctp_mb, settings=settings, models=args.models)


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake told in one line (no usage block): the option and what it takes."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isles-pipeline", description="ISLES'24 stroke-lesion segmentation pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_fetch, _add_segment, _add_score, _add_replica, _add_hub):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Progress and retry notices of the pipeline's own modules reach the terminal.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("isles_pipeline").setLevel(logging.INFO)
    logging.getLogger("huggingface_hub").propagate = False  # it prints its retry notices itself
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        print(f"isles-pipeline {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("ISLES_DEBUG"):
            raise
        print(f"isles-pipeline {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(please report it; ISLES_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 3


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:600] + " ..."


if __name__ == "__main__":
    sys.exit(main())
