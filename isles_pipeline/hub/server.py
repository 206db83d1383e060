"""A small, real HTTP server that answers like the Hugging Face Hub, from local folders.

It implements the routes that ``HfFileSystem`` and ``hf_hub_download`` use (see
``shared/reference/hub-api.md``): repo info, tree listings, paths-info, and ``resolve`` with exact
``Range`` handling. File bodies are streamed from disk in chunks, so shards of hundreds of MB cost
no memory. Every request is counted (:attr:`HubServer.stats`), and faults (error statuses,
connection resets, delays) can be injected in-process (:attr:`HubServer.faults`) or over HTTP
(``/_admin/...``, see :class:`AdminClient`) to test how clients ride them out.

A repo may be served as the Hub serves a private or a gated one, to a single bearer token
(:meth:`HubServer.add_repo`); ``/api/whoami-v2`` knows that token, so ``hf auth login`` works
against the server. Public repos, the default, need no token.

Stdlib only. It binds to loopback addresses only: public repos have no authentication.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from isles_pipeline.catalogue import DEFAULT_REPO_ID

from .repo import (
    DEFAULT_REVISION,
    DIGEST_JOURNAL,
    SHARED_DIGESTS,
    DigestCache,
    LocalRepo,
    RepoSnapshot,
)
from .traffic import (
    Fault,
    FaultPlan,
    LiveRecord,
    ServerStats,
    StatsSnapshot,
)

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# The only request bodies the Hub routes take are paths-info forms of a few paths.
MAX_BODY_BYTES = 1 << 20
# huggingface_hub 2.x asks for this registry once a day (when telemetry is on) and reads it as a
# mapping: an empty registry in that shape detects no agent.
AGENT_HARNESSES: dict[str, Any] = {"standardEnvVars": [], "harnesses": {}}


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
    ("agent_harnesses", re.compile(r"^/api/agent-harnesses$")),
    ("whoami", re.compile(r"^/api/whoami-v2$")),
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
        if "repo" not in groups:
            return Route(kind=kind, path=raw_path)
        repo_type = "dataset" if groups.get("plural") == "datasets" else "model"
        return Route(
            kind=kind,
            repo_type=repo_type,
            repo_id=unquote(groups["repo"]),
            revision=unquote(groups.get("rev") or DEFAULT_REVISION),
            path=unquote(groups.get("path") or "").strip("/"),
        )
    return Route(kind="other", path=raw_path)


# Methods each Hub route answers; every other route is GET only.
_ALLOWED_METHODS: dict[str, tuple[str, ...]] = {"paths_info": ("POST",), "resolve": ("GET", "HEAD")}


def _flag(values: dict[str, list[str]], name: str) -> bool:
    return values.get(name, ["false"])[-1].lower() in ("1", "true")


ACCESS_MODES = ("public", "private", "gated")
# What the Hub says to a bearer token it does not know (huggingface_hub then does not take it for
# a missing repo).
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class Access:
    """Who may read a repo. private: only ``token`` sees it at all (others are told it does not
    exist, as the Hub does); gated: its listing is public, its files need ``token``."""

    mode: str = "public"
    token: str = field(default="", repr=False)

    def allows(self, bearer: str | None) -> bool:
        return self.mode == "public" or (bearer is not None and hmac.compare_digest(bearer.encode(), self.token.encode()))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class HubApp:
    """The Hub's answers for a set of local repos, independent of the transport."""

    def __init__(self, digests: DigestCache) -> None:
        self._repos: dict[tuple[str, str], LocalRepo] = {}
        self._access: dict[tuple[str, str], Access] = {}
        self._digests = digests

    def add_repo(self, repo_type: str, repo_id: str, folder: Path, access: Access = Access()) -> LocalRepo:
        repo = LocalRepo(repo_type, repo_id, folder, self._digests)
        self._repos[(repo_type, repo_id)] = repo
        self._access[(repo_type, repo_id)] = access
        return repo

    def answer(
        self, method: str, route: Route, query: str, body: bytes, range_header: str | None, authorization: str | None = None
    ) -> Response:
        if route.kind == "other":
            return json_response(404, {"error": f"no route {method} {route.path}"})
        if route.kind == "agent_harnesses":
            return json_response(200, AGENT_HARNESSES)
        if route.kind == "whoami":
            return self._whoami(bearer_token(authorization))
        if method not in _ALLOWED_METHODS.get(route.kind, ("GET",)):
            return json_response(405, {"error": f"{method} not allowed here"})
        repo = self._repos.get((route.repo_type, route.repo_id))  # type: ignore[arg-type]
        if repo is None:
            return hub_error("RepoNotFound", f"Repository {route.repo_id} not found")
        access = self._access[(route.repo_type, route.repo_id)]  # type: ignore[index]
        denied = self._denied(access, route, bearer_token(authorization))
        if denied is not None:
            return denied
        snapshot = repo.snapshot()
        if not snapshot.accepts_revision(route.revision):
            return hub_error("RevisionNotFound", f"Invalid rev id: {route.revision}")
        if route.kind == "repo_info":
            gated = "manual" if access.mode == "gated" else False
            return json_response(200, {**snapshot.repo_info(), "private": access.mode == "private", "gated": gated})
        if route.kind == "tree":
            return self._tree(snapshot, route, parse_qs(query))
        if route.kind == "paths_info":
            return self._paths_info(snapshot, body)
        return self._resolve(snapshot, route, range_header)

    def _known_token(self, bearer: str) -> bool:
        return any(a.mode != "public" and a.allows(bearer) for a in self._access.values())

    def _denied(self, access: Access, route: Route, bearer: str | None) -> Response | None:
        """The Hub's refusal of this request, or None when it may go on."""
        if access.allows(bearer) or (access.mode == "gated" and route.kind != "resolve"):
            return None
        if bearer is not None and not self._known_token(bearer):
            return json_response(401, {"error": INVALID_CREDENTIALS}, {"X-Error-Message": INVALID_CREDENTIALS})
        if access.mode == "gated":
            message = f"Access to {route.repo_id} is restricted: you must have access to it and be authenticated"
            return json_response(401 if bearer is None else 403, {"error": message}, {"X-Error-Code": "GatedRepo", "X-Error-Message": message})
        return json_response(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})

    def _whoami(self, bearer: str | None) -> Response:
        """``/api/whoami-v2``: a user for a token some repo accepts (``hf auth login`` asks)."""
        if bearer is None or not self._known_token(bearer):
            return json_response(401, {"error": INVALID_CREDENTIALS}, {"X-Error-Message": INVALID_CREDENTIALS})
        token = {"displayName": "local-hub", "role": "read"}
        return json_response(200, {"type": "user", "name": "local-user", "auth": {"type": "access_token", "accessToken": token}})

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

    def handle(self) -> None:
        """Answer requests until the connection closes. A connection the client drops, or that a
        "reset" fault drops on purpose, ends quietly; any other error still reaches the server's
        ``handle_error``, which prints its traceback."""
        try:
            super().handle()
        except (TimeoutError, BrokenPipeError, ConnectionResetError) as error:
            logger.debug("%s: connection dropped (%s)", self.address_string(), error)

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

    def _body_length(self) -> int | None:
        """The declared body length, or None when it is not a number in 0..MAX_BODY_BYTES."""
        text = self.headers.get("Content-Length") or "0"
        return int(text) if text.isdigit() and int(text) <= MAX_BODY_BYTES else None

    def _handle(self, method: str) -> None:
        hub = self.server.hub
        raw_path, _, query = self.path.partition("?")
        length = self._body_length()
        if length is None:  # never read it: the connection closes after the answer
            self.close_connection = True
            self._send(json_response(413, {"error": f"request bodies are limited to {MAX_BODY_BYTES} bytes"}), method)
            return
        body = self.rfile.read(length) if length else b""
        if raw_path.startswith("/_admin/") and hub.faults.enabled:  # the control plane: never faulted, never counted
            self._send(hub._admin_answer(method, raw_path, body), method)
            return
        route = parse_route(raw_path)
        range_header = self.headers.get("Range")
        fault = hub.faults.take(route.kind, raw_path)
        response = self._answer(method, route, query, body, range_header, fault)
        authenticated = bearer_token(self.headers.get("Authorization")) is not None
        record = hub._stats.begin(method, route.kind, self.path, range_header, response.status, authenticated)
        cut = fault.cut_point(response.body_length) if fault is not None and fault.kind == "reset" else None
        self._send(response, method, record, cut)

    def _answer(
        self, method: str, route: Route, query: str, body: bytes, range_header: str | None, fault: Fault | None
    ) -> Response:
        """The app's answer, after a "delay" fault's sleep, or a "status" fault's error in its place."""
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            return _status_fault_response(fault)
        return self.server.hub.app.answer(method, route, query, body, range_header, self.headers.get("Authorization"))

    def _send(self, response: Response, method: str, record: LiveRecord | None = None, cut: int | None = None) -> None:
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


