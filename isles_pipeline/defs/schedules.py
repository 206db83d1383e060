"""The nightly backfill: every case whose inputs are missing, and every (case, model) of a
registered model whose chain is not complete, in batches of several cases per run; the report
refreshed whenever a batch ends.

Batches are contiguous partition ranges (a run carries a range of keys), so the work still to do
is cut into runs of consecutive ids: ``case_inputs_job`` runs over cases, ``model_chain`` runs over
the cases of one model. A case that still needs its inputs gets its models' runs from the
``models_after_inputs`` sensor when the fetch succeeds. A case (or a case for a model) whose last
attempt failed runs alone: if its data is bad it fails again, but it cannot keep its neighbours
waiting a second night.
"""

import json
import os
import time
from dataclasses import dataclass, field

import dagster as dg

# Not re-exported by dagster; what the webserver's backfill list reads.
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from ..catalogue import CASE_IDS
from ..failures import read_failure
from ..models import slug_of
from ..store import CaseStore
from .jobs import case_chain_job, case_inputs_job, model_chain_job, report_job
from .models import AFTER_BACKFILL_TAG, AFTER_RUN_TAG, fetched_inputs, run_cases_of
from .partitions import (
    BACKFILL_TAG,
    CASES_PER_RUN,
    MODEL_CHAIN_KEYS,
    automation_on,
    case_model_key,
    chain_statuses,
    range_tags,
    sync_models,
)
from .resources import CaseStoreResource, ModelRegistryResource

IN_PROGRESS, FAILED, MATERIALIZED = (dg.AssetPartitionStatus.IN_PROGRESS, dg.AssetPartitionStatus.FAILED,
                                     dg.AssetPartitionStatus.MATERIALIZED)
DEFAULT_BACKFILL_CRON = "0 2 * * *"


def backfill_cron() -> str:
    """``ISLES_BACKFILL_CRON`` when the definitions are built (default 02:00)."""
    return os.environ.get("ISLES_BACKFILL_CRON", "").strip() or DEFAULT_BACKFILL_CRON


@dataclass(frozen=True)
class BackfillPlan:
    batches: list[list[str]]  # contiguous cases whose inputs were never fetched (or missed their turn)
    retries: list[str]  # cases whose fetch failed last time: one run each
    running: list[str]
    model_batches: dict[str, list[list[str]]] = field(default_factory=dict)  # model -> contiguous cases
    model_retries: dict[str, list[str]] = field(default_factory=dict)  # model -> cases that failed: alone

    @property
    def cases(self) -> int:
        return sum(map(len, self.batches)) + len(self.retries)

    @property
    def model_partitions(self) -> int:
        return sum(len(c) for b in self.model_batches.values() for c in b) + sum(map(len, self.model_retries.values()))


def plan_backfill(instance: dg.DagsterInstance, store: CaseStore, models: list[str], batch_size: int = CASES_PER_RUN) -> BackfillPlan:
    """What to request, from the partition statuses of ``case_inputs`` and of each model's chain.

    A failed partition with a failure note failed in its own work and runs alone; one without a
    note only missed its turn because a batch-mate failed, and is batched again.
    """
    statuses = chain_statuses(instance, models)
    inputs = statuses["case_inputs"]
    running = {c for c in CASE_IDS if inputs.get(c) == IN_PROGRESS}
    failed = {c for c in CASE_IDS if inputs.get(c) == FAILED and read_failure(store, c, "case_inputs")}
    todo = [c for c in CASE_IDS if inputs.get(c) != MATERIALIZED and c not in running | failed]
    model_batches, model_retries = {}, {}
    for model in models:
        fetched = [c for c in CASE_IDS if inputs.get(c) == MATERIALIZED]
        seen = {c: [statuses[a].get((c, model)) for a in MODEL_CHAIN_KEYS] for c in fetched}
        alone = [c for c in fetched if FAILED in seen[c] and _noted(store, c, model)]
        pending = [c for c in fetched if c not in alone and IN_PROGRESS not in seen[c] and seen[c][-1] != MATERIALIZED]
        model_batches[model], model_retries[model] = _contiguous_batches(pending, batch_size), alone
    return BackfillPlan(_contiguous_batches(todo, batch_size), sorted(failed, key=CASE_IDS.index), sorted(running),
                        model_batches, model_retries)


