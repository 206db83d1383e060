"""Model repos on the Hugging Face Hub: what a spec names, and its files downloaded by the client's
own functions. No torch here: the fetch step reads a model's channel names through this module.

A Hub spec is ``[hf://]org/name[@revision][:part[,part...]]``; the parts are file patterns for
checkpoints (``org/nvauto@v1:fold*.ts``) and a subfolder for an nnU-Net model folder
(``org/models:Dataset501/nnUNetTrainer__nnUNetPlans__3d_fullres``).

Every Hub call has one retry layer. The revision is resolved to a commit once, by repo info: the
one call ``huggingface_hub`` does not retry itself, retried by :mod:`isles_pipeline.retry`. Then
``snapshot_download(revision=<commit>, allow_patterns=...)`` lists the repo and fetches the files
into the Hugging Face cache (``HF_HOME``), and ``hf_hub_download`` fetches a single file; the
client retries those requests itself. The token is the client's too: ``HF_TOKEN``, else the login
``hf auth login`` stored; it never passes through the pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import RemoteEntryNotFoundError

from isles_pipeline.retry import call_with_retries

HUB_PREFIX = "hf://"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What an nnU-Net trained-model folder needs from a Hub repo (relative to its subfolder): v2 files,
# then v1 files (plans.pkl and each fold's checkpoint with its .pkl).
MODEL_FOLDER_PATTERNS = ("dataset.json", "plans.json", "fold_*/checkpoint_final.pth", "fold_*/checkpoint_best.pth",
                         "plans.pkl", "fold_*/model_final_checkpoint.model*", "fold_*/model_best.model*",
                         "all/model_final_checkpoint.model*", "all/model_best.model*")
# The file that marks a folder as nnU-Net's: v2's dataset.json, else v1's plans.pkl.
MODEL_FOLDER_MARKERS = ("dataset.json", "plans.pkl")


class CheckpointError(ValueError):
    """A spec that resolves to no usable checkpoint, or a file that is not one."""


@dataclass(frozen=True)
class HubSpec:
    """A parsed Hub spec."""

    repo_id: str
    revision: str | None
    patterns: tuple[str, ...]

    @property
    def subfolder(self) -> str:
        """The parts as a folder inside the repo, with a trailing '/' (empty for the repo root)."""
        folder = "/".join(p.strip("/") for p in self.patterns if p.strip("/"))
        return f"{folder}/" if folder else ""


def parse_hub_spec(spec: str) -> HubSpec | None:
    """Parse ``[hf://]org/name[@revision][:parts]``; None if ``spec`` is not of that form."""
    body = spec[len(HUB_PREFIX) :] if spec.startswith(HUB_PREFIX) else spec
    body, _, pattern_text = body.partition(":")
    repo_id, _, revision = body.partition("@")
    if not _REPO_ID.match(repo_id):
        return None
    patterns = tuple(p.strip() for p in pattern_text.split(",") if p.strip())
    return HubSpec(repo_id=repo_id, revision=revision or None, patterns=patterns)


def hub_endpoint(endpoint: str | None = None) -> str | None:
    """The endpoint to use: the argument, else ``HF_ENDPOINT`` read now by settings.py (not at
    import), else None (the client's default, the public Hub)."""
    from isles_pipeline.settings import read_settings

    return endpoint or read_settings(only=("hf_endpoint",)).hf_endpoint


def repo_files(hub: HubSpec, endpoint: str | None = None) -> tuple[str, list[str]]:
    """The commit the spec's revision points at, and every file name of the repo there."""
    api = HfApi(endpoint=hub_endpoint(endpoint))
    info = call_with_retries(
        lambda: api.model_info(hub.repo_id, revision=hub.revision), what=f"repo info of {hub.repo_id}@{hub.revision or 'main'}"
    )
    return str(info.sha), sorted(s.rfilename for s in info.siblings or [])


def download_snapshot(hub: HubSpec, commit: str, patterns: list[str], endpoint: str | None = None) -> Path:
    """The repo's files matching ``patterns`` at ``commit``, downloaded (or found) in the HF cache;
    returns the snapshot folder (other files of that commit may be there too)."""
    return Path(snapshot_download(hub.repo_id, revision=commit, allow_patterns=patterns, endpoint=hub_endpoint(endpoint)))


def _hub_spec(spec: str, what: str) -> HubSpec:
    hub = parse_hub_spec(spec)
    if hub is None:
        raise CheckpointError(f"{what} {spec!r}: no such folder and not a Hub repo id (org/name)")
    return hub


def download_model_folder(spec: str, endpoint: str | None = None) -> Path:
    """An nnU-Net model folder from a Hub spec ``[hf://]org/name[@revision][:subfolder]``: its
    ``dataset.json``, ``plans.json`` and fold checkpoints; returns the local folder."""
    hub = _hub_spec(spec, "nnU-Net model")
    commit, _ = repo_files(hub, endpoint)
    prefix = hub.subfolder
    folder = download_snapshot(hub, commit, [prefix + p for p in MODEL_FOLDER_PATTERNS], endpoint) / prefix
    if not any((folder / marker).is_file() for marker in MODEL_FOLDER_MARKERS):
        first, second = (f"{prefix}{m}" for m in MODEL_FOLDER_MARKERS)
        raise CheckpointError(f"Hub repo {hub.repo_id!r} has no {first} (nor {second}): not an nnU-Net model folder")
    return folder


def download_marker_file(spec: str, endpoint: str | None = None) -> Path:
    """Only the file that marks an nnU-Net model folder on the Hub and names its channels: v2's
    ``dataset.json``, else v1's ``plans.pkl`` (the weights stay on the Hub)."""
    hub = _hub_spec(spec, "nnU-Net model")
    for marker in MODEL_FOLDER_MARKERS:
        try:
            return Path(hf_hub_download(hub.repo_id, f"{hub.subfolder}{marker}", revision=hub.revision, endpoint=hub_endpoint(endpoint)))
        except RemoteEntryNotFoundError:
            continue
    first, second = (f"{hub.subfolder}{m}" for m in MODEL_FOLDER_MARKERS)
    raise CheckpointError(f"Hub repo {hub.repo_id!r} has no {first} (nor {second}): not an nnU-Net model folder")
