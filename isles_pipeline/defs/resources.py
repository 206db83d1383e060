"""Resources: where shards come from, where case files go, which models run and on what device.

Each is a ``ConfigurableResource`` built from the :class:`~isles_pipeline.settings.Settings` of
the definitions (:func:`resources_from`). A setting read from the environment travels as a
``dg.EnvVar``: the launchpad shows it, a value typed into a run's config wins, and otherwise each
worker resolves the variable when it builds the resource. No field holds a secret: the Hub token
is the client's business.
"""

from __future__ import annotations

import dagster as dg

from ..catalogue import DEFAULT_REPO_ID
from ..settings import DEFAULT_DATA_DIR, Settings, variable_of
from ..source import ShardReader, ShardSource
from ..store import CaseStore


class ShardSourceResource(dg.ConfigurableResource):
    """The dataset repo on a Hub (or a Hub-compatible server) that holds one shard per case."""

    repo_id: str = DEFAULT_REPO_ID
    revision: str = "main"
    endpoint: str | None = None

    def reader(self) -> ShardReader:
        return ShardReader(ShardSource(self.repo_id, self.revision, self.endpoint))


class CaseStoreResource(dg.ConfigurableResource):
    """Where case files and results live: a local folder or an fsspec URL (s3://, gs://, ...)."""

    data_dir: str = DEFAULT_DATA_DIR

    def store(self) -> CaseStore:
        return CaseStore(self.data_dir)


class ModelRegistryResource(dg.ConfigurableResource):
    """The registered models (``models.py``) and the device they run on.

    The registry is the file ``path`` names, else ``./models.yaml``, else the one model that
    ``segmenter``/``checkpoint`` name (``ISLES_SEGMENTER``/``ISLES_CHECKPOINT``: ``rules``,
    ``network:given`` or ``nnunet:given``). It is read when a run or tick uses it, so that an edited
    registry counts without reloading the code location. ``endpoint`` is the Hub of Hub model repos.
    """

    path: str | None = None
    segmenter: str = "rules"
    checkpoint: str | None = None
    device: str = "auto"
    endpoint: str | None = None

    def registry(self):
        from ..models import load_registry

        return load_registry(self.path, segmenter=self.segmenter, checkpoint=self.checkpoint)

    def build(self, spec):
        """The segmenter of a registered model (torch is imported here, in the run)."""
        return spec.make(device=self.device, endpoint=self.endpoint)


def travelling(settings: Settings, name: str):
    """A setting as a resource field: ``dg.EnvVar`` where it was read from the environment (it
    travels in the run config as ``{"env": VARIABLE}``), else its value."""
    return dg.EnvVar(variable_of(name)) if name in settings.from_environment else getattr(settings, name)


def resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The case chain's resources for these settings."""
    value = lambda name: travelling(settings, name)  # noqa: E731
    return {
        "shard_source": ShardSourceResource(repo_id=value("hf_repo"), revision=value("hf_revision"), endpoint=value("hf_endpoint")),
        "case_store": CaseStoreResource(data_dir=value("data_dir")),
        "models": ModelRegistryResource(path=value("models_file"), segmenter=value("segmenter"), checkpoint=value("checkpoint"),
                                        device=value("device"), endpoint=value("hf_endpoint")),
    }