def _noted(store: CaseStore, case_id: str, model: str) -> bool:
    return any(read_failure(store, case_id, f"{a}.{slug_of(model)}") for a in MODEL_CHAIN_KEYS)


def _contiguous_batches(case_ids: list[str], batch_size: int) -> list[list[str]]:
    position = {c: i for i, c in enumerate(CASE_IDS)}
    batches: list[list[str]] = []
    for case_id in case_ids:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and position[case_id] == position[last[-1]] + 1:
            last.append(case_id)
        else:
            batches.append([case_id])
    return batches


def run_request(cases: list[str], tick: str, reason: str, model: str | None = None) -> dg.RunRequest:
    """One run over a contiguous range of cases (for one model, if given); the run key makes a
    repeated tick harmless."""
    run_key = f"backfill:{tick}:{cases[0]}..{cases[-1]}" + (f":{model}" if model else "")
    tags = {"isles/backfill": tick, "isles/reason": reason, **({"isles/model": model} if model else {})}
    job = (model_chain_job if model else case_inputs_job).name
    if len(cases) == 1:
        key = case_model_key(cases[0], model) if model else cases[0]
        return dg.RunRequest(run_key=run_key, partition_key=key, tags=tags, job_name=job)
    return dg.RunRequest(run_key=run_key, tags={**tags, **range_tags(cases, model)}, job_name=job)


def input_requests(plan: BackfillPlan, tick: str) -> list[dg.RunRequest]:
    requests = [run_request(batch, tick, "missing") for batch in plan.batches]
    return requests + [run_request([case_id], tick, "retry-after-failure") for case_id in plan.retries]


def model_requests(plan: BackfillPlan, tick: str) -> list[dg.RunRequest]:
    requests = []
    for model, batches in plan.model_batches.items():
        requests += [run_request(batch, tick, "missing", model) for batch in batches]
        requests += [run_request([case_id], tick, "retry-after-failure", model) for case_id in plan.model_retries.get(model, [])]
    return requests


def _plan_tick(context: dg.ScheduleEvaluationContext, case_store: CaseStoreResource, models: ModelRegistryResource):
    names = models.registry().names
    sync_models(context.instance, names)
    tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M") if context.scheduled_execution_time else "manual"
    return plan_backfill(context.instance, case_store.store(), names), tick


def _case_tick(context: dg.ScheduleEvaluationContext, case_store: CaseStoreResource, models: ModelRegistryResource):
    plan, tick = _plan_tick(context, case_store, models)
    if not plan.cases:
        return dg.SkipReason(f"all {len(CASE_IDS) - len(plan.running)} cases are fetched; {len(plan.running)} running")
    requests = input_requests(plan, tick)
    context.log.info(f"{plan.cases} cases to fetch in {len(requests)} runs ({len(plan.retries)} retried alone)")
    return requests


def _model_tick(context: dg.ScheduleEvaluationContext, case_store: CaseStoreResource, models: ModelRegistryResource):
    plan, tick = _plan_tick(context, case_store, models)
    if not plan.model_partitions:
        return dg.SkipReason("every fetched case is through the chain for every registered model")
    requests = model_requests(plan, tick)
    context.log.info(f"{plan.model_partitions} (case, model) partitions in {len(requests)} runs")
    return requests


def build_backfill_schedules() -> list[dg.ScheduleDefinition]:
    """The nightly schedules, their cron and default status read from the environment when the
    definitions are built (each load of the code location), not when this module is imported.

    Two schedules on one cron, because a Dagster job (and so a schedule's runs) has one partitions
    definition: cases for the fetch, (case, model) for the models."""
    cron = backfill_cron()
    status = dg.DefaultScheduleStatus.RUNNING if automation_on() else dg.DefaultScheduleStatus.STOPPED
    cases = dg.schedule(
        name="case_backfill_schedule",
        cron_schedule=cron,
        job=case_inputs_job,
        default_status=status,
        description="Nightly: fetch every case not fetched yet, several per run (models_after_inputs then runs the "
        "registered models on them); cases that failed last time run alone. Cron from ISLES_BACKFILL_CRON (default 02:00).",
    )(_case_tick)
    models = dg.schedule(
        name="model_backfill_schedule",
        cron_schedule=cron,
        job=model_chain_job,
        default_status=status,
        description="Nightly: segment and score every fetched case with every registered model that has not, several "
        "cases of one model per run; a (case, model) that failed last time runs alone. Same cron as case_backfill_schedule.",
    )(_model_tick)
    return [cases, models]


