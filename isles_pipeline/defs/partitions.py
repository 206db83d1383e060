"""One static partition per ISLES'24 case, in catalogue (= shard) order."""

import dagster as dg

from ..catalogue import CASE_IDS

case_partitions = dg.StaticPartitionsDefinition(list(CASE_IDS))

# Runs of a backfill carry this many cases each, so that a run imports torch and loads a model
# once for several cases instead of once per case.
CASES_PER_RUN = 8
case_backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=CASES_PER_RUN)
