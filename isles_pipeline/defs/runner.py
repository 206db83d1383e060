"""Running the code location's jobs in this process (for the demo and for scripts), against
the instance that ``DAGSTER_HOME`` names, so that the UI shows the runs afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from .partitions import case_model_key, range_tags, sync_models

# The demo prints its own progress; Dagster's console logger stays quiet unless something breaks.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass
class CaseLine:
    text: str
    failed: list[str] = field(default_factory=list)


def _definitions() -> dg.Definitions:
    from ..definitions import defs

    return defs


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key.to_user_string() == asset:
            return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}
    return {}


def _run(job_name: str, case_ids: list[str], model: str | None = None) -> dg.ExecuteInProcessResult:
    job = _definitions().resolve_job_def(job_name)
    instance = dg.DagsterInstance.get()
    if len(case_ids) == 1:
        key = case_model_key(case_ids[0], model) if model else case_ids[0]
        return job.execute_in_process(run_config=QUIET_LOGS, partition_key=key, instance=instance, raise_on_error=False)
    return job.execute_in_process(run_config=QUIET_LOGS, tags=range_tags(case_ids, model), instance=instance, raise_on_error=False)


def _cause(result: dg.ExecuteInProcessResult) -> str:
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    return failure.step_failure_data.error.message.strip().splitlines()[0] if failure else "run failed"


def fetch_cases(case_ids: list[str]) -> list[str]:
    """Fetch each case (one run each); return those that failed."""
    return [c for c in case_ids if not _run("case_inputs_job", [c]).success]


def train_network(train_ids: list[str], held_out_ids: list[str], settings: dict) -> tuple[str, float]:
    """Materialise segmenter_checkpoint on fetched cases; return the checkpoint path and the
    mean held-out Dice."""
    job = _definitions().resolve_job_def("train_segmenter")
    config = {"train_case_ids": train_ids, "held_out_case_ids": held_out_ids, "device": "cpu", **settings}
    run_config = {**QUIET_LOGS, "ops": {"segmenter_checkpoint": {"config": config}}}
    result = job.execute_in_process(run_config=run_config, instance=dg.DagsterInstance.get(), raise_on_error=True)
    meta = _metadata(result, "segmenter_checkpoint")
    return str(meta["checkpoint_path"]), float(meta.get("held_out_dice_mean") or float("nan"))


def register_models() -> list[str]:
    """Add the registry's models to the ``models`` partitions of the instance; return all names."""
    from ..models import load_registry

    names = load_registry().names
    sync_models(dg.DagsterInstance.get(), names)
    return names


def materialise_cases(case_ids: list[str], models: list[str] | None = None, fetch: bool = True) -> CaseLine:
    """Fetch these cases (one run; ``fetch=False``: already fetched), then run each model on them
    (one run per model), and say in one line how it went."""
    models = models or register_models()
    parts = [f"{case_ids[0]}: inputs fetched before"]
    if fetch:
        fetched = _run("case_inputs_job", case_ids)
        if not fetched.success:
            return CaseLine(f"{', '.join(case_ids)}: FAILED: {_cause(fetched)}", failed=list(case_ids))
        inputs = _metadata(fetched, "case_inputs")
        parts = [f"{case_ids[0]}: fetched {inputs.get('bytes_transferred', 0) / 1e6:.1f} MB in {inputs.get('range_requests', 0)} requests"]
    failed: list[str] = []
    for model in models:
        result = _run("model_chain", case_ids, model)
        if not result.success:
            parts.append(f"{model} FAILED: {_cause(result)}")
            failed += [c for c in case_ids if c not in failed]
            continue
        prediction, metrics = (_metadata(result, a) for a in ("case_prediction", "case_metrics"))
        parts.append(
            f"{model}: {prediction.get('predicted_ml', 0):.2f} ml (true {metrics.get('gt_ml', 0):.2f} ml) in "
            f"{prediction.get('seconds', 0):.1f} s on {prediction.get('device', '?')}, dice {metrics.get('dice', float('nan')):.3f}"
        )
    return CaseLine("; ".join(parts), failed=failed)


def cases_run(data_dir, models: list[str]) -> dict[str, str]:
    """Every case the instance has run for these models (their inputs or a model's chain), and how
    it went, in the words the report uses: ``scored``, ``failed`` or ``not scored``."""
    from ..store import CaseStore
    from .leaderboard import collect_results

    results = collect_results(dg.DagsterInstance.get(), CaseStore(data_dir), models)
    scored = {r["case_id"] for r in results.records}
    failed = {c for cases in results.failures.values() for c in cases}
    return {c: "failed" if c in failed else "scored" if c in scored else "not scored" for c in results.expected}


def materialise_report() -> str:
    """Materialise metrics_report; return its markdown summary."""
    return materialise_reports()["metrics_report"]


def materialise_reports() -> dict[str, str]:
    """Materialise metrics_report and leaderboard; return their markdown summaries by asset."""
    job = _definitions().resolve_job_def("report_job")
    result = job.execute_in_process(run_config=QUIET_LOGS, instance=dg.DagsterInstance.get(), raise_on_error=True)
    return {asset: str(_metadata(result, asset).get("summary", "")) for asset in ("metrics_report", "leaderboard")}
