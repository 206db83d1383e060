"""Reading one ISLES'24 case from its parquet shard over ``HfFileSystem``, and nothing more.

Why not ``datasets.load_dataset``: it downloads all 99 GB (out of memory), and its streaming
mode hangs in PyArrow (apache/arrow#45214). Why not ``pq.read_table(path, filesystem=fs)``:
its read-ahead fetches 3-5x the bytes needed. Here the shard is opened with no cache, its
footer is read once, the byte ranges of the needed column chunks are planned from the footer,
adjacent chunks are fetched in one range request each, and pyarrow decodes from those bytes.

The same code reads the real Hub and a local Hub-compatible server: only the endpoint differs.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfApi, HfFileSystem

from . import nifti
from .catalogue import DEFAULT_REPO_ID, IMAGE_COLUMNS, NEEDED_COLUMNS, shard_path
from .hub_client import hub_token_setting
from .retry import call_with_retries

FOOTER_READ = 64 * 1024
# Column chunks separated by less than this are fetched in one request (the gap is wasted bytes).
MERGE_GAP = 64 * 1024


class CaseDataError(ValueError):
    """The shard of a case holds data that cannot be used; retrying will not help."""

    def __init__(self, case_id: str, problem: str):
        super().__init__(f"case {case_id}: {problem}")
        self.case_id = case_id
        self.problem = problem


@dataclass(frozen=True)
class ShardSource:
    """Where shards come from. The token is never part of it: ``HF_TOKEN`` is read by the client."""

    repo_id: str = DEFAULT_REPO_ID
    revision: str = "main"
    endpoint: str | None = None  # None: HF_ENDPOINT, else the public Hub

    @classmethod
    def from_env(cls) -> ShardSource:
        return cls(
            repo_id=os.environ.get("ISLES_HF_REPO", DEFAULT_REPO_ID),
            revision=os.environ.get("ISLES_HF_REVISION", "main"),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )

    @property
    def resolved_endpoint(self) -> str:
        return (self.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


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
    """Range requests made and body bytes received while reading one shard."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    seconds: float = 0.0


@dataclass
class CaseShard:
    """The case's three images as the original file bytes, with what was learnt reading them."""

    identity: ShardIdentity
    files: dict[str, bytes]  # column -> original NIfTI bytes
    names: dict[str, str]  # column -> original file name in the dataset
    grid: nifti.Grid
    mask: np.ndarray
    transfer: Transfer = field(default_factory=Transfer)

    @property
    def lesion_ml(self) -> float:
        return float(self.mask.sum()) * self.grid.voxel_ml


class _PlannedRanges(io.RawIOBase):
    """A read-only file of ``size`` bytes whose planned ranges were fetched up front.

    pyarrow reads through it; a read outside the plan is fetched on demand and counted, so a
    wrong plan shows up as extra requests instead of a failure.
    """

    def __init__(self, size: int, fetch: Callable[[int, int], bytes]):
        super().__init__()
        self._size, self._fetch, self._pos = size, fetch, 0
        self._chunks: list[tuple[int, bytes]] = []

    def add(self, start: int, data: bytes) -> None:
        self._chunks.append((start, data))

    def load(self, start: int, end: int) -> None:
        self.add(start, self._fetch(start, end))

    def read_at(self, start: int, end: int) -> bytes:
        return self._slice(start, end)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._pos + size, self._size)
        if end <= self._pos:
            return b""
        data = self._slice(self._pos, end)
        self._pos = end
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _slice(self, start: int, end: int) -> bytes:
        """Bytes [start, end) from the fetched chunks, fetching what no chunk holds."""
        for chunk_start, data in self._chunks:
            if chunk_start <= start and end <= chunk_start + len(data):
                if (start, end) == (chunk_start, chunk_start + len(data)):
                    return data
                return memoryview(data)[start - chunk_start : end - chunk_start]  # no copy
        pieces, pos = [], start
        for chunk_start, data in sorted(self._chunks, key=lambda chunk: chunk[0]):
            if chunk_start <= pos < chunk_start + len(data):
                piece = data[pos - chunk_start : end - chunk_start]
                pieces.append(piece)
                pos += len(piece)
                if pos == end:
                    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.load(pos, end)
        pieces.append(self._chunks[-1][1])
        return b"".join(pieces)


