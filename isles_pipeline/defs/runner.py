"""Running the code location's jobs in this process (for the demo and for scripts), against
the instance that ``DAGSTER_HOME`` names, so that the UI shows the runs afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from .partitions import range_tags

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


def materialise_cases(case_ids: list[str]) -> CaseLine:
    """Run the case chain for these cases (one run) and say in one line how it went."""
    job = _definitions().resolve_job_def("case_chain")
    instance = dg.DagsterInstance.get()
    tags = range_tags(case_ids)
    if len(case_ids) == 1:
        result = job.execute_in_process(run_config=QUIET_LOGS, partition_key=case_ids[0], instance=instance, raise_on_error=False)
    else:
        result = job.execute_in_process(run_config=QUIET_LOGS, tags=tags, instance=instance, raise_on_error=False)
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        cause = failure.step_failure_data.error.message.strip().splitlines()[0] if failure else "run failed"
        return CaseLine(f"{', '.join(case_ids)}: FAILED: {cause}", failed=list(case_ids))
    inputs, prediction, metrics = (_metadata(result, a) for a in ("case_inputs", "case_prediction", "case_metrics"))
    text = (
        f"{case_ids[0]}: fetched {inputs.get('bytes_transferred', 0) / 1e6:.1f} MB in {inputs.get('range_requests', 0)} requests, "
        f"predicted {prediction.get('predicted_ml', 0):.1f} ml (true {metrics.get('gt_ml', 0):.1f} ml) in "
        f"{prediction.get('seconds', 0):.1f} s on {prediction.get('device', '?')}, dice {metrics.get('dice', float('nan')):.3f}"
    )
    return CaseLine(text)


def materialise_report() -> str:
    """Materialise metrics_report; return its markdown summary."""
    job = _definitions().resolve_job_def("report_job")
    result = job.execute_in_process(run_config=QUIET_LOGS, instance=dg.DagsterInstance.get(), raise_on_error=True)
    return str(_metadata(result, "metrics_report").get("summary", ""))
