"""A case's input files in the store: fetched from its shard once, read back by every later step.

``fetch_case`` writes ``cases/<case id>/{dwi,adc,lesion_mask}.nii.gz`` (the original bytes, so
their sha256 equals the shard's) and a ``source.json`` manifest naming the shard they came from.
A re-run on an unchanged shard whose files are intact skips the download.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import nibabel as nib

from . import nifti
from .catalogue import IMAGE_COLUMNS
from .source import CaseShard, ShardIdentity, ShardReader, Transfer
from .store import CaseStore, sha256_hex

MANIFEST = "source.json"


def file_name(column: str, data: bytes) -> str:
    """``dwi.nii.gz`` for gzip bytes, ``dwi.nii`` otherwise: the name says what the bytes are."""
    return f"{column}.nii.gz" if data[:2] == nifti.GZIP_MAGIC else f"{column}.nii"


@dataclass(frozen=True)
class CaseFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class CaseManifest:
    """What ``source.json`` records about a case's files and the shard they came from."""

    case_id: str
    repo_id: str
    revision: str
    shard_path: str
    shard_oid: str
    shard_size: int
    files: dict[str, CaseFile]
    original_names: dict[str, str]
    shape: tuple[int, ...]
    voxel_size_mm: tuple[float, ...]
    lesion_ml: float
    nonfinite_voxels: dict[str, int] = field(default_factory=dict)  # NaN/inf voxels, read as background
    replica: dict | None = None  # the shard's note that it is synthetic (a replica), and its grid

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CaseManifest:
        raw = json.loads(text)
        raw["files"] = {k: CaseFile(**v) for k, v in raw["files"].items()}
        raw["shape"], raw["voxel_size_mm"] = tuple(raw["shape"]), tuple(raw["voxel_size_mm"])
        return cls(**raw)


@dataclass(frozen=True)
class FetchResult:
    manifest: CaseManifest
    skipped: bool
    transfer: Transfer
    leftovers_removed: int = 0

    def summary(self) -> dict:
        """A JSON-ready account of the fetch (what the CLI prints and the asset records)."""
        m = self.manifest
        return {
            "case_id": m.case_id,
            "repo_id": m.repo_id,
            "revision": m.revision,
            "shard": m.shard_path,
            "shard_oid": m.shard_oid,
            "shard_bytes": m.shard_size,
            "skipped_download": self.skipped,
            "leftovers_removed": self.leftovers_removed,
            "bytes_transferred": self.transfer.bytes,
            "range_requests": self.transfer.requests,
            "retries": self.transfer.retries,
            "seconds": round(self.transfer.seconds, 3),
            "shape": list(m.shape),
            "voxel_size_mm": [round(v, 4) for v in m.voxel_size_mm],
            "lesion_ml": round(m.lesion_ml, 4),
            "nonfinite_voxels": dict(m.nonfinite_voxels),
            "replica": m.replica,
            "files": {col: {"name": f.name, "sha256": f.sha256, "bytes": f.size} for col, f in m.files.items()},
        }


def read_manifest(store: CaseStore, case_id: str) -> CaseManifest | None:
    path = store.case_path(case_id, MANIFEST)
    return CaseManifest.from_json(path.read_text()) if path.exists() else None


def files_intact(store: CaseStore, manifest: CaseManifest) -> bool:
    return all(store.sha256(store.case_path(manifest.case_id, f.name)) == f.sha256 for f in manifest.files.values())


def fetch_case(
    reader: ShardReader, store: CaseStore, case_id: str, force: bool = False, columns: tuple[str, ...] = IMAGE_COLUMNS
) -> FetchResult:
    """Make the case's input files of ``columns`` present and current in the store, first removing
    the temporary files that crashed writes of this case left behind."""
    removed = store.remove_leftovers(case_id)
    identity = reader.identify(case_id)
    previous = read_manifest(store, case_id)
    if not force and previous and previous.shard_oid == identity.oid and set(columns) <= set(previous.files) and files_intact(store, previous):
        return FetchResult(previous, skipped=True, transfer=Transfer(), leftovers_removed=removed)
    shard = reader.read_case(case_id, identity, columns)
    manifest = _write_case(store, shard, reader.source.repo_id)
    return FetchResult(manifest, skipped=False, transfer=shard.transfer, leftovers_removed=removed)


def _write_case(store: CaseStore, shard: CaseShard, repo_id: str) -> CaseManifest:
    """Each file is written atomically, the manifest last: a manifest always describes whole files."""
    case_id, files = shard.identity.case_id, {}
    for column, data in shard.files.items():
        name = file_name(column, data)
        store.write_bytes(store.case_path(case_id, name), data)
        files[column] = CaseFile(name, sha256_hex(data), len(data))
    manifest = _manifest(shard, repo_id, files)
    store.write_text(store.case_path(case_id, MANIFEST), manifest.to_json())
    return manifest


def _manifest(shard: CaseShard, repo_id: str, files: dict[str, CaseFile]) -> CaseManifest:
    identity: ShardIdentity = shard.identity
    return CaseManifest(
        case_id=identity.case_id,
        repo_id=repo_id,
        revision=identity.revision,
        shard_path=identity.path,
        shard_oid=identity.oid,
        shard_size=identity.size,
        files=files,
        original_names=shard.names,
        shape=shard.grid.shape,
        voxel_size_mm=shard.grid.voxel_size_mm,
        lesion_ml=shard.lesion_ml,
        nonfinite_voxels=shard.nonfinite,
        replica=shard.replica,
    )


class MissingInputsError(FileNotFoundError):
    def __init__(self, case_id: str, store: CaseStore, what: str = "no input files"):
        super().__init__(f"case {case_id}: {what} in {store.case_path(case_id)}; materialise case_inputs for it first")


def read_case_images(
    store: CaseStore, case_id: str, columns: tuple[str, ...] = IMAGE_COLUMNS
) -> dict[str, nib.Nifti1Image]:
    """The case's stored images by column (``dwi``, ``adc``, ``lesion_mask``; only ``columns``)."""
    manifest = read_manifest(store, case_id)
    if manifest is None:
        raise MissingInputsError(case_id, store)
    absent = [c for c in columns if c not in manifest.files]
    if absent:
        raise MissingInputsError(case_id, store, f"no {', '.join(absent)} among the stored inputs ({', '.join(manifest.files)})")
    return {
        column: nifti.decode(store.read_bytes(store.case_path(case_id, manifest.files[column].name)), f"case {case_id} {column}")
        for column in columns
    }


def check_stored_inputs(store: CaseStore, case_id: str) -> nifti.Grid:
    """The stored files are the bytes the manifest names (sha256) and share one 3-D grid."""
    manifest = read_manifest(store, case_id)
    if manifest is None:
        raise MissingInputsError(case_id, store)
    grids = {}
    for column, f in manifest.files.items():
        data = store.read_bytes(store.case_path(case_id, f.name))
        if sha256_hex(data) != f.sha256:
            raise ValueError(f"case {case_id}: {f.name} changed since it was fetched (sha256 differs from source.json)")
        grids[column] = nifti.admit_header(data, f"case {case_id} {column}").grid
    return nifti.check_same_grids(grids)