def plan_ranges(metadata: pq.FileMetaData, columns: tuple[str, ...], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Byte ranges [start, end) covering the given columns' chunks in every row group, with
    chunks closer than ``gap`` merged into one range."""
    spans = []
    for rg in range(metadata.num_row_groups):
        group = metadata.row_group(rg)
        for i in range(group.num_columns):
            chunk = group.column(i)
            if chunk.path_in_schema.split(".")[0] not in columns:
                continue
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                start = min(start, chunk.dictionary_page_offset)
            spans.append((start, start + chunk.total_compressed_size))
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


class ShardReader:
    """Reads cases from a dataset repo of one-case parquet shards."""

    def __init__(self, source: ShardSource | None = None):
        self.source = source or ShardSource.from_env()
        self._fs: HfFileSystem | None = None
        self._commit: str | None = None

    @property
    def fs(self) -> HfFileSystem:
        if self._fs is None:
            self._fs = HfFileSystem(endpoint=self.source.resolved_endpoint, token=hub_token_setting(), skip_instance_cache=True)
        return self._fs

    def commit(self) -> str:
        """The commit sha the configured revision points at (resolved once per reader)."""
        if self._commit is None:
            api, where = HfApi(endpoint=self.source.resolved_endpoint, token=hub_token_setting()), self.source.resolved_endpoint
            try:
                info = call_with_retries(
                    lambda: api.repo_info(self.source.repo_id, repo_type="dataset", revision=self.source.revision),
                    what=f"repo info of {self.source.repo_id}@{self.source.revision}",
                )
            except httpx2.TransportError as exc:
                raise ConnectionError(f"cannot reach the Hub at {where} ({type(exc).__name__}: {exc}); check HF_ENDPOINT") from exc
            self._commit = info.sha or self.source.revision
        return self._commit

    def _fs_path(self, case_id: str) -> str:
        path = shard_path(case_id)  # an unknown case id fails here, before any request
        return f"datasets/{self.source.repo_id}@{self.commit()}/{path}"

    def identify(self, case_id: str) -> ShardIdentity:
        """Size and content id of the case's shard, from the repo listing (no shard bytes read)."""
        path = self._fs_path(case_id)
        try:
            info = call_with_retries(lambda: self.fs.info(path), what=f"case {case_id}: listing {path}")
        except FileNotFoundError as exc:
            raise CaseDataError(case_id, f"shard {shard_path(case_id)} not found in {self.source.repo_id}@{self.source.revision} ({exc})") from exc
        lfs = info.get("lfs") or {}
        oid = lfs.get("sha256") or lfs.get("oid") or info.get("blob_id") or info.get("oid") or ""
        return ShardIdentity(case_id, shard_path(case_id), self.commit(), str(oid), int(info["size"]))

    def read_case(self, case_id: str, identity: ShardIdentity | None = None) -> CaseShard:
        """Fetch and validate the case's DWI, ADC and lesion mask (the other columns are never read)."""
        identity = identity or self.identify(case_id)
        transfer = Transfer()
        started = time.perf_counter()
        with self.fs.open(self._fs_path(case_id), "rb", cache_type="none") as remote:
            table = self._read_columns(case_id, remote, identity.size, transfer)
        transfer.seconds = time.perf_counter() - started
        files, names = _image_bytes(case_id, table)
        del table
        pa.default_memory_pool().release_unused()  # pyarrow's pool keeps freed decode buffers otherwise
        grid, mask = _validate_images(case_id, files)
        return CaseShard(identity, files, names, grid, mask, transfer)

    def _read_columns(self, case_id: str, remote, size: int, transfer: Transfer) -> pa.Table:
        def fetch(start: int, end: int) -> bytes:
            def once() -> bytes:
                remote.seek(start)
                return remote.read(end - start)

            def count_retry(_attempt: int, _exc: BaseException) -> None:
                transfer.retries += 1

            data = call_with_retries(once, what=f"case {case_id}: bytes {start}-{end}", on_retry=count_retry)
            if len(data) != end - start:
                raise CaseDataError(case_id, f"short read: {len(data)} of {end - start} bytes at offset {start}")
            transfer.requests += 1
            transfer.bytes += len(data)
            return data

        planned = _PlannedRanges(size, fetch)
        if size < 12:
            raise CaseDataError(case_id, f"shard is {size} bytes: not a parquet file")
        tail_start = max(0, size - FOOTER_READ)
        planned.load(tail_start, size)
        metadata = _read_footer(case_id, planned, size, tail_start)
        _check_shape(case_id, metadata)
        for start, end in plan_ranges(metadata, NEEDED_COLUMNS):
            if start < tail_start:
                planned.load(start, min(end, tail_start))
        try:
            return pq.ParquetFile(pa.PythonFile(planned, mode="r"), metadata=metadata).read(columns=list(NEEDED_COLUMNS), use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise CaseDataError(case_id, f"cannot decode the shard's columns ({exc})") from exc


def _read_footer(case_id: str, planned: _PlannedRanges, size: int, tail_start: int) -> pq.FileMetaData:
    tail = planned.read_at(tail_start, size)
    if tail[-4:] != b"PAR1":
        raise CaseDataError(case_id, "shard is not a parquet file (no PAR1 magic at the end)")
    (meta_len,) = struct.unpack("<I", tail[-8:-4])
    meta_start = size - 8 - meta_len
    if meta_start < tail_start:  # footer bigger than the first tail read: one more request
        planned.load(meta_start, tail_start)
    try:
        return pq.read_metadata(pa.PythonFile(planned, mode="r"))
    except (pa.ArrowException, OSError) as exc:
        raise CaseDataError(case_id, f"unreadable parquet footer ({exc})") from exc


def _check_shape(case_id: str, metadata: pq.FileMetaData) -> None:
    if metadata.num_rows != 1:
        raise CaseDataError(case_id, f"shard has {metadata.num_rows} rows, expected exactly 1 (one case per shard)")
    present = set(metadata.schema.to_arrow_schema().names)
    missing = [c for c in NEEDED_COLUMNS if c not in present]
    if missing:
        raise CaseDataError(case_id, f"shard lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(present))}")


def _image_bytes(case_id: str, table: pa.Table) -> tuple[dict[str, bytes], dict[str, str]]:
    subject = table.column("subject_id")[0].as_py()
    if subject != case_id:
        raise CaseDataError(case_id, f"shard holds subject_id {subject!r}, expected {case_id!r} (shard order differs from the catalogue)")
    files, names = {}, {}
    for column in IMAGE_COLUMNS:
        cell = table.column(column)[0].as_py()
        if cell is None or cell.get("bytes") is None:
            raise CaseDataError(case_id, f"{column} is missing (null) in the shard")
        files[column] = cell["bytes"]
        names[column] = cell.get("path") or f"{case_id}_{column}.nii.gz"
    return files, names


def _validate_images(case_id: str, files: dict[str, bytes]) -> tuple[nifti.Grid, np.ndarray]:
    """Headers parse, every voxel is there, all three on one 3-D grid; return it and the mask."""
    try:
        headers = {name: nifti.read_header(data, name) for name, data in files.items()}
        grid = nifti.check_same_grids({name: nifti.grid_of_header(h) for name, h in headers.items()})
        for name in ("dwi", "adc"):
            nifti.check_complete(files[name], headers[name], name)
        mask = nifti.as_mask(nifti.decode(files["lesion_mask"], "lesion_mask"))
    except nifti.NiftiError as exc:
        raise CaseDataError(case_id, str(exc)) from exc
    return grid, mask
