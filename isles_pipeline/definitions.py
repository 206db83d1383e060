"""The code location: every asset, check, job, sensor and schedule, with the resources that the
environment selects (see README: ISLES_DATA_DIR, ISLES_HF_REPO, HF_ENDPOINT, ISLES_SEGMENTER ...)."""

import dagster as dg

from .defs.cases import case_inputs
from .defs.resources import CaseStoreResource, SegmenterResource, ShardSourceResource

defs = dg.Definitions(
    assets=[case_inputs],
    resources={
        "shard_source": ShardSourceResource.from_env(),
        "case_store": CaseStoreResource.from_env(),
        "segmenter": SegmenterResource.from_env(),
    },
)
