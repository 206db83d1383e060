"""``isles-pipeline demo``: the whole pipeline on a local replica, offline, in a few minutes.

It builds a synthetic replica of N cases (once), serves it on 127.0.0.1 with the local Hub
server, materialises case_inputs and, for every model compared, case_prediction -> case_metrics
for each case, then metrics_report and the leaderboard into a persistent DAGSTER_HOME, so that
``dagster dev -w workspace.yaml`` afterwards shows the runs, the case x model grid and metadata.
``--models rules,network`` compares models; a network without ``--checkpoint`` (or
``ISLES_CHECKPOINT``) is first trained, small, on the replica (the ``segmenter_checkpoint`` asset).
The demo hands the definitions its settings (``build_defs``); it changes no environment variable.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from .catalogue import CASE_IDS, DEFAULT_REPO_ID
from .deployment import instance_config
from .settings import Settings, read_settings


def prepare_dagster_home(home: Path, deployment: str = "local") -> Path:
    """A DAGSTER_HOME holding ``deploy/<deployment>/dagster.yaml`` (local: SQLite, GPU pool of 1,
    modest run concurrency; cluster: the same limits on PostgreSQL from DAGSTER_PG_*)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(instance_config(deployment).read_text())
    return home


def _same_replica(manifest: dict, case_ids: list[str], grid: str, ctp_mb: float) -> bool:
    return manifest.get("case_ids") == case_ids and manifest.get("grid", {}).get("name") == grid and manifest.get("ctp_mb") == ctp_mb


def _configuration(manifest: dict) -> str:
    ids = manifest.get("case_ids") or []
    return f"{len(ids)} cases, grid {manifest.get('grid', {}).get('name')}, ctp {manifest.get('ctp_mb')} MB"


# What a demo run leaves in its home besides the replica: results, the Dagster instance, the registry.
STATE = ("data", "dagster_home", "models.yaml")


def start_state(home: Path, case_ids: list[str], grid: str, ctp_mb: float) -> str:
    """The results in ``home`` belong to one replica configuration (cases, grid, ctp size), the one
    ``home/replica/replica.json`` describes. Those of another configuration are removed before
    this run; those of the same are kept (an unchanged case is not downloaded again). Returns the
    line that says which. A home holding results but no demo replica is not the demo's: refused."""
    manifest_path = home / "replica" / "replica.json"
    held = [home / name for name in STATE if (home / name).is_file() or ((home / name).is_dir() and any((home / name).iterdir()))]
    if not manifest_path.exists():
        if held:
            raise FileExistsError(f"{home} holds {', '.join(p.name for p in held)} but no demo replica ({manifest_path}): "
                                  "not a demo's folder, so nothing is removed; pass another --home, or remove them yourself")
        return f"state: a new demo home, {home}"
    earlier = json.loads(manifest_path.read_text())
    if _same_replica(earlier, case_ids, grid, ctp_mb):
        if not held:
            return f"state: no earlier results in {home}"
        return (f"state: keeping the results of earlier runs on this replica ({_configuration(earlier)}) in {home / 'data'} and "
                f"{home / 'dagster_home'}; this run recomputes its {len(case_ids)} cases for its models, and the report names any "
                "other case it still counts")
    for path in held:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    removed = f"removed {', '.join(p.name for p in held)}" if held else "nothing to remove"
    return (f"state: the earlier runs in {home} were on another replica ({_configuration(earlier)}): {removed}, "
            f"so this run ({len(case_ids)} cases, grid {grid}, ctp {ctp_mb} MB) starts clean")


def ensure_replica(folder: Path, case_ids: list[str], grid: str, ctp_mb: float) -> dict:
    """Build the replica unless one with the same cases and grid is already there."""
    from .hub.replica import build_replica

    manifest_path = folder / "replica.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if _same_replica(manifest, case_ids, grid, ctp_mb):
            print(f"replica: reusing {folder} ({len(case_ids)} cases, grid {grid})")
            return manifest
        shutil.rmtree(folder)
    print(f"replica: building {len(case_ids)} synthetic cases (grid {grid}) in {folder} ...", flush=True)
    started = time.perf_counter()
    manifest = build_replica(folder, case_ids, grid=grid, ctp_mb=ctp_mb)
    print(f"replica: done in {time.perf_counter() - started:.1f} s")
    return manifest


