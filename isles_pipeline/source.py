"""Reading one ISLES'24 case from its parquet shard over ``HfFileSystem``, and nothing more.

Why not ``datasets.load_dataset``: it downloads all 99 GB (out of memory), and its streaming
mode hangs in PyArrow (apache/arrow#45214). Here the shard is opened with no read-ahead cache
(``cache_type="none"``: each read is one range request of exactly its size), pyarrow reads the
footer, the needed column chunks are fetched (adjacent ones in one request), and pyarrow decodes
them (``benchmarks/fetch.py`` holds this to the byte and request targets; why not pyarrow's own
pre-buffering: see :func:`_read_columns`).

Before a byte of column data is read the footer is checked: one row, the columns present with
the types of the ``datasets`` NIfTI feature, and a decoded size within ``ISLES_MAX_READ_MB``.
Every read is counted, and the file refuses to read past that budget. Every problem is a
:class:`CaseDataError` (bad data, never retried) or a :class:`~isles_pipeline.hub_client.HubError`
(the Hub; ``transient`` says whether to retry), and both name the case.

The same code reads the real Hub and a local Hub-compatible server: only the endpoint differs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfApi, HfFileSystem

from . import nifti
from .catalogue import DEFAULT_REPO_ID, IMAGE_COLUMNS, REPLICA_KEY, shard_path
from .hub_client import bound_client_timeouts, check_resolvable, classify, hub_faults
from .retry import call_with_retries

MASK_COLUMN = "lesion_mask"
# Column chunks less than this apart are fetched in one request (the gap is read and wasted).
MERGE_GAP = 64 * 1024
MAX_READ_ENV = "ISLES_MAX_READ_MB"
IMAGE_FIELDS = {"bytes": (pa.binary(), pa.large_binary()), "path": (pa.string(), pa.large_string())}


class CaseDataError(ValueError):
    """The shard of a case holds data that cannot be used; retrying will not help."""

    def __init__(self, case_id: str, problem: str):
        super().__init__(f"case {case_id}: {problem}")
        self.case_id = case_id
        self.problem = problem


@dataclass(frozen=True)
class ShardSource:
    """Where shards come from. The token is never part of it: the client finds it (``HF_TOKEN``,
    else the stored ``hf auth login``)."""

    repo_id: str = DEFAULT_REPO_ID
    revision: str = "main"
    endpoint: str | None = None  # None: the public Hub (HF_ENDPOINT is read by settings.py)

    @property
    def resolved_endpoint(self) -> str:
        return (self.endpoint or "https://huggingface.co").rstrip("/")


@dataclass(frozen=True)
class ShardIdentity:
    """What identifies a shard's content: the LFS sha256 (or git blob oid) at a resolved commit."""

    case_id: str
    path: str
    revision: str
    oid: str
    size: int


@dataclass
class Transfer:
    """Range requests made, body bytes received and the client's retries while reading one shard."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    seconds: float = 0.0


@dataclass
class CaseShard:
    """The case's images as the original file bytes, with what was learnt reading them."""

    identity: ShardIdentity
    files: dict[str, bytes]  # column -> original NIfTI bytes
    names: dict[str, str]  # column -> original file name in the dataset
    grid: nifti.Grid
    mask: np.ndarray
    nonfinite: dict[str, int] = field(default_factory=dict)  # volume column -> NaN/inf voxels
    transfer: Transfer = field(default_factory=Transfer)
    replica: dict | None = None  # the footer's REPLICA_KEY: a synthetic shard and what made it; None otherwise

    @property
    def lesion_ml(self) -> float:
        return float(self.mask.sum()) * self.grid.voxel_ml


def max_read_bytes() -> int:
    """``ISLES_MAX_READ_MB`` in bytes, else 512 MB (read by settings.py)."""
    from .settings import input_limits

    return input_limits().max_read_bytes


