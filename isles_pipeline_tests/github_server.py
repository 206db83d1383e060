"""A fake GitHub REST API on 127.0.0.1 for tests: a real HTTP server in a thread.

It serves ``GET /repos/{owner}/{repo}/issues/{number}`` like GitHub: 200 with an ``ETag``,
304 when ``If-None-Match`` matches the current ETag, 404 for other paths. Failures are scripted
one request at a time with ``enqueue(reply)``: rate limits (403/429), 5xx, garbage bodies, or a
hang longer than the client's timeout. Every request's headers are recorded in ``requests``.

    with FakeGitHub() as github:
        github.set_issue(state="open", updated_at="2025-01-10T00:00:00Z")
        github.enqueue(Reply.server_error(502))
        ... github.url, github.requests[-1].headers["if-none-match"] ...
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class SeenRequest:
    """A request as the server received it; header names lower-cased (HTTP names are not
    case-sensitive, and urllib sends ``If-none-match``)."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    """A scripted answer; ``hang_s`` > 0 sleeps that long (or until the server stops) first."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang_s: float = 0.0

    @classmethod
    def rate_limited_403(cls, reset_epoch: int) -> Reply:
        """GitHub's primary rate limit: 403, remaining 0, reset at ``reset_epoch``."""
        headers = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": str(reset_epoch)}
        return cls(403, headers, _json({"message": "API rate limit exceeded"}))

    @classmethod
    def too_many_requests_429(cls, retry_after_s: int) -> Reply:
        """A secondary rate limit: 429 with ``Retry-After``."""
        return cls(429, {"Retry-After": str(retry_after_s)},
                   _json({"message": "You have exceeded a secondary rate limit"}))

    @classmethod
    def server_error(cls, status: int = 500) -> Reply:
        return cls(status, {}, _json({"message": "Server Error"}))

    @classmethod
    def garbage(cls) -> Reply:
        """200 with a body that is not JSON."""
        return cls(200, {"Content-Type": "application/json"}, b"<html>\x00\xff not json")

    @classmethod
    def json_body(cls, document: Any, status: int = 200) -> Reply:
        """Any JSON document, e.g. one without the fields an issue has."""
        return cls(status, {}, _json(document))

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Answer nothing for ``seconds`` (the server's stop cuts it short)."""
        return cls(200, {}, b"{}", hang_s=seconds)


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


def issue_document(owner: str, repo: str, number: int, **fields: Any) -> dict[str, Any]:
    """An issue shaped like GitHub's REST answer (the fields the watcher reads, and more)."""
    document = {
        "url": f"https://api.github.com/repos/{owner}/{repo}/issues/{number}",
        "number": number,
        "title": "[Python] ParquetFragment.to_batches() hangs forever",
        "state": "open",
        "state_reason": None,
        "closed_at": None,
        "created_at": "2025-01-10T09:00:00Z",
        "updated_at": "2025-01-10T09:00:00Z",
        "labels": [{"name": "Type: bug"}, {"name": "Component: Python"}],
        "milestone": None,
        "comments": 3,
    }
    document.update(fields)
    return document


class FakeGitHub:
    """The server; use as a context manager, or call ``start()``/``stop()``."""

    def __init__(self, owner: str = "apache", repo: str = "arrow", number: int = 45214) -> None:
        self.issue_path = f"/repos/{owner}/{repo}/issues/{number}"
        self._lock = threading.Lock()
        self._scripted: deque[Reply] = deque()
        self._requests: list[SeenRequest] = []
        self._stopping = threading.Event()
        self._issue: dict[str, Any] = issue_document(owner, repo, number)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for it, and tests stop a server each.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:43121`` (what GITHUB_API_URL would be)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[SeenRequest]:
        """Requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def etag(self) -> str:
        """The current issue's ETag (weak, like GitHub's), derived from its content."""
        with self._lock:
            return _etag_of(self._issue)

    def set_issue(self, **fields: Any) -> None:
        """Change issue fields (state, closed_at, updated_at, ...); the ETag follows."""
        with self._lock:
            self._issue.update(fields)

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, before behaving normally."""
        with self._lock:
            self._scripted.extend(replies)

    def start(self) -> FakeGitHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging handlers
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, request: SeenRequest) -> Reply:
        """Record the request and pick the reply: scripted first, then GitHub-like."""
        with self._lock:
            self._requests.append(request)
            if self._scripted:
                return self._scripted.popleft()
            issue, etag = dict(self._issue), _etag_of(self._issue)
        if request.path != self.issue_path:  # only GET is served
            return Reply(404, {}, _json({"message": "Not Found"}))
        headers = {"ETag": etag, "X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "59"}
        if request.headers.get("if-none-match") == etag:
            return Reply(304, headers)
        return Reply(200, {**headers, "Content-Type": "application/json; charset=utf-8"},
                     _json(issue))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                headers = {name.lower(): value for name, value in self.headers.items()}
                reply = fake._answer(SeenRequest("GET", self.path, headers))
                if reply.hang_s and fake._stopping.wait(reply.hang_s):
                    return
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if reply.status != 304:
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (e.g. its timeout), as a real client may

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        return Handler


def _etag_of(issue: dict[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(issue, sort_keys=True).encode()).hexdigest()
    return f'W/"{digest}"'
