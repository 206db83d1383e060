"""A small, real HTTP server that answers like the Hugging Face Hub, from local folders.

It implements the routes that ``HfFileSystem`` and ``hf_hub_download`` use (see
``shared/reference/hub-api.md``): repo info, tree listings, paths-info, and ``resolve`` with exact
``Range`` handling. File bodies are streamed from disk in chunks, so shards of hundreds of MB cost
no memory. Every request is counted (:attr:`HubServer.stats`), and faults (error statuses,
connection resets, delays) can be injected in-process (:attr:`HubServer.faults`) or over HTTP
(``/_admin/...``, see :class:`AdminClient`) to test how clients ride them out.

Stdlib only. It binds to loopback addresses only: it has no authentication.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from isles_pipeline.catalogue import DEFAULT_REPO_ID
from isles_pipeline.store import TMP_MARK

logger = logging.getLogger(__name__)

ROUTE_KINDS: tuple[str, ...] = ("repo_info", "tree", "paths_info", "resolve", "other")
FAULT_KINDS: tuple[str, ...] = ("status", "reset", "delay")
REPO_TYPES: tuple[str, ...] = ("dataset", "model")
DEFAULT_REVISION = "main"
LFS_THRESHOLD_BYTES = 1 << 20  # files above 1 MiB (and every parquet file) are served as LFS
CHUNK_BYTES = 1 << 20
# Folders a local snapshot may contain that are not part of the repo.
IGNORED_DIRS = frozenset({".git", ".cache"})


# --------------------------------------------------------------------------------------------
# Hashing: git blob ids and LFS sha256, computed once per file version.


class DigestCache:
    """Digests of files keyed by (path, size, mtime_ns): a 300 MB file is hashed once, not per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: dict[tuple[str, str, int, int], str] = {}
        self._key_locks: dict[tuple[str, str, int, int], threading.Lock] = {}

    def digest(self, algorithm: str, abs_path: str, size: int, mtime_ns: int) -> str:
        """Hex digest of the file: ``algorithm`` is "sha256" or "git-blob" (git's blob sha1)."""
        key = (algorithm, abs_path, size, mtime_ns)
        with self._lock:
            if key in self._digests:
                return self._digests[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent requests for one new file hash it once
            with self._lock:
                if key in self._digests:
                    return self._digests[key]
            value = _hash_file(algorithm, abs_path, size)
            with self._lock:
                self._digests[key] = value
                self._key_locks.pop(key, None)
        return value


def _hash_file(algorithm: str, abs_path: str, size: int) -> str:
    if algorithm == "sha256":
        hasher = hashlib.sha256()
    elif algorithm == "git-blob":
        hasher = hashlib.sha1(b"blob %d\0" % size)
    else:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    with open(abs_path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


SHARED_DIGESTS = DigestCache()


# --------------------------------------------------------------------------------------------
# A repo served from a local folder.


@dataclass(frozen=True)
class FileStat:
    """One file of a repo as found on disk."""

    path: str  # posix path inside the repo
    abs_path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FileEntry:
    """A file with its Hub identifiers: ``blob_oid`` is the git blob id (of the pointer for LFS)."""

    stat: FileStat
    blob_oid: str
    sha256: str | None  # set for LFS files only
    pointer_size: int | None

    @property
    def etag(self) -> str:
        """What ``resolve`` sends as ETag: the sha256 for LFS files, else the git blob id."""
        return self.sha256 or self.blob_oid

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_oid, "size": self.stat.size, "path": self.stat.path}
        if self.sha256 is not None:
            entry["lfs"] = {"oid": self.sha256, "size": self.stat.size, "pointerSize": self.pointer_size}
        return entry


def is_lfs_path(path: str, size: int) -> bool:
    """Whether the Hub would store this file with git-lfs (big files and every parquet file)."""
    return size > LFS_THRESHOLD_BYTES or path.endswith(".parquet")


def scan_folder(folder: Path) -> dict[str, FileStat]:
    """Every file under ``folder`` by repo path, sorted; skips .git/.cache and half-written temp files."""
    found: dict[str, FileStat] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in filenames:
            if TMP_MARK in name:
                continue
            abs_path = os.path.join(dirpath, name)
            try:
                st = os.stat(abs_path)
            except FileNotFoundError:  # removed while we walked
                continue
            rel = Path(abs_path).relative_to(folder).as_posix()
            found[rel] = FileStat(rel, abs_path, st.st_size, st.st_mtime_ns)
    return dict(sorted(found.items()))


def listing_sha1(stats: list[FileStat]) -> str:
    """A deterministic 40-hex id of a set of files, from their paths, sizes and mtimes."""
    hasher = hashlib.sha1()
    for stat in stats:
        hasher.update(f"{stat.path}\0{stat.size}\0{stat.mtime_ns}\n".encode())
    return hasher.hexdigest()


def _iso(mtime_ns: int) -> str:
    moment = datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class RepoSnapshot:
    """A repo's files at one moment; every answer to one request comes from one snapshot."""

    def __init__(self, repo_type: str, repo_id: str, files: dict[str, FileStat], digests: DigestCache):
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.files = files
        self.commit = listing_sha1(list(files.values()))
        self._digests = digests

    def accepts_revision(self, revision: str) -> bool:
        return revision in (DEFAULT_REVISION, self.commit)

    def file_entry(self, path: str) -> FileEntry | None:
        stat = self.files.get(path)
        if stat is None:
            return None
        if not is_lfs_path(path, stat.size):
            return FileEntry(stat, self._digest("git-blob", stat), None, None)
        sha256 = self._digest("sha256", stat)
        pointer = lfs_pointer(sha256, stat.size)
        return FileEntry(stat, git_blob_sha1(pointer), sha256, len(pointer))

    def _digest(self, algorithm: str, stat: FileStat) -> str:
        return self._digests.digest(algorithm, stat.abs_path, stat.size, stat.mtime_ns)

    def is_dir(self, path: str) -> bool:
        return path == "" or any(p.startswith(path + "/") for p in self.files)

    def _files_under(self, directory: str) -> list[FileStat]:
        prefix = directory + "/" if directory else ""
        return [stat for p, stat in self.files.items() if p.startswith(prefix)]

    def dir_entry(self, path: str) -> dict[str, Any]:
        return {"type": "directory", "oid": listing_sha1(self._files_under(path)), "size": 0, "path": path}

    def entry_json(self, path: str, expand: bool) -> dict[str, Any] | None:
        """The tree/paths-info entry of a file or directory, or None if neither exists."""
        entry = self.file_entry(path)
        if entry is not None:
            result = entry.to_json()
        elif path and self.is_dir(path):
            result = self.dir_entry(path)
        else:
            return None
        if expand:
            result["lastCommit"] = self._last_commit(path)
        return result

    def _last_commit(self, path: str) -> dict[str, str]:
        stats = [self.files[path]] if path in self.files else self._files_under(path)
        newest = max((s.mtime_ns for s in stats), default=0)
        return {"id": self.commit, "title": "local snapshot", "date": _iso(newest)}

    def tree(self, directory: str, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        """Entries under ``directory``: its children, or every descendant when ``recursive``."""
        prefix = directory + "/" if directory else ""
        paths: set[str] = set()
        for path in self.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            paths.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        directories = sorted(p for p in paths if p not in self.files)
        files = sorted(p for p in paths if p in self.files)
        return [self.entry_json(p, expand) for p in directories + files]  # type: ignore[misc]

    def repo_info(self) -> dict[str, Any]:
        newest = max((s.mtime_ns for s in self.files.values()), default=0)
        return {
            "id": self.repo_id,
            "sha": self.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "lastModified": _iso(newest),
            "siblings": [{"rfilename": path} for path in self.files],
        }


class LocalRepo:
    """A Hub repo whose files are the files under a local folder (rescanned on every request)."""

    def __init__(self, repo_type: str, repo_id: str, folder: Path, digests: DigestCache):
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, not {repo_type!r}")
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
            raise ValueError(f"invalid repo id {repo_id!r}: expected 'org/name' or 'name'")
        if not Path(folder).is_dir():
            raise ValueError(f"repo folder {folder} is not a directory")
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.folder = Path(folder).resolve()
        self._digests = digests

    def snapshot(self) -> RepoSnapshot:
        return RepoSnapshot(self.repo_type, self.repo_id, scan_folder(self.folder), self._digests)


# --------------------------------------------------------------------------------------------
# Byte ranges.


class RangeNotSatisfiable(ValueError):
    """A Range header this server cannot answer exactly (it then says 416, never the whole file)."""


def parse_byte_range(header: str, size: int) -> tuple[int, int]:
    """(first, last) inclusive offsets of ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` over ``size`` bytes.

    Multiple ranges and malformed headers are refused rather than ignored: a client that gets the
    whole file in place of its range fails later and obscurely.
    """
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or match[1] == match[2] == "":
        raise RangeNotSatisfiable(header)
    if match[1] == "":  # suffix range: the last n bytes
        suffix_length = int(match[2])
        if suffix_length == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix_length), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable(header)
    return first, min(last, size - 1)


# --------------------------------------------------------------------------------------------
# Accounting.


class RequestRecord(NamedTuple):
    """One answered request: ``bytes_sent`` counts body bytes only."""

    method: str
    route_kind: str
    path: str
    range: str | None
    status: int
    bytes_sent: int


@dataclass
class _LiveRecord:
    method: str
    route_kind: str
    path: str
    range: str | None
    status: int
    bytes_sent: int = 0

    def frozen(self) -> RequestRecord:
        return RequestRecord(self.method, self.route_kind, self.path, self.range, self.status, self.bytes_sent)


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters at one moment; ``log`` holds the most recent requests, oldest first."""

    total_requests: int
    requests_by_route: dict[str, int]
    range_requests: int
    bytes_sent: int
    log: list[RequestRecord]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["log"] = [record._asdict() for record in self.log]
        return data


class ServerStats:
    """Thread-safe request counters. Bytes are counted before they are written, so a client that
    has received a body always finds it counted."""

    def __init__(self, max_log: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._max_log = max_log
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._by_route = dict.fromkeys(ROUTE_KINDS, 0)
            self._range_requests = 0
            self._bytes_sent = 0
            self._log: deque[_LiveRecord] = deque(maxlen=self._max_log)

    def begin(self, method: str, route_kind: str, path: str, range_header: str | None, status: int) -> _LiveRecord:
        record = _LiveRecord(method, route_kind, path, range_header, status)
        with self._lock:
            self._by_route[route_kind] += 1
            self._range_requests += range_header is not None
            self._log.append(record)
        return record

    def add_bytes(self, record: _LiveRecord, count: int) -> None:
        with self._lock:
            record.bytes_sent += count
            self._bytes_sent += count

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                total_requests=sum(self._by_route.values()),
                requests_by_route=dict(self._by_route),
                range_requests=self._range_requests,
                bytes_sent=self._bytes_sent,
                log=[record.frozen() for record in self._log],
            )


# --------------------------------------------------------------------------------------------
# Fault injection.


@dataclass
class Fault:
    """A planned misbehaviour for the next ``times`` matching requests.

    kind "status": answer ``status`` (with ``Retry-After: retry_after`` if set);
    "reset": send the headers and ``after_bytes`` of the body (default half), then reset the connection;
    "delay": sleep ``seconds`` and then answer normally.
    """

    route_kind: str
    kind: str
    times: int = 1
    status: int = 503
    retry_after: int | None = None
    seconds: float = 0.0
    after_bytes: int | None = None
    path_contains: str | None = None  # only requests whose path contains this

    def __post_init__(self) -> None:
        if self.route_kind not in (*ROUTE_KINDS, "any"):
            raise ValueError(f"route_kind must be one of {ROUTE_KINDS} or 'any', not {self.route_kind!r}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if self.times < 1:
            raise ValueError(f"times must be >= 1, not {self.times}")

    def matches(self, route_kind: str, path: str) -> bool:
        kind_ok = self.route_kind in ("any", route_kind)
        return kind_ok and (self.path_contains is None or self.path_contains in path)

    def cut_point(self, body_length: int) -> int:
        """How many body bytes a "reset" fault lets through."""
        wanted = body_length // 2 if self.after_bytes is None else self.after_bytes
        return max(0, min(wanted, body_length))


class FaultPlan:
    """Faults waiting to be applied; each request consumes at most one (the oldest that matches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, route_kind: str, kind: str, times: int = 1, **options: Any) -> Fault:
        """Plan a fault; options: status, retry_after, seconds, after_bytes, path_contains."""
        fault = Fault(route_kind, kind, times, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, route_kind: str, path: str) -> Fault | None:
        """The fault to apply to this request, if any, spending one of its uses."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(route_kind, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        """The faults still planned, with their remaining ``times``."""
        with self._lock:
            return [asdict(fault) for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


# --------------------------------------------------------------------------------------------
# Requests to responses (no sockets here).


@dataclass
class Response:
    """A status, headers and a body that is either ``content`` or ``length`` bytes of a file."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    file_path: str | None = None
    offset: int = 0
    length: int = 0

    @property
    def body_length(self) -> int:
        return self.length if self.file_path is not None else len(self.content)

    def chunks(self, limit: int) -> Iterator[bytes]:
        """The first ``limit`` bytes of the body, in chunks read from disk as they are sent."""
        if self.file_path is None:
            yield self.content[:limit]
            return
        with open(self.file_path, "rb") as f:
            f.seek(self.offset)
            remaining = min(limit, self.length)
            while remaining > 0:
                chunk = f.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    raise OSError(f"{self.file_path} shrank while being sent")
                remaining -= len(chunk)
                yield chunk


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload).encode()
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


