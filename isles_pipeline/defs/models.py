"""Sensors of the model registry: the ``models`` partitions follow ``models.yaml``, and a case's
models run as soon as its inputs are fetched."""

import dagster as dg

from ..catalogue import CASE_IDS
from .jobs import case_inputs_job, model_chain_job
from .partitions import (
    BACKFILL_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    case_model_key,
    model_partitions,
    range_tags,
    sync_models,
)
from .resources import ModelRegistryResource


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds every model of the registry (ISLES_MODELS / models.yaml) to the `models` partitions, so that "
    "the case x model grid shows a newly registered model; a model removed from the registry keeps its results.",
)
def model_registry_sensor(context: dg.SensorEvaluationContext, models: ModelRegistryResource):
    names = models.registry().names
    new = [n for n in names if not context.instance.has_dynamic_partition(model_partitions.name, n)]
    if not new:
        return dg.SkipReason(f"{len(names)} model(s) registered, none new")
    return dg.SensorResult(dynamic_partitions_requests=[model_partitions.build_add_request(new)])


# Tags of the model runs that models_after_inputs starts: the fetch run they follow, and the
# backfill that fetch run belonged to (a sensor's runs are not part of the backfill itself).
AFTER_RUN_TAG = "isles/after_run"
AFTER_BACKFILL_TAG = "isles/after_backfill"


def run_cases_of(run: dg.DagsterRun) -> list[str]:
    """The cases a case_inputs run covered: its partition, or its range of partitions."""
    if RANGE_START_TAG in run.tags and RANGE_END_TAG in run.tags:
        first, last = CASE_IDS.index(run.tags[RANGE_START_TAG]), CASE_IDS.index(run.tags[RANGE_END_TAG])
        return list(CASE_IDS[first:last + 1])
    return [run.tags["dagster/partition"]] if "dagster/partition" in run.tags else []


def fetched_inputs(run: dg.DagsterRun) -> bool:
    """Whether the run materialised case_inputs: a case_inputs_job run, or a backfill or UI run
    (those run as the implicit asset job) whose selection holds the asset."""
    return run.job_name == case_inputs_job.name or dg.AssetKey("case_inputs") in (run.asset_selection or ())


# Every job of the code location is watched (no monitored_jobs): a backfill launched from the
# asset graph runs as the implicit asset job, not as case_inputs_job.
@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    request_job=model_chain_job,
    name="models_after_inputs",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When a run that fetched case_inputs succeeds, run every registered model on its cases (one run per model).",
)
def models_after_inputs(context: dg.RunStatusSensorContext, models: ModelRegistryResource):
    if not fetched_inputs(context.dagster_run):
        return dg.SkipReason(f"run {context.dagster_run.run_id} did not fetch case_inputs")
    cases, names = run_cases_of(context.dagster_run), models.registry().names
    if not cases:
        return dg.SkipReason("the run named no case")
    sync_models(context.instance, names)
    run_id = context.dagster_run.run_id
    followed = {AFTER_RUN_TAG: run_id}
    if backfill_id := context.dagster_run.tags.get(BACKFILL_TAG):
        followed[AFTER_BACKFILL_TAG] = backfill_id
    return [
        dg.RunRequest(run_key=f"models-after-{run_id}:{name}", tags={**range_tags(cases, name), "isles/model": name, **followed})
        if len(cases) > 1
        else dg.RunRequest(run_key=f"models-after-{run_id}:{name}", partition_key=case_model_key(cases[0], name),
                           tags={"isles/model": name, **followed})
        for name in names
    ]


MODEL_SENSORS = [model_registry_sensor, models_after_inputs]
