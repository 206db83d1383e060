"""The nightly backfill: every case whose chain is not complete, in batches of several per run,
and the report refreshed whenever a batch ends.

Batches are contiguous partition ranges (a run carries a range of keys), so the cases still to
do are cut into runs of consecutive ids. A case whose last attempt failed runs alone: if its
data is bad it fails again, but it cannot keep its neighbours waiting a second night.
"""

import json
import os
from dataclasses import dataclass

import dagster as dg

# Not re-exported by dagster; what the webserver's backfill list reads.
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

from ..catalogue import CASE_IDS
from ..failures import read_failures
from ..store import CaseStore
from .jobs import case_chain_job, report_job
from .partitions import CASE_CHAIN_KEYS, CASES_PER_RUN, automation_on, chain_statuses, range_tags
from .resources import CaseStoreResource

DEFAULT_BACKFILL_CRON = "0 2 * * *"


def backfill_cron() -> str:
    """``ISLES_BACKFILL_CRON`` when the definitions are built (default 02:00)."""
    return os.environ.get("ISLES_BACKFILL_CRON", "").strip() or DEFAULT_BACKFILL_CRON


@dataclass(frozen=True)
class BackfillPlan:
    batches: list[list[str]]  # contiguous cases never attempted or not yet through the chain
    retries: list[str]  # cases whose last attempt failed: one run each
    running: list[str]

    @property
    def cases(self) -> int:
        return sum(map(len, self.batches)) + len(self.retries)


def plan_backfill(instance: dg.DagsterInstance, store: CaseStore, batch_size: int = CASES_PER_RUN) -> BackfillPlan:
    """Which cases to request, from the partition statuses of the chain's assets.

    A failed partition whose case has a failure note failed in its own work and runs alone; one
    without a note only missed its turn because a batch-mate failed, and is batched again.
    """
    statuses = chain_statuses(instance)
    done, failed, running = set(), set(), set()
    for case_id in CASE_IDS:
        seen = [statuses[a].get(case_id) for a in CASE_CHAIN_KEYS]
        if dg.AssetPartitionStatus.IN_PROGRESS in seen:
            running.add(case_id)
        elif dg.AssetPartitionStatus.FAILED in seen:
            failed.add(case_id)
        elif seen[-1] == dg.AssetPartitionStatus.MATERIALIZED:
            done.add(case_id)
    failed &= set(read_failures(store, sorted(failed)))
    todo = [c for c in CASE_IDS if c not in done | failed | running]
    return BackfillPlan(_contiguous_batches(todo, batch_size), [c for c in CASE_IDS if c in failed], sorted(running))


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


def run_request(cases: list[str], tick: str, reason: str) -> dg.RunRequest:
    """One run over a contiguous range of cases; the run key makes a repeated tick harmless."""
    run_key = f"backfill:{tick}:{cases[0]}..{cases[-1]}"
    tags = {"isles/backfill": tick, "isles/reason": reason}
    if len(cases) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=cases[0], tags=tags)
    return dg.RunRequest(run_key=run_key, tags={**tags, **range_tags(cases)})


def _backfill_tick(context: dg.ScheduleEvaluationContext, case_store: CaseStoreResource):
    plan = plan_backfill(context.instance, case_store.store())
    if not plan.cases:
        return dg.SkipReason(f"all {len(CASE_IDS) - len(plan.running)} cases are through the chain; {len(plan.running)} running")
    tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M") if context.scheduled_execution_time else "manual"
    requests = [run_request(batch, tick, "missing") for batch in plan.batches]
    requests += [run_request([case_id], tick, "retry-after-failure") for case_id in plan.retries]
    context.log.info(f"{plan.cases} cases in {len(requests)} runs ({len(plan.retries)} retried alone)")
    return requests


def build_case_backfill_schedule() -> dg.ScheduleDefinition:
    """The nightly schedule, its cron and its default status read from the environment when the
    definitions are built (each load of the code location), not when this module is imported."""
    return dg.schedule(
        name="case_backfill_schedule",
        cron_schedule=backfill_cron(),
        job=case_chain_job,
        default_status=dg.DefaultScheduleStatus.RUNNING if automation_on() else dg.DefaultScheduleStatus.STOPPED,
        description="Nightly: fetch, segment and score every case that is not done yet, several per run; "
        "cases that failed last time run alone. Cron from ISLES_BACKFILL_CRON (default 02:00).",
    )(_backfill_tick)


case_backfill_schedule = build_case_backfill_schedule()


BACKFILL_TAG = "dagster/backfill"
FINISHED_BACKFILLS = [
    BulkActionStatus.COMPLETED_SUCCESS,
    BulkActionStatus.COMPLETED_FAILED,
    BulkActionStatus.COMPLETED,
    BulkActionStatus.FAILED,
    BulkActionStatus.CANCELED,
]
REMEMBERED_BACKFILLS = 50


def _refresh_report(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    backfill_id = context.dagster_run.tags.get(BACKFILL_TAG)
    if backfill_id:
        # A report per batch would take a run slot from the next batch: report_after_backfill
        # refreshes it once, when the whole backfill has finished.
        return dg.SkipReason(f"run of backfill {backfill_id}: the report waits for the backfill to finish")
    return dg.RunRequest(run_key=f"report-after-{context.dagster_run.run_id}")


def _touches_the_chain(backfill) -> bool:
    keys = {key.to_user_string() for key in backfill.asset_selection or []}
    return bool(keys & set(CASE_CHAIN_KEYS)) or backfill.job_name == case_chain_job.name


@dg.sensor(
    job=report_job,
    name="report_after_backfill",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refresh metrics_report once when a backfill of the case chain has finished "
    "(its runs do not refresh it one by one).",
)
def report_after_backfill(context: dg.SensorEvaluationContext):
    handled = json.loads(context.cursor) if context.cursor else []
    finished = context.instance.get_backfills(
        filters=BulkActionsFilter(statuses=FINISHED_BACKFILLS), limit=REMEMBERED_BACKFILLS
    )
    new = [b for b in finished if b.backfill_id not in handled and _touches_the_chain(b)]
    if not new:
        return dg.SkipReason("no backfill of the case chain finished since the last report")
    handled = ([b.backfill_id for b in new] + handled)[:REMEMBERED_BACKFILLS]
    newest = max(new, key=lambda b: b.backfill_timestamp)
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