class ShardReader:
    """Reads cases from a dataset repo of one-case parquet shards."""

    def __init__(self, source: ShardSource | None = None):
        self.source = source or ShardSource()
        self._fs: HfFileSystem | None = None
        self._commit: str | None = None

    @property
    def endpoint(self) -> str:
        return self.source.resolved_endpoint

    @property
    def target(self) -> str:
        return f"dataset {self.source.repo_id}@{self.source.revision}"

    @property
    def fs(self) -> HfFileSystem:
        if self._fs is None:
            bound_client_timeouts()
            self._fs = HfFileSystem(endpoint=self.endpoint, skip_instance_cache=True)
        return self._fs

    def commit(self, case_id: str | None = None) -> str:
        """The commit sha the configured revision points at (resolved once per reader)."""
        if self._commit is None:
            check_resolvable(self.endpoint, case_id)
            bound_client_timeouts()
            api, source = HfApi(endpoint=self.endpoint), self.source
            with hub_faults(self.endpoint, case_id, self.target):
                info = call_with_retries(
                    lambda: api.repo_info(source.repo_id, repo_type="dataset", revision=source.revision),
                    what=f"repo info of {source.repo_id}@{source.revision}",
                )
            self._commit = info.sha or source.revision
        return self._commit

    def _fs_path(self, case_id: str) -> str:
        path = shard_path(case_id)  # an unknown case id fails here, before any request
        return f"datasets/{self.source.repo_id}@{self.commit(case_id)}/{path}"

    def identify(self, case_id: str) -> ShardIdentity:
        """Size and content id of the case's shard, from the repo listing (no shard bytes read)."""
        path = self._fs_path(case_id)
        try:
            with hub_faults(self.endpoint, case_id, self.target):
                info = self.fs.info(path)
        except FileNotFoundError as exc:
            raise CaseDataError(case_id, f"shard {shard_path(case_id)} not found in {self.source.repo_id}@{self.source.revision} ({exc})") from exc
        lfs = info.get("lfs") or {}
        oid = lfs.get("sha256") or lfs.get("oid") or info.get("blob_id") or info.get("oid") or ""
        return ShardIdentity(case_id, shard_path(case_id), self.commit(case_id), str(oid), int(info["size"]))

    def read_case(self, case_id: str, identity: ShardIdentity | None = None, columns: tuple[str, ...] = IMAGE_COLUMNS) -> CaseShard:
        """Fetch and validate the case's images of ``columns`` (the other columns are never read)."""
        identity = identity or self.identify(case_id)
        transfer = Transfer()
        started = time.perf_counter()
        with hub_faults(self.endpoint, case_id, self.target), _ClientRetries() as retries:
            with self.fs.open(self._fs_path(case_id), "rb", cache_type="none") as remote:
                table = _read_columns(case_id, _ShardFile(remote, transfer, max_read_bytes(), case_id), columns)
        transfer.seconds, transfer.retries = time.perf_counter() - started, retries.count
        files, names = _image_bytes(case_id, table, columns)
        replica = replica_note(table.schema.metadata)
        del table
        pa.default_memory_pool().release_unused()  # pyarrow's pool keeps freed decode buffers otherwise
        grid, mask, nonfinite = _validate_images(case_id, files)
        return CaseShard(identity, files, names, grid, mask, nonfinite, transfer, replica)


# What a replica's footer note may say, and of which type; anything else in it is dropped.
REPLICA_FIELDS = {"synthetic": bool, "grid": str, "seed": int}


def replica_note(metadata: dict[bytes, bytes] | None) -> dict | None:
    """The shard's ``REPLICA_KEY`` footer note (allow-listed fields only), or None when it has none.
    A note that is not a JSON object still marks the shard as synthetic."""
    raw = (metadata or {}).get(REPLICA_KEY.encode())
    if raw is None:
        return None
    try:
        note = json.loads(raw)
    except ValueError:
        note = {}
    note = note if isinstance(note, dict) else {}
    kept = {k: v for k, v in note.items() if k in REPLICA_FIELDS and type(v) is REPLICA_FIELDS[k]}
    if isinstance(kept.get("grid"), str):
        kept["grid"] = kept["grid"][:40]
    return {**kept, "synthetic": True}


