"""Partitions: one per ISLES'24 case (catalogue = shard order), and one per (case, model).

``case_inputs`` is per case: the images are fetched once however many models read them.
``case_prediction`` and ``case_metrics`` are per (case, model): a ``MultiPartitionsDefinition``
of the cases and the *dynamic* partitions ``models``, whose keys are the names in the model
registry (``models.py``). Dynamic rather than static because the registry is deployment data,
not code: adding a model to ``models.yaml`` adds its column to the case x model grid on the next
sensor tick (``sync_models``) without a code change, a model removed from the file keeps its
results in the grid, and tests and the demo register models on a live instance.
"""

import os

import dagster as dg

from ..catalogue import CASE_IDS

case_partitions = dg.StaticPartitionsDefinition(list(CASE_IDS))

# Runs of a backfill carry this many cases each, so that a run imports torch and loads a model
# once for several cases instead of once per case.
CASES_PER_RUN = 8
case_backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=CASES_PER_RUN)

# The tags that make a run cover a range of consecutive cases.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"

model_partitions = dg.DynamicPartitionsDefinition(name="models")
case_model_partitions = dg.MultiPartitionsDefinition({"case": case_partitions, "model": model_partitions})
# A (case, model) partition reads the case's inputs: the case dimension maps onto case_inputs.
inputs_of_case = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="case")

# The partitioned assets every case goes through, in order: per case, then per (case, model).
CASE_CHAIN_KEYS = ("case_inputs", "case_prediction", "case_metrics")
MODEL_CHAIN_KEYS = CASE_CHAIN_KEYS[1:]


def case_model_key(case_id: str, model: str) -> str:
    return str(dg.MultiPartitionKey({"case": case_id, "model": model}))


def split_key(key: str) -> tuple[str, str]:
    """``(case id, model name)`` of a (case, model) partition key: dimensions in name order, joined
    by '|' (neither case ids nor model names contain one)."""
    case_id, model = key.split("|", 1)
    return case_id, model


def sync_models(instance: dg.DagsterInstance, names: list[str]) -> list[str]:
    """Add the registered model names that the ``models`` partitions lack; return them."""
    known = set(instance.get_dynamic_partitions(model_partitions.name))
    new = [name for name in names if name not in known]
    if new:
        instance.add_dynamic_partitions(model_partitions.name, new)
    return new


def range_tags(case_ids: list[str], model: str | None = None) -> dict[str, str]:
    """Tags of a run over ``case_ids`` (consecutive in the catalogue), for one model if given."""
    if model is None:
        return {RANGE_START_TAG: case_ids[0], RANGE_END_TAG: case_ids[-1]}
    return {RANGE_START_TAG: case_model_key(case_ids[0], model), RANGE_END_TAG: case_model_key(case_ids[-1], model)}


def chain_statuses(instance: dg.DagsterInstance, models: list[str]) -> dict[str, dict]:
    """``case_inputs`` -> case id -> status, and each model-chain asset -> (case id, model) -> status."""
    statuses: dict[str, dict] = {
        "case_inputs": instance.get_status_by_partition(dg.AssetKey("case_inputs"), list(CASE_IDS), case_partitions) or {}
    }
    keys = [case_model_key(c, m) for m in models for c in CASE_IDS]
    known = set(instance.get_dynamic_partitions(model_partitions.name))
    keys = [k for k in keys if split_key(k)[1] in known]
    for asset in MODEL_CHAIN_KEYS:
        found = instance.get_status_by_partition(dg.AssetKey(asset), keys, case_model_partitions) if keys else {}
        statuses[asset] = {split_key(k): status for k, status in (found or {}).items()}
    return statuses


def automation_on() -> bool:
    """``ISLES_AUTOMATION=on`` starts the nightly backfill and the upstream sensor with the code
    location (a production deployment); otherwise they wait for a click in the UI, so that a
    laptop or a test never polls GitHub or starts a 149-case backfill by itself."""
    return os.environ.get("ISLES_AUTOMATION", "").strip().lower() in ("1", "on", "true", "yes")
