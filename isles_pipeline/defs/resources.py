"""Resources: where shards come from, where case files go, which segmenter runs.

Each is a ``ConfigurableResource`` whose defaults come from the environment (see README), so
one code location serves a laptop, a replica behind a local Hub server, and a cluster with
shared storage. No field holds a secret: the Hub token is read by the client from ``HF_TOKEN``.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import PrivateAttr

from ..catalogue import DEFAULT_REPO_ID
from ..source import ShardReader, ShardSource
from ..store import CaseStore

DEFAULT_DATA_DIR = ".isles/data"


class ShardSourceResource(dg.ConfigurableResource):
    """The dataset repo on a Hub (or a Hub-compatible server) that holds one shard per case."""

    repo_id: str = DEFAULT_REPO_ID
    revision: str = "main"
    endpoint: str | None = None

    @classmethod
    def from_env(cls) -> ShardSourceResource:
        source = ShardSource.from_env()
        return cls(repo_id=source.repo_id, revision=source.revision, endpoint=source.endpoint)

    def reader(self) -> ShardReader:
        return ShardReader(ShardSource(self.repo_id, self.revision, self.endpoint))


class CaseStoreResource(dg.ConfigurableResource):
    """Where case files and results live: a local folder or an fsspec URL (s3://, gs://, ...)."""

    data_dir: str = DEFAULT_DATA_DIR

    @classmethod
    def from_env(cls) -> CaseStoreResource:
        return cls(data_dir=os.environ.get("ISLES_DATA_DIR", DEFAULT_DATA_DIR))

    def store(self) -> CaseStore:
        return CaseStore(self.data_dir)


class SegmenterResource(dg.ConfigurableResource):
    """The segmenter, built once per run and reused for every case of the run."""

    name: str = "rules"
    device: str = "auto"
    checkpoint: str | None = None

    _segmenter: object | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> SegmenterResource:
        return cls(
            name=os.environ.get("ISLES_SEGMENTER", "rules"),
            device=os.environ.get("ISLES_DEVICE", "auto"),
            checkpoint=os.environ.get("ISLES_CHECKPOINT") or None,
        )

    def get(self):
        """The segmenter (imports torch on first use, not when the code location loads)."""
        if self._segmenter is None:
            from ..segment.registry import make_segmenter

            self._segmenter = make_segmenter(self.name, device=self.device, checkpoint=self.checkpoint)
        return self._segmenter