class _ShardFile:
    """The remote shard as pyarrow sees it: every read happens in the calling thread, is counted
    (one read = one range request), is kept for later reads of the same bytes, and is refused
    once ``budget`` bytes have been read in all."""

    def __init__(self, remote, transfer: Transfer, budget: int, case_id: str):
        self._remote, self._transfer, self._budget, self._case_id = remote, transfer, budget, case_id
        self._pieces: list[tuple[int, bytes]] = []
        self._position = 0
        self.size = remote.size
        self.readers: set[int] = set()  # threads that read: only the caller's (see _read_columns)

    def fetch(self, start: int, end: int) -> None:
        """One range request for bytes [start, end), kept for the reads that follow."""
        if self._transfer.bytes + (end - start) > self._budget:
            raise CaseDataError(self._case_id, f"the shard asks to read {self._transfer.bytes + end - start:,} bytes, "
                                               f"more than the {self._budget:,} allowed ({MAX_READ_ENV})")
        self.readers.add(threading.get_ident())
        self._remote.seek(start)
        data = self._remote.read(end - start)
        self._transfer.requests += 1
        self._transfer.bytes += len(data)
        self._pieces.append((start, data))

    def read(self, size: int = -1) -> bytes:
        start = self._position
        end = self.size if size is None or size < 0 else min(self.size, start + size)
        for piece_start, data in self._pieces:
            if piece_start <= start and end <= piece_start + len(data):
                self._position = end
                return memoryview(data)[start - piece_start : end - piece_start]  # no copy
        self.fetch(start, end)
        self._position = end
        return self._pieces[-1][1]

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = {0: 0, 1: self._position, 2: self.size}[whence] + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False


class _ClientRetries(logging.Handler):
    """Counts the retries huggingface_hub's HTTP layer makes while it is installed."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0
        self._logger = logging.getLogger("huggingface_hub.utils._http")

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(("Retrying in", "Rate limited")):
            self.count += 1

    def __enter__(self) -> _ClientRetries:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self)


@contextmanager
def _arrow_errors(case_id: str, what: str):
    try:
        yield
    except CaseDataError:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        if classify(exc) is not None:  # the Hub failed under pyarrow's read: hub_faults names it
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaseDataError(case_id, f"{what} ({first})") from exc


def _read_columns(case_id: str, remote: _ShardFile, columns: tuple[str, ...]) -> pa.Table:
    """Footer, then the wanted column chunks (adjacent ones in one request), then pyarrow decodes.

    pyarrow's own ``pre_buffer`` would coalesce the same ranges, but it reads on Arrow's IO
    threads, which call back into Python for a Python file: a process that exits soon after
    then aborts now and then ("terminate called without an active exception", the same family
    as apache/arrow#45214; measured in docs/benchmarks.md). Without pre-buffering, pyarrow reads
    each column chunk on its own (8 requests instead of 3). So the chunks are fetched here, in
    this thread, and pyarrow reads them from memory with ``pre_buffer=False``.
    """
    with _arrow_errors(case_id, "shard is not a readable parquet file"):
        metadata = pq.read_metadata(remote)
    wanted = ("subject_id", *columns)
    _check_layout(case_id, metadata, metadata.schema.to_arrow_schema(), wanted)
    for start, end in column_spans(metadata, wanted):
        remote.fetch(start, end)
    with _arrow_errors(case_id, "cannot decode the shard's columns"):
        return pq.ParquetFile(remote, metadata=metadata, pre_buffer=False).read(columns=list(wanted), use_threads=False)


def column_chunk_bytes(metadata: pq.FileMetaData, columns: tuple[str, ...]) -> int:
    """Compressed bytes of the columns' chunks over all row groups: what reading them must move."""
    return sum(
        metadata.row_group(g).column(i).total_compressed_size
        for g in range(metadata.num_row_groups)
        for i in range(metadata.num_columns)
        if metadata.row_group(g).column(i).path_in_schema.split(".")[0] in columns
    )


def column_spans(metadata: pq.FileMetaData, columns: tuple[str, ...], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of the columns' chunks; chunks closer than ``gap`` share one."""
    spans = sorted(
        (chunk.dictionary_page_offset if chunk.has_dictionary_page and chunk.dictionary_page_offset else chunk.data_page_offset,
         chunk.total_compressed_size)
        for g in range(metadata.num_row_groups)
        for chunk in (metadata.row_group(g).column(i) for i in range(metadata.num_columns))
        if chunk.path_in_schema.split(".")[0] in columns
    )
    merged: list[list[int]] = []
    for start, size in spans:
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], start + size)
        else:
            merged.append([start, start + size])
    return [(start, end) for start, end in merged]


