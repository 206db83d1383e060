"""``leaderboard``: every registered model over the cases it scored, ranked and compared
(``isles_pipeline.leaderboard``); what each model failed on, and why."""


import base64
import json
from dataclasses import dataclass

import dagster as dg

from ..catalogue import CASE_IDS
from ..failures import read_failure
from ..leaderboard import build_leaderboard, display_rows, plot_pngs, title, to_markdown, write_leaderboard
from ..models import result_path, slug_of
from ..store import CaseStore
from .partitions import MODEL_CHAIN_KEYS, chain_statuses
from .resources import CaseStoreResource, ModelRegistryResource
from .scoring import METRICS_FILE, OVERLAY_FILE, case_metrics

FAILED, MATERIALIZED = dg.AssetPartitionStatus.FAILED, dg.AssetPartitionStatus.MATERIALIZED


@dataclass
class ModelResults:
    records: list[dict]  # metrics records of the scored (case, model) pairs
    attempted: dict[str, list[str]]  # model -> cases it was tried on (inputs or its own chain)
    failures: dict[str, dict[str, str]]  # model -> case id -> cause

    @property
    def expected(self) -> list[str]:
        """Every case tried for some model (its inputs or a model's chain): what each model should have."""
        return sorted({c for cases in self.attempted.values() for c in cases})


def collect_results(instance: dg.DagsterInstance, store: CaseStore, models: list[str]) -> ModelResults:
    """From the partition statuses: what each model scored, what it was tried on, and why it failed."""
    statuses = chain_statuses(instance, models)
    inputs = statuses["case_inputs"]
    results = ModelResults([], {m: [] for m in models}, {m: {} for m in models})
    for model in models:
        for case_id in CASE_IDS:
            seen = [statuses[a].get((case_id, model)) for a in MODEL_CHAIN_KEYS]
            if inputs.get(case_id) is None and all(s is None for s in seen):
                continue
            results.attempted[model].append(case_id)
            path = result_path(store, case_id, model, METRICS_FILE)
            if seen[-1] == MATERIALIZED and path.exists():
                results.records.append(json.loads(path.read_text()))
            elif FAILED in seen or inputs.get(case_id) == FAILED:
                results.failures[model][case_id] = _cause(store, case_id, model, seen, inputs.get(case_id))
    return results


def _cause(store: CaseStore, case_id: str, model: str, seen: list, inputs_status) -> str:
    steps = [("case_inputs", "case_inputs")] if inputs_status == FAILED else []
    steps += [(a, f"{a}.{slug_of(model)}") for a, s in zip(MODEL_CHAIN_KEYS, seen, strict=True) if s == FAILED]
    for asset, step in steps:
        note = read_failure(store, case_id, step)
        if note:
            return f"{asset}: {note['cause']}"
    return f"{steps[0][0]} failed (see its run in the Dagster UI)" if steps else "failed"


def overlay_links(store: CaseStore, cases: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(case, model) -> file URL of its overlay PNG, for those that have one."""
    links = {}
    for case_id, model in cases:
        path = result_path(store, case_id, model, OVERLAY_FILE)
        if path.exists():
            local = store.local_path(path)
            links[(case_id, model)] = f"file://{local}" if local else str(path)
    return links


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@dg.asset(
    deps=[case_metrics],
    group_name="report",
    kinds={"pandas"},
    description="Every registered model: n, mean, median, IQR of Dice, AVD, lesion count difference and lesion F1 "
    "(both ISLES rules); ISLES-style rank; Wilcoxon against the best model on the cases all completed; failures; "
    "plots. CSV and parquet on disk.",
)
def leaderboard(context: dg.AssetExecutionContext, case_store: CaseStoreResource, models: ModelRegistryResource) -> dg.MaterializeResult:
    store, names = case_store.store(), models.registry().names
    results = collect_results(context.instance, store, names)
    board = build_leaderboard(results.records, names, results.failures, expected=results.expected)
    paths = write_leaderboard(board, store)
    worst = [(c, m) for m, cases in board.worst.items() for c in cases]
    plots = {title: _data_uri(png) for title, png in zip(("Dice by model", "Bland-Altman: volume"), plot_pngs(board).values(), strict=True)}
    markdown = to_markdown(board, overlay_links(store, worst), plots)
    rows = display_rows(board)
    columns = [dg.TableColumn(k, "string" if isinstance(v, str) else "float") for k, v in rows[0].items()] if rows else []
    context.log.info(f"leaderboard: {title(board)}; best {board.best}")
    return dg.MaterializeResult(
        metadata={
            "best_model": str(board.best),
            "models": dg.MetadataValue.int(len(names)),
            "ranked_cases": dg.MetadataValue.int(len(board.ranked_cases)),
            "expected_cases": dg.MetadataValue.int(len(board.expected_cases)),
            "complete_cases": dg.MetadataValue.int(len(board.complete_cases)),
            "leaderboard": dg.MetadataValue.table(records=[dg.TableRecord(r) for r in rows], schema=dg.TableSchema(columns=columns)),
            "summary": dg.MetadataValue.md(markdown),
            **{name.replace(".", "_"): dg.MetadataValue.path(str(path)) for name, path in paths.items()},
        }
    )
