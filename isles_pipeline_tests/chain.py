"""The resources of the case chain as the tests run it: the local Hub, a data folder, the rule
segmenter on the CPU and the model registry (the built-in ``rules`` unless a file is given)."""

from __future__ import annotations

from isles_pipeline.catalogue import DEFAULT_REPO_ID
from isles_pipeline.defs.resources import (
    CaseStoreResource,
    ModelRegistryResource,
    SegmenterResource,
    ShardSourceResource,
)


def resources_for(url: str, data_dir, registry=None) -> dict:
    return {
        "shard_source": ShardSourceResource(repo_id=DEFAULT_REPO_ID, endpoint=url),
        "case_store": CaseStoreResource(data_dir=str(data_dir)),
        "segmenter": SegmenterResource(name="rules", device="cpu"),
        "models": ModelRegistryResource(path=None if registry is None else str(registry)),
    }
