"""Resources: where shards come from, where case files go, which segmenter runs.

Each is a ``ConfigurableResource`` whose defaults come from the environment (see README), so
one code location serves a laptop, a replica behind a local Hub server, and a cluster with
shared storage. No field holds a secret: the Hub token is read by the client from ``HF_TOKEN``.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field, PrivateAttr

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
        """ISLES_HF_REPO, ISLES_HF_REVISION and HF_ENDPOINT as ``dg.EnvVar``: read where the
        resource is built (the run worker) and overridable in a run's config."""
        return cls(
            repo_id=env_or_default("ISLES_HF_REPO", DEFAULT_REPO_ID),
            revision=env_or_default("ISLES_HF_REVISION", "main"),
            endpoint=env_or_default("HF_ENDPOINT", None),
        )

    def reader(self) -> ShardReader:
        return ShardReader(ShardSource(self.repo_id, self.revision, self.endpoint))


class CaseStoreResource(dg.ConfigurableResource):
    """Where case files and results live: a local folder or an fsspec URL (s3://, gs://, ...)."""

    data_dir: str = DEFAULT_DATA_DIR

    @classmethod
    def from_env(cls) -> CaseStoreResource:
        """ISLES_DATA_DIR as a ``dg.EnvVar`` (see ShardSourceResource.from_env)."""
        return cls(data_dir=env_or_default("ISLES_DATA_DIR", DEFAULT_DATA_DIR))

    def store(self) -> CaseStore:
        return CaseStore(self.data_dir)


class SegmenterResource(dg.ConfigurableResource):
    """The segmenter, built once per run and reused for every case of the run.

    ``target_spacing``, ``roi_size``, ``overlap``, ``sw_batch_size`` and ``amp`` are options of
    the network segmenter only (the rule segmenter ignores them); left unset, the network takes
    them from its checkpoints' sidecars, else from the NVAUTO recipe.
    """

    name: str = "rules"
    device: str = "auto"
    checkpoint: str | None = None
    target_spacing: list[float] | None = Field(default=None, description="network only: mm per voxel axis")
    roi_size: list[int] | None = Field(default=None, description="network only: sliding-window size in voxels")
    overlap: float | None = Field(default=None, description="network only: sliding-window overlap, [0, 1)")
    sw_batch_size: int | None = Field(default=None, description="network only: windows per forward pass")
    amp: bool | None = Field(default=None, description="network only: mixed precision on CUDA")
    tile_step_size: float | None = Field(default=None, description="nnunet only: tile step, fraction of the patch (nnU-Net: 0.5)")
    use_mirroring: bool | None = Field(default=None, description="nnunet only: test-time mirroring (nnU-Net: on)")
    folds: list[int] | None = Field(default=None, description="nnunet only: folds to ensemble (default: every fold present)")

    _segmenter: object | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> SegmenterResource:
        """ISLES_SEGMENTER, ISLES_DEVICE, ISLES_CHECKPOINT and the network options ISLES_TARGET_SPACING
        ("1,1,1" or "1"), ISLES_ROI ("192,192,128"), ISLES_OVERLAP, ISLES_SW_BATCH, ISLES_AMP (1/0),
        and the nnunet options ISLES_TILE_STEP (0.5), ISLES_MIRRORING (1/0), ISLES_FOLDS ("0,1")."""
        env = os.environ
        return cls(
            name=env.get("ISLES_SEGMENTER", "rules"),
            device=env.get("ISLES_DEVICE", "auto"),
            checkpoint=env.get("ISLES_CHECKPOINT") or None,
            target_spacing=_env_triple("ISLES_TARGET_SPACING", float),
            roi_size=_env_triple("ISLES_ROI", int),
            overlap=_env_value("ISLES_OVERLAP", float),
            sw_batch_size=_env_value("ISLES_SW_BATCH", int),
            amp=_env_value("ISLES_AMP", _parse_bool),
            tile_step_size=_env_value("ISLES_TILE_STEP", float),
            use_mirroring=_env_value("ISLES_MIRRORING", _parse_bool),
            folds=_env_value("ISLES_FOLDS", lambda text: [int(part) for part in text.split(",")]),
        )

    def network_options(self) -> dict[str, object]:
        """The model options that are set (unset ones are left to sidecars and defaults); the
        registry hands each segmenter only its own."""
        options = {
            "target_spacing": self.target_spacing,
            "roi_size": self.roi_size,
            "overlap": self.overlap,
            "sw_batch_size": self.sw_batch_size,
            "amp": self.amp,
            "tile_step_size": self.tile_step_size,
            "use_mirroring": self.use_mirroring,
            "folds": self.folds,
        }
        return {key: value for key, value in options.items() if value is not None}

    def get(self):
        """The segmenter (imports torch on first use, not when the code location loads)."""
        if self._segmenter is None:
            from ..segment.registry import make_segmenter

            self._segmenter = make_segmenter(
                self.name, device=self.device, checkpoint=self.checkpoint, **self.network_options()
            )
        return self._segmenter

    def build(self, spec):
        """The segmenter of a registered model (``models.ModelSpec``) on this resource's device."""
        return spec.make(device=self.device)


def env_or_default(key: str, default):
    """``dg.EnvVar(key)`` where the variable is set, else the default.

    An EnvVar travels in the run config as ``{"env": key}``: the launchpad shows it, a run can
    replace it with a value (which then wins over whatever each worker has set), and otherwise
    each worker resolves it when it builds the resource, not when it imports the code.
    """
    return dg.EnvVar(key) if os.environ.get(key) else default


def _env_value(key: str, parse):
    """``parse(os.environ[key])``, None when unset or empty; a bad value names the variable."""
    text = os.environ.get(key, "").strip()
    if not text:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"{key}={text!r}: {exc}") from exc


def _env_triple(key: str, cast) -> list | None:
    """Three comma-separated numbers, or one meaning the same on every axis."""

    def parse(text: str) -> list:
        values = [cast(part) for part in text.split(",")]
        if len(values) not in (1, 3):
            raise ValueError("expected one or three comma-separated values")
        return values * 3 if len(values) == 1 else values

    return _env_value(key, parse)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


class ModelRegistryResource(dg.ConfigurableResource):
    """The registered models (``models.py``): the file ``path`` names, else ``ISLES_MODELS``, else
    ``./models.yaml``, else the built-in ``rules``. Read when a run or tick uses it, so that an
    edited registry counts without reloading the code location."""

    path: str | None = None

    @classmethod
    def from_env(cls) -> ModelRegistryResource:
        return cls(path=os.environ.get("ISLES_MODELS") or None)

    def registry(self):
        from ..models import load_registry

        return load_registry(self.path)