def _check_layout(case_id: str, metadata: pq.FileMetaData, schema: pa.Schema, wanted: tuple[str, ...]) -> None:
    """One row, the wanted columns present and typed as the dataset's, a decoded size in budget."""
    if metadata.num_rows != 1:
        raise CaseDataError(case_id, f"shard has {metadata.num_rows} rows, expected exactly 1 (one case per shard)")
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise CaseDataError(case_id, f"shard lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(schema.names))}")
    subject = schema.field("subject_id").type
    if subject not in (pa.string(), pa.large_string()):
        raise CaseDataError(case_id, f"column subject_id is {subject}, expected string")
    for column in wanted[1:]:
        kind = schema.field(column).type
        fields = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)} if pa.types.is_struct(kind) else {}
        if any(fields.get(name) not in types for name, types in IMAGE_FIELDS.items()):
            raise CaseDataError(case_id, f"column {column} is {kind}, expected struct<bytes: binary, path: string> (a NIfTI cell)")
    decoded = sum(
        metadata.row_group(g).column(i).total_uncompressed_size
        for g in range(metadata.num_row_groups)
        for i in range(metadata.num_columns)
        if metadata.row_group(g).column(i).path_in_schema.split(".")[0] in wanted
    )
    if decoded > max_read_bytes():
        raise CaseDataError(case_id, f"the shard's {', '.join(wanted[1:])} decode to {decoded:,} bytes, more than the "
                                     f"{max_read_bytes():,} allowed ({MAX_READ_ENV})")


def _image_bytes(case_id: str, table: pa.Table, columns: tuple[str, ...]) -> tuple[dict[str, bytes], dict[str, str]]:
    subject = table.column("subject_id")[0].as_py()
    if subject != case_id:
        raise CaseDataError(case_id, f"shard holds subject_id {subject!r}, expected {case_id!r} (shard order differs from the catalogue)")
    files, names = {}, {}
    for column in columns:
        cell = table.column(column)[0].as_py()
        if cell is None or cell.get("bytes") is None:
            raise CaseDataError(case_id, f"{column} is missing (null) in the shard")
        files[column] = cell["bytes"]
        names[column] = os.path.basename(cell.get("path") or "") or f"{case_id}_{column}.nii.gz"
    return files, names


def _validate_images(case_id: str, files: dict[str, bytes]) -> tuple[nifti.Grid, np.ndarray, dict[str, int]]:
    """The data contract on the case's images (:func:`nifti.admit_images`), each refusal naming
    the case; return the grid, the mask and each volume's count of non-finite voxels."""
    try:
        admitted = nifti.admit_images(files, MASK_COLUMN)
    except nifti.NiftiError as exc:
        raise CaseDataError(case_id, str(exc)) from exc
    return admitted.grid, admitted.mask, admitted.nonfinite