def _bind_host(host: str) -> str:
    """The IPv4 address to bind (``localhost`` is 127.0.0.1)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--host must be an IPv4 address such as 127.0.0.1 or 0.0.0.0, not {host!r}") from None
    if address.version != 4:
        raise ValueError(f"--host must be an IPv4 address, not {host!r}")
    return host


def _check_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not a TCP port (0-65535; 0 picks a free one)")
    return port


class HubServer:
    """A Hub-compatible HTTP server for local folders; use as a context manager or start()/stop().

    Public repos have no authentication: it binds 127.0.0.1 unless told otherwise. Fault injection
    (the in-process :attr:`faults` plan and the ``/_admin`` routes) is off unless ``faults=True``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, digests: DigestCache = SHARED_DIGESTS, faults: bool = False):
        self.host = _bind_host(host)
        self.port = _check_port(port)
        self.app = HubApp(digests)
        self.faults = FaultPlan(enabled=faults)
        self._stats = ServerStats()
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def add_repo(self, repo_type: str, repo_id: str, folder: Path, access: str = "public", token: str | None = None) -> HubServer:
        """Serve ``folder`` as the repo ``repo_id`` ("dataset" or "model"); returns self.

        ``access``: "public" (anyone), "private" or "gated" (only requests bearing ``token``; see
        :class:`Access`)."""
        if access not in ACCESS_MODES:
            raise ValueError(f"access must be one of {', '.join(ACCESS_MODES)}, not {access!r}")
        if (access == "public") != (token is None):
            raise ValueError("a private or gated repo needs a token; a public one takes none")
        self.app.add_repo(repo_type, repo_id, Path(folder), Access(access, token or ""))
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

    def _bind(self) -> _HubHTTPServer:
        try:
            httpd = _HubHTTPServer((self.host, self.port), _HubRequestHandler)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc} (is another server on port {self.port}? choose --port)") from None
        httpd.hub = self
        self._httpd = httpd
        return httpd

    def start(self) -> HubServer:
        """Bind (port 0 picks a free port) and serve from a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        httpd = self._bind()
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"hub-server-{self.url}", daemon=True
        )
        self._thread.start()
        return self

    def serve(self, on_listening: Callable[[HubServer], None] = lambda server: None) -> None:
        """Bind and serve in the calling thread until Ctrl-C, then stop: ``http.server``'s own pattern.

        The main thread never waits on a join that a signal could interrupt; ``on_listening`` runs
        inside the Ctrl-C guard, once the port is bound (to print the URL)."""
        httpd = self._bind()
        try:
            on_listening(self)
            httpd.serve_forever(poll_interval=0.1)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting, close open keep-alive connections and release the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self._thread is not None:
            httpd.shutdown()  # waits for the serving thread's loop to end (serve() has left its loop already)
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
            self._thread = None

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


def serve_forever(
    root: Path,
    repo_id: str = DEFAULT_REPO_ID,
    repo_type: str = "dataset",
    host: str = "127.0.0.1",
    port: int = 8000,
    models: dict[str, Path] | None = None,
    faults: bool = False,
) -> None:
    """Serve until Ctrl-C, then shut down cleanly; prints ``Serving <repo> from <root> at <url>``.

    Digests are kept in ``<root>/.cache/`` so that a restart does not hash every shard again."""

    def announce(server: HubServer) -> None:
        print(f"Serving {repo_id} from {root} at {server.url}", flush=True)
        if not ipaddress.ip_address(server.host).is_loopback:
            print(f"warning: no authentication: anyone who can reach {server.url} can read these repos", flush=True)
        if faults:
            print("fault injection is on: POST /_admin/faults", flush=True)

    server = HubServer(host=host, port=port, digests=DigestCache(journal=Path(root) / DIGEST_JOURNAL), faults=faults)
    server.add_repo(repo_type, repo_id, Path(root))
    for model_id, folder in (models or {}).items():
        server.add_repo("model", model_id, Path(folder))
    server.serve(on_listening=announce)
