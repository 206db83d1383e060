"""One static partition per ISLES'24 case, in catalogue (= shard) order."""

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

# The partitioned assets every case goes through, in order.
CASE_CHAIN_KEYS = ("case_inputs", "case_prediction", "case_metrics")


def range_tags(case_ids: list[str]) -> dict[str, str]:
    """Tags of a run over ``case_ids`` (consecutive in the catalogue)."""
    return {RANGE_START_TAG: case_ids[0], RANGE_END_TAG: case_ids[-1]}


def chain_statuses(instance: dg.DagsterInstance) -> dict[str, dict[str, dg.AssetPartitionStatus | None]]:
    """asset -> case id -> partition status, for every asset of the case chain."""
    return {
        asset: instance.get_status_by_partition(dg.AssetKey(asset), list(CASE_IDS), case_partitions) or {}
        for asset in CASE_CHAIN_KEYS
    }


def automation_on() -> bool:
    """``ISLES_AUTOMATION=on`` starts the nightly backfill and the upstream sensor with the code
    location (a production deployment); otherwise they wait for a click in the UI, so that a
    laptop or a test never polls GitHub or starts a 149-case backfill by itself."""
    return os.environ.get("ISLES_AUTOMATION", "").strip().lower() in ("1", "on", "true", "yes")
