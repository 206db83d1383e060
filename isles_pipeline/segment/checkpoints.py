"""Finding and loading segmentation checkpoints: local files or Hugging Face Hub model repos.

A checkpoint *spec* is one of

* a local file (``model.ts``, ``fold0.pt``), a folder, whose ``*.ts``/``*.pt``/``*.pth`` files
  are taken in name order (one ensemble member each), or a wildcard path (``/models/fold*.ts``);
* a Hub model repo: ``[hf://]org/name[@revision][:pattern[,pattern...]]``, e.g.
  ``org/nvauto@v1:fold*.ts``. Patterns without wildcards are file names downloaded directly;
  wildcard patterns are matched against the repo's file list; no pattern means all checkpoint
  files. They download through ``snapshot_download`` (see :mod:`~isles_pipeline.segment.hub_models`:
  one retry layer per Hub call, the client's token).

A checkpoint *file* is either TorchScript (``torch.jit.save``; DeepISLES' NVAUTO models are) or
a ``torch.save``-d dict ``{"arch": "SegResNet", "kwargs": {...}, "state_dict": {...}}`` naming a
MONAI network (see :func:`state_dict_checkpoint_bytes`), loaded with ``weights_only=True`` so
that a checkpoint file cannot run code. Networks map ``(N, 2, X, Y, Z)`` [ADC, DWI] to logits
``(N, K, X, Y, Z)``: K=2 (background, lesion) softmax logits, or K=1 sigmoid logits.

A checkpoint may carry its inference settings in a *sidecar*: a JSON file of the same stem
(``model.json`` beside ``model.ts``), e.g. ``{"target_spacing": [4, 4, 4], "roi_size": [32, 32, 16],
"overlap": 0.5, "channels": ["adc", "dwi"], "arch": "SegResNet"}``. Training writes one; Hub specs
download it with the checkpoint when the repo has it. Only the keys in :data:`SIDECAR_OPTIONS`
are inference options; the others (``arch``, ``network_kwargs`` ...) are for people to read.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from monai.networks import nets

from isles_pipeline.segment.hub_models import (
    HUB_PREFIX,
    CheckpointError,
    HubSpec,
    download_snapshot,
    parse_hub_spec,
    repo_files,
)

CHECKPOINT_SUFFIXES = (".ts", ".pt", ".pth")
DEFAULT_PATTERNS = tuple(f"*{suffix}" for suffix in CHECKPOINT_SUFFIXES)
# MONAI networks a state-dict checkpoint may name; anything else is refused, not imported.
ARCHITECTURES: dict[str, type[torch.nn.Module]] = {
    "SegResNet": nets.SegResNet,
    "DynUNet": nets.DynUNet,
    "UNet": nets.UNet,
    "BasicUNet": nets.BasicUNet,
}
SIDECAR_SUFFIX = ".json"
# The NetworkSegmenter options a sidecar may set; sw_batch_size, amp and device belong to the machine.
SIDECAR_OPTIONS = ("target_spacing", "roi_size", "overlap", "size_divisible")
INPUT_CHANNELS = ("adc", "dwi")  # the order every network here takes its input channels in


@dataclass
class LoadedModel:
    """One ensemble member: the network in eval mode and where it came from."""

    module: torch.nn.Module
    source: str
    kind: str  # "torchscript" | "state_dict" | "module"
    # The sidecar's inference options; None: no sidecar (in-memory modules never have one).
    settings: dict[str, Any] | None = None


def resolve_checkpoint_files(spec: str | os.PathLike[str], endpoint: str | None = None) -> list[Path]:
    """Local checkpoint files for one spec (downloading Hub files into the HF cache)."""
    text = os.fspath(spec)
    local = Path(text).expanduser()
    on_hub = text.startswith(HUB_PREFIX)
    if not on_hub and local.exists():
        return _local_files(local)
    matches = [] if on_hub else _local_glob(local)
    if matches:
        return matches
    hub = parse_hub_spec(text)
    # "dir/model.ts" that does not exist is a mistyped path, not a repo (unless hf:// or a
    # ":patterns" part says so).
    looks_like_file = not on_hub and ":" not in text and local.suffix in CHECKPOINT_SUFFIXES
    if hub is None or looks_like_file:
        raise CheckpointError(f"checkpoint {text!r}: no such file or folder, no file matches it, and not a Hub repo id (org/name)")
    return _download(hub, endpoint)


def _has_wildcard(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _local_glob(pattern: Path) -> list[Path]:
    """Checkpoint files matching a local wildcard path (``/models/nvauto/fold*.ts``), in name order."""
    if not _has_wildcard(str(pattern)):
        return []
    found = (Path(name) for name in glob.glob(str(pattern)))
    return sorted(p for p in found if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not files:
        raise CheckpointError(f"checkpoint folder {str(path)!r} holds no {'/'.join(CHECKPOINT_SUFFIXES)} files")
    return files


def _download(hub: HubSpec, endpoint: str | None) -> list[Path]:
    """Download a Hub spec's checkpoint files, and each one's sidecar where the repo has it."""
    commit, listed = repo_files(hub, endpoint)
    names = _hub_file_names(hub, listed)
    sidecars = [sidecar for sidecar in map(_sidecar_name, names) if sidecar in listed]
    folder = download_snapshot(hub, commit, names + sidecars, endpoint)  # each sidecar beside its checkpoint
    return [folder / name for name in names]


def _hub_file_names(hub: HubSpec, listed: list[str]) -> list[str]:
    """Checkpoint file names to download: literal patterns as they are, wildcards matched
    against the repo's file list."""
    patterns = hub.patterns or DEFAULT_PATTERNS
    literal = [p for p in patterns if not _has_wildcard(p)]
    missing = [name for name in literal if name not in listed]
    if missing:
        raise CheckpointError(f"Hub repo {hub.repo_id!r} has no file {', '.join(missing)} (at {hub.revision or 'main'})")
    wildcards = [p for p in patterns if p not in literal]
    names = list(literal)
    names += [n for n in listed if n not in names and any(fnmatch.fnmatch(n, p) for p in wildcards)]
    if not names:
        raise CheckpointError(f"Hub repo {hub.repo_id!r} has no files matching {', '.join(patterns)}")
    return names