case_backfill_schedule, model_backfill_schedule = build_backfill_schedules()


FINISHED_BACKFILLS = [
    BulkActionStatus.COMPLETED_SUCCESS,
    BulkActionStatus.COMPLETED_FAILED,
    BulkActionStatus.COMPLETED,
    BulkActionStatus.FAILED,
    BulkActionStatus.CANCELED,
]
REMEMBERED_BACKFILLS = 50
UNFINISHED_RUNS = [status for status in dg.DagsterRunStatus if status not in FINISHED_STATUSES]
# How long after a backfill ends the report waits for models_after_inputs to start the model runs
# of its fetch runs (the sensor may be turned off; then the report is refreshed without them).
MODEL_RUNS_PATIENCE_S = 300


def _refresh_report(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    tags = context.dagster_run.tags
    backfill_id = tags.get(BACKFILL_TAG) or tags.get(AFTER_BACKFILL_TAG)
    if backfill_id:
        # A report per batch would take a run slot from the next batch: report_after_backfill
        # refreshes it once, when the backfill and the model runs it led to have finished.
        return dg.SkipReason(f"run of backfill {backfill_id}: the report waits for the backfill to finish")
    return dg.RunRequest(run_key=f"report-after-{context.dagster_run.run_id}")


def _touches_the_chain(backfill) -> bool:
    keys = {key.to_user_string() for key in backfill.asset_selection or []}
    return bool(keys & {"case_inputs", *MODEL_CHAIN_KEYS}) or backfill.job_name in (case_chain_job.name, case_inputs_job.name)


def _settled(instance: dg.DagsterInstance, backfill, now: float) -> bool:
    """Whether the model runs that a finished backfill led to have ended: every fetch run of it that
    succeeded has its models_after_inputs runs (or the patience is spent), and none is still going."""
    waited = now - (backfill.backfill_end_timestamp or backfill.backfill_timestamp)
    if waited < MODEL_RUNS_PATIENCE_S:
        fetch_runs = instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill.backfill_id},
                                                     statuses=[dg.DagsterRunStatus.SUCCESS]))
        for run in fetch_runs:
            awaited = fetched_inputs(run) and run_cases_of(run)
            if awaited and not instance.get_run_ids(dg.RunsFilter(tags={AFTER_RUN_TAG: run.run_id}), limit=1):
                return False
    going = dg.RunsFilter(tags={AFTER_BACKFILL_TAG: backfill.backfill_id}, statuses=UNFINISHED_RUNS)
    return not instance.get_run_ids(going, limit=1)


@dg.sensor(
    job=report_job,
    name="report_after_backfill",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refresh metrics_report and the leaderboard once when a backfill of the case chain has finished, "
    "with the model runs that models_after_inputs started for it (their runs do not refresh it one by one).",
)
def report_after_backfill(context: dg.SensorEvaluationContext):
    handled = json.loads(context.cursor) if context.cursor else []
    finished = context.instance.get_backfills(
        filters=BulkActionsFilter(statuses=FINISHED_BACKFILLS), limit=REMEMBERED_BACKFILLS
    )
    new = [b for b in finished if b.backfill_id not in handled and _touches_the_chain(b)]
    now = time.time()
    ready = [b for b in new if _settled(context.instance, b, now)]
    if not ready:
        waiting = f"{len(new)} finished backfill(s) wait for their model runs" if new else "no backfill of the case chain finished"
        return dg.SkipReason(f"{waiting} since the last report")
    handled = ([b.backfill_id for b in ready] + handled)[:REMEMBERED_BACKFILLS]
    newest = max(ready, key=lambda b: b.backfill_timestamp)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"report-after-backfill-{newest.backfill_id}")], cursor=json.dumps(handled)
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[case_chain_job],
    request_job=report_job,
    name="report_after_success",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refresh metrics_report when a case_chain run succeeds.",
)
def report_after_success(context: dg.RunStatusSensorContext):
    return _refresh_report(context)


@dg.run_failure_sensor(
    monitored_jobs=[case_chain_job],
    request_job=report_job,
    name="report_after_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refresh metrics_report when a case_chain run fails, so that failed cases are listed.",
)
def report_after_failure(context: dg.RunFailureSensorContext):
    return _refresh_report(context)
