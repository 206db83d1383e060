"""Running the code location's jobs in this process, for the demo: the definitions it is given,
against the instance it is given (the demo's DAGSTER_HOME), so that the UI shows the runs
afterwards. No daemon runs here; the demo starts the jobs one after another itself."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from .defs.models import model_registry_sensor
from .defs.partitions import case_model_key, range_tags

# The demo prints its own progress; Dagster's console logger stays quiet unless something breaks.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass
class CaseLine:
    text: str
    failed: list[str] = field(default_factory=list)


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key.to_user_string() == asset:
            return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}
    return {}


def _cause(result: dg.ExecuteInProcessResult) -> str:
    failure = next((e for e in result.all_events if e.is_step_failure), None)
    return failure.step_failure_data.error.message.strip().splitlines()[0] if failure else "run failed"


@dataclass
class DemoRunner:
    """The jobs of ``defs``, run in this process against ``instance``."""

    defs: dg.Definitions
    instance: dg.DagsterInstance

    def _run(self, job_name: str, case_ids: list[str], model: str | None = None) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(job_name)
        where = {"partition_key": case_model_key(case_ids[0], model) if model else case_ids[0]} if len(case_ids) == 1 else {
            "tags": range_tags(case_ids, model)}
        return job.execute_in_process(run_config=QUIET_LOGS, instance=self.instance, raise_on_error=False, **where)

    def fetch_cases(self, case_ids: list[str]) -> list[str]:
        """Fetch each case (one run each); return those that failed."""
        return [c for c in case_ids if not self._run("case_inputs_job", [c]).success]

    def train_network(self, train_ids: list[str], held_out_ids: list[str], settings: dict) -> tuple[str, float]:
        """Materialise segmenter_checkpoint on fetched cases; return the checkpoint path and the
        mean held-out Dice."""
        config = {"train_case_ids": train_ids, "held_out_case_ids": held_out_ids, "device": "cpu", **settings}
        run_config = {**QUIET_LOGS, "ops": {"segmenter_checkpoint": {"config": config}}}
        result = self.defs.resolve_job_def("train_segmenter").execute_in_process(run_config=run_config, instance=self.instance)
        meta = _metadata(result, "segmenter_checkpoint")
        return str(meta["checkpoint_path"]), float(meta.get("held_out_dice_mean") or float("nan"))

    def register_models(self) -> list[str]:
        """One tick of ``model_registry_sensor``, its partition requests applied as the daemon
        applies them; then the models' weights observed. Returns every registered name."""
        with dg.build_sensor_context(instance=self.instance, resources={"models": self.defs.resources["models"]}) as context:
            tick = model_registry_sensor.evaluate_tick(context)
        for request in tick.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.defs.resolve_job_def("observe_model_weights").execute_in_process(run_config=QUIET_LOGS, instance=self.instance)
        return self.defs.resources["models"].registry().names

    def materialise_cases(self, case_ids: list[str], models: list[str], fetch: bool = True) -> CaseLine:
        """Fetch these cases (one run; ``fetch=False``: already fetched), then run each model on them
        (one run per model), and say in one line how it went."""
        parts = [f"{case_ids[0]}: inputs fetched before"]
        if fetch:
            fetched = self._run("case_inputs_job", case_ids)
            if not fetched.success:
                return CaseLine(f"{', '.join(case_ids)}: FAILED: {_cause(fetched)}", failed=list(case_ids))
            inputs = _metadata(fetched, "case_inputs")
            parts = [f"{case_ids[0]}: fetched {inputs.get('bytes_transferred', 0) / 1e6:.1f} MB in {inputs.get('range_requests', 0)} requests"]
        failed: list[str] = []
        for model in models:
            result = self._run("model_chain", case_ids, model)
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

    def cases_run(self, data_dir, models: list[str]) -> dict[str, str]:
        """Every case the instance has run for these models (their inputs or a model's chain), and how
        it went, in the words the report uses: ``scored``, ``failed`` or ``not scored``."""
        from .defs.leaderboard import collect_results
        from .store import CaseStore

        results = collect_results(self.instance, CaseStore(data_dir), models)
        scored = {r["case_id"] for r in results.records}
        failed = {c for cases in results.failures.values() for c in cases}
        return {c: "failed" if c in failed else "scored" if c in scored else "not scored" for c in results.expected}

    def materialise_reports(self) -> dict[str, str]:
        """Materialise metrics_report and leaderboard; return their markdown summaries by asset."""
        result = self.defs.resolve_job_def("report_job").execute_in_process(run_config=QUIET_LOGS, instance=self.instance)
        return {asset: str(_metadata(result, asset).get("summary", "")) for asset in ("metrics_report", "leaderboard")}
