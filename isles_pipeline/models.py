"""The models a deployment compares: named segmenter settings, read from a YAML registry.

A model is ``rules``, ``network:<label>`` or ``nnunet:<label>``: the segmenter before the colon,
its checkpoint and options after. The registry is the file ``ISLES_MODELS`` names, else
``./models.yaml``, else the built-in ``rules`` alone (see ``models.example.yaml``). Predictions
and metrics are kept per (case, model), so each name must stay bound to one setting: the
fingerprint (a hash of the settings) is recorded beside every prediction to show which one made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODELS_ENV = "ISLES_MODELS"
DEFAULT_REGISTRY = "models.yaml"
SEGMENTER_KINDS = ("rules", "network", "nnunet")
# Labels become folder names and partition keys: lower-case letters, digits, '.', '-'.
LABEL = r"[a-z0-9][a-z0-9.-]{0,62}"
NAME_PATTERN = re.compile(rf"^(rules(:{LABEL})?|network:{LABEL}|nnunet:{LABEL})$")
KNOWN_KEYS = {"name", "checkpoint", "options", "description"}


class ModelRegistryError(ValueError):
    """A registry entry that cannot be used; the message is one line naming the model."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    checkpoint: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def segmenter(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def slug(self) -> str:
        """The name as a folder name (labels have no '_', so the slug is unambiguous)."""
        return slug_of(self.name)

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of what decides the predictions: segmenter, checkpoint, options."""
        settings = {"segmenter": self.segmenter, "checkpoint": self.checkpoint, "options": self.options}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def input_columns(self) -> tuple[str, ...]:
        from .segment.channels import input_columns_for

        return tuple(input_columns_for(self.segmenter, self.checkpoint))

    def make(self, device: str = "auto"):
        """The segmenter (torch is imported here, not when the registry is read)."""
        from .segment.registry import make_segmenter

        return make_segmenter(self.segmenter, device=device, checkpoint=self.checkpoint, **self.options)


BUILT_IN = (ModelSpec("rules", description="the weight-free DWI/ADC rule"),)


@dataclass(frozen=True)
class ModelRegistry:
    models: tuple[ModelSpec, ...]
    source: str = "built-in"

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise ModelRegistryError(f"model {name!r}: not in the registry ({self.source}); registered: {', '.join(self.names)}")

    def input_columns(self) -> tuple[str, ...]:
        """Every image column some registered model reads, plus the expert mask for scoring."""
        columns: list[str] = []
        for model in self.models:
            columns += [c for c in model.input_columns() if c not in columns]
        return (*columns, "lesion_mask") if "lesion_mask" not in columns else tuple(columns)


def registry_path(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The registry file in use: ``path``, else ``ISLES_MODELS``, else ``./models.yaml`` if present."""
    chosen = path or os.environ.get(MODELS_ENV, "").strip()
    if chosen:
        return Path(chosen)
    return Path(DEFAULT_REGISTRY) if Path(DEFAULT_REGISTRY).is_file() else None


def load_registry(path: str | os.PathLike[str] | None = None) -> ModelRegistry:
    where = registry_path(path)
    if where is None:
        return environment_registry()
    try:
        document = yaml.safe_load(where.read_text())
    except FileNotFoundError:
        raise ModelRegistryError(f"model registry {where}: no such file") from None
    except yaml.YAMLError as exc:
        raise ModelRegistryError(f"model registry {where}: not YAML: {' '.join(str(exc).split())}") from None
    return parse_registry(document, str(where))


def environment_registry() -> ModelRegistry:
    """Without a registry file: the one model ``ISLES_SEGMENTER`` / ``ISLES_CHECKPOINT`` name
    (``network:given`` or ``nnunet:given``, as the demo calls it), else the built-in ``rules``."""
    segmenter = os.environ.get("ISLES_SEGMENTER", "").strip() or "rules"
    if segmenter == "rules":
        return ModelRegistry(BUILT_IN)
    checkpoint = os.environ.get("ISLES_CHECKPOINT", "").strip()
    if segmenter not in ("network", "nnunet") or not checkpoint:
        raise ModelRegistryError(
            f"ISLES_SEGMENTER={segmenter!r} without a registry file: expected rules, or network/nnunet with ISLES_CHECKPOINT set"
        )
    return ModelRegistry((ModelSpec(f"{segmenter}:given", checkpoint=checkpoint),), "ISLES_SEGMENTER")


def parse_registry(document: Any, source: str = "<yaml>") -> ModelRegistry:
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ModelRegistryError(f"model registry {source}: expected a non-empty list under 'models:'")
    models = [_spec(entry, index, source) for index, entry in enumerate(entries)]
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise ModelRegistryError(f"model {model.name!r} ({source}): registered twice")
        seen.add(model.name)
    return ModelRegistry(tuple(models), source)


def _spec(entry: Any, index: int, source: str) -> ModelSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ModelRegistryError(f"model #{index + 1} ({source}): expected a mapping with a 'name'")
    name = entry["name"].strip()
    where = f"model {name!r} ({source})"
    if not NAME_PATTERN.match(name):
        raise ModelRegistryError(f"{where}: name must be rules, network:<label> or nnunet:<label> (label: {LABEL})")
    unknown = sorted(set(entry) - KNOWN_KEYS)
    if unknown:
        raise ModelRegistryError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(KNOWN_KEYS))}")
    checkpoint, options = entry.get("checkpoint"), entry.get("options") or {}
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise ModelRegistryError(f"{where}: checkpoint must be a path or a Hub repo id")
    if not isinstance(options, dict):
        raise ModelRegistryError(f"{where}: options must be a mapping")
    kind = name.split(":", 1)[0]
    if kind in ("network", "nnunet") and not checkpoint:
        raise ModelRegistryError(f"{where}: a {kind} model needs a checkpoint")
    return ModelSpec(name, checkpoint, dict(options), str(entry.get("description") or ""))


def write_registry(path: str | os.PathLike[str], models: list[ModelSpec]) -> Path:
    """Write a registry file (the demo and tests use it)."""
    entries = []
    for model in models:
        entry: dict[str, Any] = {"name": model.name}
        if model.checkpoint:
            entry["checkpoint"] = model.checkpoint
        if model.options:
            entry["options"] = model.options
        entries.append(entry)
    target = Path(path)
    target.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    return target


def slug_of(name: str) -> str:
    return name.replace(":", "_")


def result_path(store, case_id: str, model: str, file_name: str):
    """Where a (case, model) result lives: ``cases/<case>/models/<model slug>/<file>``."""
    return store.case_path(case_id, f"models/{slug_of(model)}/{file_name}")