DEMO_TRAINED = "network:demo"
# A network small enough for a CPU: coarse grid, small patches, few filters; 30 epochs of 4 steps take about 210 CPU
# seconds (docs/benchmarks.md).
DEMO_TRAINING = {"epochs": 30, "steps_per_epoch": 4, "batch_size": 4, "patch_size": [16, 16, 16], "init_filters": 8,
                 "target_spacing": [4.0, 4.0, 4.0], "learning_rate": 0.01, "amp": False}


def demo_models(tokens: list[str], checkpoint: str | None) -> tuple[list, bool]:
    """The models of ``--models`` (``rules``, ``network``, ``nnunet`` or ``<kind>:<label>``) and
    whether a network must be trained first (a network without a checkpoint)."""
    from .models import ModelRegistryError, ModelSpec, parse_registry

    specs, train = [], False
    for token in tokens:
        name = token.strip()
        kind = name.split(":", 1)[0]
        if kind == "network" and not checkpoint:
            train = True
            specs.append(ModelSpec(name if ":" in name else DEMO_TRAINED, "<trained by the demo>"))
        elif kind in ("network", "nnunet"):
            specs.append(ModelSpec(name if ":" in name else f"{kind}:given", checkpoint))
        else:
            specs.append(ModelSpec(name))
    if not specs:
        raise ModelRegistryError("--models: name at least one model, e.g. rules,network")
    parse_registry({"models": [{"name": m.name, "checkpoint": m.checkpoint} if m.checkpoint else {"name": m.name} for m in specs]}, "--models")
    return specs, train


def run_demo(home: Path, cases: int = 8, grid: str = "demo", ctp_mb: float = 20.0, settings: Settings | None = None,
             models: list[str] | None = None) -> int:
    """The demo on ``settings`` (default: the environment's): its ``segmenter`` and ``checkpoint``
    (ISLES_SEGMENTER, ISLES_CHECKPOINT, or the command's flags) name the model unless ``models``
    does, and its ``device`` runs them; where data, Hub and registry are is the demo's own."""
    import dagster as dg

    from .definitions import build_defs
    from .demo_runner import DemoRunner
    from .hub.server import HubServer
    from .models import ModelSpec, write_registry

    settings = settings or read_settings()
    home = home.resolve()
    if not 1 <= cases <= len(CASE_IDS):
        raise ValueError(f"--cases must be between 1 and {len(CASE_IDS)}, got {cases}")
    specs, train = demo_models(models or [settings.segmenter], settings.checkpoint)
    if train and cases < 3:
        raise ValueError("--models with a network to train needs --cases 3 or more (or --checkpoint)")
    case_ids = list(CASE_IDS[:cases])
    replica = home / "replica"
    print(start_state(home, case_ids, grid, ctp_mb))
    ensure_replica(replica, case_ids, grid, ctp_mb)
    dagster_home = prepare_dagster_home(home / "dagster_home")
    data_dir = home / "data"
    registry = home / "models.yaml"
    server = HubServer(host="127.0.0.1", port=0)
    server.add_repo("dataset", DEFAULT_REPO_ID, replica)
    with server, dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        print(f"hub: serving {replica} at {server.url}")
        demo_settings = Settings(data_dir=str(data_dir), hf_repo=DEFAULT_REPO_ID, hf_endpoint=server.url,
                                 models_file=str(registry), device=settings.device)
        runner = DemoRunner(build_defs(demo_settings), instance)
        fetched = []
        if train:
            # fetching reads the registry for the columns: the models known before training
            write_registry(registry, [m for m in specs if m.name != DEMO_TRAINED] or [ModelSpec("rules")])
            specs, fetched = _train_first(runner, case_ids, specs)
        write_registry(registry, specs)
        print(f"models: {', '.join(m.name for m in specs)} (registry {registry})")
        failed = _materialise(runner, case_ids, fetched, data_dir)
    _print_outcome(home, data_dir, dagster_home, failed, [m.name for m in specs])
    return 1 if failed else 0