def _sidecar_name(name: str) -> str:
    return PurePosixPath(name).with_suffix(SIDECAR_SUFFIX).as_posix()


def sidecar_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where a checkpoint's sidecar is: the same path with ``.json`` for its suffix."""
    return Path(checkpoint).with_suffix(SIDECAR_SUFFIX)


def read_sidecar(checkpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The inference options in a checkpoint's sidecar (only keys of :data:`SIDECAR_OPTIONS`),
    or None without a sidecar. A sidecar naming input channels other than [ADC, DWI] is refused."""
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable sidecar ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: a sidecar must be a JSON object")
    channels = [str(c).lower() for c in raw.get("channels", INPUT_CHANNELS)]
    if tuple(channels) != INPUT_CHANNELS:
        raise CheckpointError(f"{path}: channels {channels} are not supported; the segmenter feeds {list(INPUT_CHANNELS)}")
    return {key: raw[key] for key in SIDECAR_OPTIONS if key in raw}


def sidecar_text(settings: dict[str, Any]) -> str:
    """A sidecar's JSON text for these settings, with the input channels stated."""
    return json.dumps({**settings, "channels": list(INPUT_CHANNELS)}, indent=2)


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with ``constants.pkl`` and ``code/`` (torch.save zips are not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _check_architecture(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")


def build_network(arch: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """Instantiate an allowed MONAI network by class name."""
    _check_architecture(arch)
    return ARCHITECTURES[arch](**kwargs)


def load_checkpoint(path: str | os.PathLike[str], device: torch.device) -> LoadedModel:
    """Load one checkpoint file onto ``device`` in eval mode."""
    path = Path(path)
    settings = read_sidecar(path)
    if is_torchscript(path):
        module = torch.jit.load(str(path), map_location=device)
        return LoadedModel(module=module.eval(), source=str(path), kind="torchscript", settings=settings)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: neither TorchScript nor a torch.save checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or not {"arch", "kwargs", "state_dict"} <= payload.keys():
        raise CheckpointError(
            f"{path}: a torch.save checkpoint must be a dict with 'arch', 'kwargs' and 'state_dict' "
            "(see isles_pipeline.segment.checkpoints.state_dict_checkpoint_bytes)"
        )
    module = build_network(payload["arch"], dict(payload["kwargs"]))
    module.load_state_dict(payload["state_dict"])
    return LoadedModel(module=module.to(device).eval(), source=str(path), kind="state_dict", settings=settings)


def load_models(
    specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str] | torch.nn.Module],
    device: torch.device,
    endpoint: str | None = None,
) -> list[LoadedModel]:
    """Resolve and load every checkpoint of one or more specs (in-memory modules pass through)."""
    if isinstance(specs, (str, os.PathLike, torch.nn.Module)):
        specs = [specs]
    models: list[LoadedModel] = []
    for spec in specs:
        if isinstance(spec, torch.nn.Module):
            models.append(LoadedModel(module=spec.to(device).eval(), source=type(spec).__name__, kind="module"))
            continue
        models += [load_checkpoint(path, device) for path in resolve_checkpoint_files(spec, endpoint)]
    if not models:
        raise CheckpointError("no checkpoints given")
    return models


def state_dict_checkpoint_bytes(arch: str, kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> bytes:
    """Serialise a MONAI network as the ``{"arch", "kwargs", "state_dict"}`` dict this module loads."""
    _check_architecture(arch)  # refuse at save time, not when someone loads it later
    buffer = io.BytesIO()
    cpu_state = {name: tensor.detach().cpu() for name, tensor in state_dict.items()}
    torch.save({"arch": arch, "kwargs": kwargs, "state_dict": cpu_state}, buffer)
    return buffer.getvalue()


def torchscript_bytes(module: torch.jit.ScriptModule) -> bytes:
    """Serialise a scripted or traced module (write the bytes through ``CaseStore``)."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()
