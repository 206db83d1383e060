"""Partitions: one per ISLES'24 case (catalogue = shard order), one per registered model, and one
per (case, model).

``case_inputs`` is per case: the images are fetched once however many models read them.
``model_weights`` is per model. ``case_prediction`` and ``case_metrics`` are per (case, model): a
``MultiPartitionsDefinition`` of the cases and the *dynamic* partitions ``models``, whose keys are
the names in the model registry (``models.py``). Dynamic rather than static because the registry
is deployment data, not code: adding a model to ``models.yaml`` adds its column to the case x
model grid on the next tick of ``model_registry_sensor`` without a code change, and a model
removed from the file keeps its results in the grid.
"""

import dagster as dg

from ..catalogue import CASE_IDS

case_partitions = dg.StaticPartitionsDefinition(list(CASE_IDS))

# Runs of a backfill carry this many cases each, so that a run imports torch and loads a model
# once for several cases instead of once per case.
CASES_PER_RUN = 8
case_backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=CASES_PER_RUN)

# The tags that make a run cover a range of consecutive partitions.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

model_partitions = dg.DynamicPartitionsDefinition(name="models")
case_model_partitions = dg.MultiPartitionsDefinition({"case": case_partitions, "model": model_partitions})
# A (case, model) partition reads the case's inputs and the model's weights.
inputs_of_case = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="case")
weights_of_model = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="model")

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
    known = set(instance.get_dynamic_partitions(model_partitions.name))
    keys = [case_model_key(c, m) for m in models if m in known for c in CASE_IDS]
    for asset in MODEL_CHAIN_KEYS:
        found = instance.get_status_by_partition(dg.AssetKey(asset), keys, case_model_partitions) if keys else {}
        statuses[asset] = {split_key(k): status for k, status in (found or {}).items()}
    return statuses
