"""The models a deployment compares: named segmenter settings, read from a YAML registry.

A model is ``rules``, ``network:<label>`` or ``nnunet:<label>``: the segmenter before the colon,
its checkpoint and options after. The registry is the file ``ISLES_MODELS`` names, else
``./models.yaml``, else the one model ``ISLES_SEGMENTER``/``ISLES_CHECKPOINT`` name (the built-in
``rules`` by default; see ``models.example.yaml``). Every option is checked against its
segmenter's when the registry loads (``segment/options.py``). Predictions and metrics are kept per
(case, model); the fingerprint of the model's weights and settings (``weights.py``) is recorded
beside every prediction to show which one made it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .segment.options import OptionError, check_options

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

    def input_columns(self) -> tuple[str, ...]:
        from .segment.channels import input_columns_for

        return tuple(input_columns_for(self.segmenter, self.checkpoint))

    def make(self, device: str = "auto", endpoint: str | None = None):
        """The segmenter (torch is imported here, not when the registry is read); ``endpoint``:
        the Hub of a Hub checkpoint."""
        from .segment.registry import make_segmenter

        return make_segmenter(self.segmenter, device=device, checkpoint=self.checkpoint, endpoint=endpoint, **self.options)


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
    """The registry file in use: ``path``, else ``./models.yaml`` if present, else None."""
    if path:
        return Path(path)
    return Path(DEFAULT_REGISTRY) if Path(DEFAULT_REGISTRY).is_file() else None


def load_registry(path: str | os.PathLike[str] | None = None, segmenter: str = "rules", checkpoint: str | None = None) -> ModelRegistry:
    """The registry file (see :func:`registry_path`), else the one model ``segmenter`` and
    ``checkpoint`` name (``ISLES_SEGMENTER``/``ISLES_CHECKPOINT``). Naming a model both ways is
    refused: one of the two would do nothing."""
    where = registry_path(path)
    if where is None:
        return shorthand_registry(segmenter, checkpoint)
    if segmenter != "rules" or checkpoint:
        raise ModelRegistryError(
            f"model registry {where} is in use: ISLES_SEGMENTER={segmenter!r} / ISLES_CHECKPOINT={checkpoint!r} would do "
            "nothing; register the model in the file, or unset ISLES_MODELS (and move ./models.yaml away)"
        )
    try:
        document = yaml.safe_load(where.read_text())
    except FileNotFoundError:
        raise ModelRegistryError(f"model registry {where}: no such file") from None
    except yaml.YAMLError as exc:
        raise ModelRegistryError(f"model registry {where}: not YAML: {' '.join(str(exc).split())}") from None
    return parse_registry(document, str(where))


def shorthand_registry(segmenter: str = "rules", checkpoint: str | None = None) -> ModelRegistry:
    """Without a registry file: ``rules`` alone, or the one model ``network:given`` /
    ``nnunet:given`` of ``checkpoint``."""
    if segmenter == "rules" and not checkpoint:
        return ModelRegistry(BUILT_IN)
    if segmenter not in ("network", "nnunet") or not checkpoint:
        raise ModelRegistryError(
            f"ISLES_SEGMENTER={segmenter!r} with ISLES_CHECKPOINT={checkpoint!r} and no registry file: expected rules "
            "(no checkpoint), or network/nnunet with ISLES_CHECKPOINT set"
        )
    return parse_registry({"models": [{"name": f"{segmenter}:given", "checkpoint": checkpoint}]}, "ISLES_SEGMENTER")


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
    if kind == "rules" and checkpoint:
        raise ModelRegistryError(f"{where}: the rules segmenter reads no checkpoint")
    try:
        check_options(kind, options)
    except OptionError as exc:
        raise ModelRegistryError(f"{where}: {exc}") from None
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
