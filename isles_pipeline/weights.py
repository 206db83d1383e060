"""What made a model's predictions: the content of the weights it loads, and its settings.

A model is known by its weights, not by their path: retrain into the same ``model.ts`` and the
fingerprint changes. :func:`weights_digest` is the sha256 of every file the segmenter loads from
a local checkpoint (a network's checkpoint files and their sidecars; an nnU-Net folder's
``dataset.json``, ``plans.json`` and fold checkpoints), or, for a Hub model repo, the commit its
revision resolves to (the Hub's own content address). :func:`fingerprint` adds the segmenter and
its options. The ``model_weights`` asset reports it to Dagster as a data version, and every
prediction records it.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .models import ModelSpec

CHUNK = 1 << 20
SPEC_SEPARATOR = ";"  # as the network segmenter splits an ensemble


@dataclass(frozen=True)
class Fingerprint:
    """``value`` (16 hex digits) identifies the model: segmenter, options and ``weights`` (the
    content digest, "" for the weight-free rule)."""

    value: str
    weights: str


def fingerprint(spec: ModelSpec, endpoint: str | None = None) -> Fingerprint:
    """The model's fingerprint now (reads its weights; asks the Hub for a Hub repo's commit)."""
    weights = weights_digest(spec, endpoint)
    settings = {"segmenter": spec.segmenter, "options": spec.options, "weights": weights}
    return Fingerprint(hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16], weights)


def weights_digest(spec: ModelSpec, endpoint: str | None = None) -> str:
    """``sha256:<hex>`` over the local files the model loads (names and contents), with
    ``hub:<repo>@<commit>`` for each Hub part of its checkpoint; "" for a model without weights."""
    if not spec.checkpoint:
        return ""
    parts = [spec.checkpoint] if spec.segmenter == "nnunet" else [p.strip() for p in spec.checkpoint.split(SPEC_SEPARATOR) if p.strip()]
    files: dict[str, Path] = {}
    hub: list[str] = []
    for part in parts:
        local = _local_files(spec.segmenter, part)
        if local is None:
            hub.append(_hub_commit(part, endpoint))
        else:
            for name, path in local.items():  # an ensemble's files may share a name: all count
                files[name if name not in files else f"{name}#{len(files)}"] = path
    digests = [f"sha256:{_files_digest(files)}"] if files else []
    return " ".join(digests + hub)


def _local_files(segmenter: str, part: str) -> dict[str, Path] | None:
    """The files a local checkpoint spec loads by their names (in the folder of an nnU-Net
    model), or None when the spec names a Hub repo."""
    from .segment.checkpoints import resolve_checkpoint_files, sidecar_path
    from .segment.hub_models import HUB_PREFIX, MODEL_FOLDER_PATTERNS

    path = Path(part).expanduser()
    if part.startswith(HUB_PREFIX) or not (path.exists() or glob.has_magic(part)):
        return None
    if segmenter == "nnunet":
        found = (p for pattern in MODEL_FOLDER_PATTERNS for p in path.glob(pattern) if p.is_file())
        return {p.relative_to(path).as_posix(): p for p in found}
    checkpoints = resolve_checkpoint_files(part)
    return {p.name: p for c in checkpoints for p in (c, sidecar_path(c)) if p.is_file()}


def _files_digest(files: Mapping[str, Path]) -> str:
    """sha256 of (name, sha256 of content) of each file, in name order."""
    total = hashlib.sha256()
    for name, path in sorted(files.items()):
        content = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                content.update(chunk)
        total.update(f"{name}\0{content.hexdigest()}\n".encode())
    return total.hexdigest()


def _hub_commit(part: str, endpoint: str | None) -> str:
    """``hub:<repo>@<commit>[:<parts>]``: the commit the spec's revision resolves to now."""
    from .segment.hub_models import CheckpointError, parse_hub_spec, repo_files

    hub = parse_hub_spec(part)
    if hub is None:
        raise CheckpointError(f"checkpoint {part!r}: no such file or folder, and not a Hub repo id (org/name)")
    commit, _ = repo_files(hub, endpoint)
    patterns = f":{','.join(hub.patterns)}" if hub.patterns else ""
    return f"hub:{hub.repo_id}@{commit}{patterns}"