def hub_error(code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Hub "not found" answer: 404 with ``X-Error-Code`` (never 5xx, which clients retry)."""
    return json_response(404, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})


@dataclass(frozen=True)
class Route:
    """What a request path asks for; for kind "other", ``path`` is the raw request path."""

    kind: str
    repo_type: str | None = None
    repo_id: str = ""
    revision: str = DEFAULT_REVISION
    path: str = ""


_API = r"^/api/(?P<plural>datasets|models)/(?P<repo>.+?)"
_ROUTE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("repo_info", re.compile(_API + r"/revision/(?P<rev>[^/]+)$")),
    ("tree", re.compile(_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")),
    ("paths_info", re.compile(_API + r"/paths-info/(?P<rev>[^/]+)$")),
    ("repo_info", re.compile(r"^/api/(?P<plural>datasets|models)/(?P<repo>[^/]+(?:/[^/]+)?)$")),
    ("resolve", re.compile(r"^/(?P<plural>datasets)/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
    ("resolve", re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
)


def parse_route(raw_path: str) -> Route:
    """Classify a request path (without query); segments are unquoted after splitting, so a
    revision or path sent as ``refs%2Fpr%2F1`` / ``data%2Fsub`` arrives whole."""
    for kind, pattern in _ROUTE_PATTERNS:
        match = pattern.match(raw_path)
        if match is None:
            continue
        groups = match.groupdict()
        repo_type = "dataset" if groups.get("plural") == "datasets" else "model"
        return Route(
            kind=kind,
            repo_type=repo_type,
            repo_id=unquote(groups["repo"]),
            revision=unquote(groups.get("rev") or DEFAULT_REVISION),
            path=unquote(groups.get("path") or "").strip("/"),
        )
    return Route(kind="other", path=raw_path)


def _flag(values: dict[str, list[str]], name: str) -> bool:
    return values.get(name, ["false"])[-1].lower() in ("1", "true")


class HubApp:
    """The Hub's answers for a set of local repos, independent of the transport."""

    def __init__(self, digests: DigestCache) -> None:
        self._repos: dict[tuple[str, str], LocalRepo] = {}
        self._digests = digests

    def add_repo(self, repo_type: str, repo_id: str, folder: Path) -> LocalRepo:
        repo = LocalRepo(repo_type, repo_id, folder, self._digests)
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def answer(self, method: str, route: Route, query: str, body: bytes, range_header: str | None) -> Response:
        if route.kind == "other":
            return self._other(method, route)
        allowed = {"paths_info": ("POST",), "resolve": ("GET", "HEAD")}.get(route.kind, ("GET",))
        if method not in allowed:
            return json_response(405, {"error": f"{method} not allowed here"})
        repo = self._repos.get((route.repo_type, route.repo_id))  # type: ignore[arg-type]
        if repo is None:
            return hub_error("RepoNotFound", f"Repository {route.repo_id} not found")
        snapshot = repo.snapshot()
        if not snapshot.accepts_revision(route.revision):
            return hub_error("RevisionNotFound", f"Invalid rev id: {route.revision}")
        if route.kind == "repo_info":
            return json_response(200, snapshot.repo_info())
        if route.kind == "tree":
            return self._tree(snapshot, route, parse_qs(query))
        if route.kind == "paths_info":
            return self._paths_info(snapshot, body)
        return self._resolve(snapshot, route, range_header)

    @staticmethod
    def _other(method: str, route: Route) -> Response:
        if (method, route.path) == ("GET", "/api/agent-harnesses"):
            return json_response(200, [])  # asked once per process by huggingface_hub 2.x
        return json_response(404, {"error": f"no route {method} {route.path}"})

    @staticmethod
    def _tree(snapshot: RepoSnapshot, route: Route, params: dict[str, list[str]]) -> Response:
        if route.path in snapshot.files or not snapshot.is_dir(route.path):
            return hub_error("EntryNotFound", f"{route.path} is not a directory of {snapshot.repo_id}")
        entries = snapshot.tree(route.path, _flag(params, "recursive"), _flag(params, "expand"))
        return json_response(200, entries)

    @staticmethod
    def _paths_info(snapshot: RepoSnapshot, body: bytes) -> Response:
        text = body.decode("utf-8", errors="replace")
        if text.lstrip().startswith("{"):
            try:
                payload = json.loads(text)
            except ValueError as error:
                return json_response(400, {"error": f"invalid JSON body: {error}"})
            paths, expand = list(payload.get("paths", [])), bool(payload.get("expand", False))
        else:
            form = parse_qs(text)
            paths, expand = form.get("paths", []), _flag(form, "expand")
        entries = [snapshot.entry_json(p.strip("/"), expand) for p in paths]
        return json_response(200, [e for e in entries if e is not None])

    @staticmethod
    def _resolve(snapshot: RepoSnapshot, route: Route, range_header: str | None) -> Response:
        commit_header = {"X-Repo-Commit": snapshot.commit}
        entry = snapshot.file_entry(route.path)
        if entry is None:
            return hub_error("EntryNotFound", f"{route.path} does not exist in {snapshot.repo_id}", commit_header)
        size = entry.stat.size
        headers = {
            **commit_header,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{entry.etag}"',
            "X-Linked-Etag": f'"{entry.etag}"',
            "X-Linked-Size": str(size),
        }
        if range_header is None:
            return Response(200, headers, file_path=entry.stat.abs_path, offset=0, length=size)
        try:
            first, last = parse_byte_range(range_header, size)
        except RangeNotSatisfiable:
            return Response(416, {**headers, "Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return Response(206, headers, file_path=entry.stat.abs_path, offset=first, length=last - first + 1)


# --------------------------------------------------------------------------------------------
# Transport.


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Reads a request, applies a planned fault, answers from the app and accounts for it."""

    server: _HubHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the real client expects
    timeout = 120  # seconds a stalled connection may hold a thread

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer on a keep-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.hub._track_connection(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._track_connection(self.connection, open_=False)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's signature)
        logger.debug("%s %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        hub = self.server.hub
        raw_path, _, query = self.path.partition("?")
        try:
            body = self._read_body()
            if raw_path.startswith("/_admin/"):  # the control plane: never faulted, never counted
                self._send(hub._admin_answer(method, raw_path, body), method)
                return
            route = parse_route(raw_path)
            range_header = self.headers.get("Range")
            fault = hub.faults.take(route.kind, raw_path)
            response = self._answer(method, route, query, body, fault)
            record = hub._stats.begin(method, route.kind, self.path, range_header, response.status)
            cut = fault.cut_point(response.body_length) if fault is not None and fault.kind == "reset" else None
            self._send(response, method, record, cut)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the client went away; nothing left to tell it

    def _answer(self, method: str, route: Route, query: str, body: bytes, fault: Fault | None) -> Response:
        """The app's answer, after a "delay" fault's sleep, or a "status" fault's error in its place."""
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            return _status_fault_response(fault)
        return self.server.hub.app.answer(method, route, query, body, self.headers.get("Range"))

    def _send(self, response: Response, method: str, record: _LiveRecord | None = None, cut: int | None = None) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(response.body_length))
        self.end_headers()
        if method != "HEAD":
            limit = response.body_length if cut is None else cut
            for chunk in response.chunks(limit):
                if record is not None:
                    self.server.hub._stats.add_bytes(record, len(chunk))
                self.wfile.write(chunk)
        if cut is not None:
            self._reset_connection()

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP reset, as a failing proxy or load balancer would."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


def _status_fault_response(fault: Fault) -> Response:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    return json_response(fault.status, {"error": f"injected fault: HTTP {fault.status}"}, headers)


# --------------------------------------------------------------------------------------------
# The server.


def _loopback_host(host: str) -> str:
    """The IPv4 loopback address to bind: this server has no auth, so nothing else is allowed."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be a loopback IPv4 address, not {host!r}") from None
    if address.version != 4 or not address.is_loopback:
        raise ValueError(f"host must be a loopback IPv4 address (127.x.x.x), not {host!r}")
    return host


class HubServer:
    """A Hub-compatible HTTP server for local folders; use as a context manager or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, digests: DigestCache = SHARED_DIGESTS):
        self.host = _loopback_host(host)
        self.port = port
        self.app = HubApp(digests)
        self.faults = FaultPlan()
        self._stats = ServerStats()
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def add_repo(self, repo_type: str, repo_id: str, folder: Path) -> HubServer:
        """Serve ``folder`` as the repo ``repo_id`` ("dataset" or "model"); returns self."""
        self.app.add_repo(repo_type, repo_id, Path(folder))
        return self

    @property
    def url(self) -> str:
        """The endpoint to hand to clients, e.g. ``http://127.0.0.1:54321``."""
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    @property
    def stats(self) -> StatsSnapshot:
        """A consistent copy of the counters and the request log (admin requests are not counted)."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the counters and empty the request log (planned faults stay)."""
        self._stats.reset()

    def start(self) -> HubServer:
        """Bind (port 0 picks a free port) and serve from a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        httpd = _HubHTTPServer((self.host, self.port), _HubRequestHandler)
        httpd.hub = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"hub-server-{self.url}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close open keep-alive connections and release the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self._connections_lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _track_connection(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _admin_answer(self, method: str, raw_path: str, body: bytes) -> Response:
        """``POST /_admin/faults`` (one JSON fault or a list), ``GET /_admin/faults|stats``, ``POST /_admin/reset``."""
        action = (method, raw_path.rstrip("/"))
        if action == ("GET", "/_admin/stats"):
            return json_response(200, self.stats.to_dict())
        if action == ("GET", "/_admin/faults"):
            return json_response(200, {"faults": self.faults.pending()})
        if action == ("POST", "/_admin/reset"):
            self.faults.clear()
            self.reset_stats()
            return json_response(200, {"reset": True})
        if action == ("POST", "/_admin/faults"):
            return self._admin_add_faults(body)
        return json_response(404, {"error": f"no admin action {method} {raw_path}"})

    def _admin_add_faults(self, body: bytes) -> Response:
        try:
            payload = json.loads(body or b"null")
            specs = payload if isinstance(payload, list) else [payload]
            for spec in specs:
                self.faults.add(**spec)
        except (TypeError, ValueError) as error:  # bad JSON, unknown keys, invalid values
            return json_response(400, {"error": str(error)})
        return json_response(200, {"faults": self.faults.pending()})


class AdminClient:
    """Steers a :class:`HubServer` running in another process through its ``/_admin`` routes."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, action: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.url}/_admin/{action}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def add_fault(self, route_kind: str, kind: str, times: int = 1, **options: Any) -> list[dict[str, Any]]:
        """Plan a fault (same arguments as :meth:`FaultPlan.add`); returns the pending faults."""
        spec = {"route_kind": route_kind, "kind": kind, "times": times, **options}
        return self._call("POST", "faults", spec)["faults"]

    def stats(self) -> dict[str, Any]:
        """The server's :class:`StatsSnapshot` as a dict."""
        return self._call("GET", "stats")

    def reset(self) -> None:
        """Clear the server's faults and stats."""
        self._call("POST", "reset", {})


# --------------------------------------------------------------------------------------------
# Entry points.


def start_in_thread(
    root: Path,
    repo_id: str = DEFAULT_REPO_ID,
    repo_type: str = "dataset",
    host: str = "127.0.0.1",
    port: int = 0,
    models: dict[str, Path] | None = None,
) -> HubServer:
    """Serve ``root`` as ``repo_id`` (plus model repos ``models``: repo id -> folder) in a daemon thread."""
    server = HubServer(host=host, port=port)
    server.add_repo(repo_type, repo_id, Path(root))
    for model_id, folder in (models or {}).items():
        server.add_repo("model", model_id, Path(folder))
    return server.start()


def serve_forever(
    root: Path,
    repo_id: str = DEFAULT_REPO_ID,
    repo_type: str = "dataset",
    host: str = "127.0.0.1",
    port: int = 8000,
    models: dict[str, Path] | None = None,
) -> None:
    """Serve until Ctrl-C, then shut down cleanly; prints ``Serving <repo> from <root> at <url>``."""
    server = start_in_thread(root, repo_id, repo_type, host, port, models)
    print(f"Serving {repo_id} from {root} at {server.url}", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