def _train_first(runner, case_ids: list[str], specs: list) -> tuple[list, list[str]]:
    """Fetch the cases, train the small network on all but the last two, and point the network
    model at the checkpoint."""
    from dataclasses import replace

    print(f"network: no checkpoint given; training a small one on {len(case_ids) - 2} replica cases first ...", flush=True)
    failed = runner.fetch_cases(case_ids)
    usable = [c for c in case_ids if c not in failed]
    if len(usable) < 3:
        raise RuntimeError(f"training needs 3 fetched cases, got {len(usable)} (failed: {', '.join(failed)})")
    started, cpu = time.perf_counter(), time.process_time()
    checkpoint, held_out_dice = runner.train_network(usable[:-2], usable[-2:], DEMO_TRAINING)
    # CPU seconds (all threads) beside the wall time: the wall time grows with whatever else the machine runs
    print(f"network: trained in {time.perf_counter() - started:.0f} s ({time.process_time() - cpu:.0f} CPU s), "
          f"held-out Dice {held_out_dice:.3f}; {checkpoint}")
    return [replace(m, checkpoint=checkpoint) if m.name == DEMO_TRAINED else m for m in specs], usable


def _materialise(runner, case_ids: list[str], fetched: list[str], data_dir: Path) -> list[str]:
    """Run the chain for each case with every model, then the report and the leaderboard; return
    the cases that failed."""
    started, failed = time.perf_counter(), []
    models = runner.register_models()
    for index, case_id in enumerate(case_ids, start=1):
        line = runner.materialise_cases([case_id], models, fetch=case_id not in fetched)
        failed += line.failed
        print(f"[{index}/{len(case_ids)}] {line.text}  ({time.perf_counter() - started:.0f} s)", flush=True)
    summaries = runner.materialise_reports()
    others = {c: how for c, how in runner.cases_run(data_dir, models).items() if c not in case_ids}
    if others:
        print(f"\nstate: the report and the leaderboard also count {len(others)} case(s) of earlier runs kept in "
              f"{data_dir.parent}, not of this run: " + ", ".join(f"{c} ({how})" for c, how in others.items()) +
              f". For a clean start: another --home, or remove {data_dir} and {data_dir.parent / 'dagster_home'}.")
    print()
    print(summaries["metrics_report"])
    print(_without_images(summaries["leaderboard"]))
    return failed


def _without_images(markdown: str) -> str:
    """The leaderboard's markdown for a terminal: the inline plots (data: URIs) left out with their
    headings (the outcome lists the plots' files)."""
    kept: list[str] = []
    for line in markdown.splitlines():
        if "data:image/png;base64," not in line:
            kept.append(line)
            continue
        while kept and not kept[-1].strip():
            kept.pop()
        if kept and kept[-1].startswith("#"):
            kept.pop()
        while kept and not kept[-1].strip():
            kept.pop()
    return "\n".join(kept)


def _print_outcome(home: Path, data_dir: Path, dagster_home: Path, failed: list[str], models: list[str]) -> None:
    from .models import slug_of

    report, board = data_dir / "report", data_dir / "leaderboard"
    pictures = "\n".join(f"  {m}: {data_dir / 'cases' / '<case>' / 'models' / slug_of(m) / 'overlay.png'}" for m in models)
    print(
        f"\nfiles:   {data_dir / 'cases'}\n"
        f"report:  {report / 'summary.md'}, {report / 'metrics.csv'}, {report / 'metrics.parquet'}\n"
        f"leaderboard: {board / 'leaderboard.csv'}, {board / 'leaderboard.parquet'}, {board / 'paired.csv'}\n"
        f"plots:   {board / 'dice_by_model.png'}, {board / 'bland_altman.png'}, per model under {report}/<model>/\n"
        f"overlay pictures, one per case and model:\n{pictures}\n"
        f"\nBrowse the runs, the case x model grid and metadata in the Dagster UI:\n"
        f"  isles-pipeline hub serve {home / 'replica'} --port 8000 &\n"
        f"  DAGSTER_HOME={dagster_home} ISLES_DATA_DIR={data_dir} ISLES_MODELS={home / 'models.yaml'} "
        f"HF_ENDPOINT=http://127.0.0.1:8000 dagster dev -w workspace.yaml"
    )
    if failed:
        print(f"\n{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
