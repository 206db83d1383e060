"""Read one GitHub issue over the REST API, bounded in time and never raising for network trouble.

``IssueWatcher.fetch(ref, etag)`` answers with exactly one of:

- ``IssueState``: the issue as observed (200),
- ``Unchanged``: the issue did not change since ``etag`` (304; free against the rate limit),
- ``FetchFailure``: why nothing could be observed (network, timeout, rate limit, 5xx, bad body).

The token comes from ``GITHUB_TOKEN`` only; it is sent as ``Authorization: Bearer`` and is never
logged, repr'd or put in an outcome. Redirects are not followed, so the token never goes to a host
other than the configured API.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from typing import Any, Literal

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_TIMEOUT_S = 5.0
USER_AGENT = "isles-pipeline-upstream-watcher"
# An issue document is a few KB; anything far larger is not the answer we asked for.
MAX_BODY_BYTES = 2 * 1024 * 1024

FailureKind = Literal[
    "network",
    "timeout",
    "rate_limited",
    "server_error",
    "http_error",
    "malformed_json",
    "unexpected_shape",
]


@dataclass(frozen=True)
class IssueRef:
    """Which issue: ``owner/repo#number``."""

    owner: str = "apache"
    repo: str = "arrow"
    number: int = 45214

    @property
    def path(self) -> str:
        """The REST path of the issue, relative to the API root."""
        return f"/repos/{self.owner}/{self.repo}/issues/{self.number}"

    @property
    def label(self) -> str:
        """Human form, e.g. ``apache/arrow#45214``."""
        return f"{self.owner}/{self.repo}#{self.number}"

    @property
    def key(self) -> str:
        """Short stable key for run keys, e.g. ``arrow-45214``."""
        return f"{self.repo}-{self.number}"


@dataclass(frozen=True)
class IssueState:
    """The issue as GitHub reported it."""

    state: str  # "open" or "closed"
    state_reason: str | None
    closed_at: str | None
    updated_at: str
    etag: str | None
    title: str


@dataclass(frozen=True)
class Unchanged:
    """304 Not Modified: the issue is as it was when ``etag`` was taken."""

    etag: str | None


@dataclass(frozen=True)
class FetchFailure:
    """Nothing observed; ``message`` says why (never contains the token)."""

    kind: FailureKind
    message: str
    status: int | None = None
    retry_at: datetime | None = None  # set for rate limits when GitHub says when


FetchOutcome = IssueState | Unchanged | FetchFailure


@dataclass(frozen=True)
class _RawResponse:
    status: int
    headers: Message
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would resend the Authorization header to the new host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


@dataclass(frozen=True)
class IssueWatcher:
    """A small GitHub REST client for one question: what state is this issue in?"""

    api_url: str = DEFAULT_API_URL
    timeout_s: float = DEFAULT_TIMEOUT_S
    token: str | None = field(default=None, repr=False)

    def fetch(self, ref: IssueRef, etag: str | None = None) -> FetchOutcome:
        """GET the issue (conditionally when ``etag`` is given); never raises for I/O trouble."""
        url = self.api_url.rstrip("/") + ref.path
        request = urllib.request.Request(url, headers=self._headers(etag), method="GET")
        log.debug("GET %s (conditional: %s)", url, etag is not None)
        started = time.monotonic()
        outcome = _call_with_deadline(lambda: self._send(request), self.timeout_s)
        if outcome is None:
            return FetchFailure("timeout", f"no answer from {url} within {self.timeout_s:g} s")
        if isinstance(outcome, FetchFailure):
            return outcome
        log.debug("%s answered %d in %.2f s", url, outcome.status, time.monotonic() - started)
        return interpret_response(outcome.status, outcome.headers, outcome.body)

    def _headers(self, etag: str | None) -> dict[str, str]:
        headers = {
            "Accept": "application/vnd.github+json",
            "User-Agent": USER_AGENT,
            "X-GitHub-Api-Version": "2022-11-28",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if etag:
            headers["If-None-Match"] = etag
        return headers

    def _send(self, request: urllib.request.Request) -> _RawResponse | FetchFailure:
        """One request; HTTP error statuses come back as responses, I/O errors as failures."""
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                return _RawResponse(response.status, response.headers, _read_capped(response))
        except urllib.error.HTTPError as error:
            with error:
                return _RawResponse(error.code, error.headers, _read_capped(error))
        except (TimeoutError, urllib.error.URLError) as error:
            reason = getattr(error, "reason", error)  # URLError wraps the socket's error
            if isinstance(reason, TimeoutError):
                # the socket's own timeout, which races the deadline above: the same message
                return FetchFailure("timeout", f"no answer from {request.full_url} within {self.timeout_s:g} s")
            return FetchFailure("network", f"cannot reach {request.full_url}: {reason}")
        except (OSError, ValueError, http.client.HTTPException) as error:  # resets, bad URLs
            return FetchFailure("network", f"{type(error).__name__}: {error}")


def _read_capped(response: Any) -> bytes:
    return response.read(MAX_BODY_BYTES + 1)


def _call_with_deadline(
    call: Callable[[], _RawResponse | FetchFailure], timeout_s: float
) -> _RawResponse | FetchFailure | None:
    """Run ``call`` with a hard wall-clock deadline; ``None`` when it is not done in time.

    Socket timeouts bound each read, not the whole exchange (a slow DNS lookup or a server
    trickling bytes can exceed them), and a sensor tick must never block past its limit. The
    worker is a daemon thread; its socket timeout ends it soon after we stop waiting.
    """
    box: list[_RawResponse | FetchFailure] = []

    def work() -> None:
        try:
            box.append(call())
        except Exception as error:  # a bug or an odd library error: still an answer, not a hang
            box.append(FetchFailure("network", f"{type(error).__name__}: {error}"))

    worker = threading.Thread(target=work, name="github-issue-fetch", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return box[0] if box else None


def interpret_response(status: int, headers: Message, body: bytes) -> FetchOutcome:
    """Turn a status, headers and body from the issues endpoint into an outcome."""
    if status == 304:
        return Unchanged(etag=headers.get("ETag"))
    if status in (403, 429):
        limited = rate_limit_failure(status, headers)
        if limited is not None:
            return limited
    if status >= 500:
        return FetchFailure("server_error", f"GitHub answered {status}", status=status)
    if status != 200:
        return FetchFailure("http_error", _describe_status(status, headers), status=status)
    return parse_issue(body, etag=headers.get("ETag"))


def rate_limit_failure(status: int, headers: Message) -> FetchFailure | None:
    """A ``rate_limited`` failure when the headers say so (Retry-After or Remaining: 0)."""
    now = datetime.now(timezone.utc)
    retry_after = _parse_int(headers.get("Retry-After"))
    remaining = _parse_int(headers.get("X-RateLimit-Remaining"))
    reset = _parse_int(headers.get("X-RateLimit-Reset"))
    if retry_after is not None:
        retry_at: datetime | None = now + timedelta(seconds=retry_after)
    elif remaining == 0 and reset is not None:
        retry_at = datetime.fromtimestamp(reset, timezone.utc)
    elif status == 429 or remaining == 0:
        retry_at = None
    else:
        return None  # a plain 403: permissions, not the rate limit
    until = retry_at.isoformat(timespec="seconds") if retry_at else "an unknown time"
    return FetchFailure(
        "rate_limited", f"rate limited until {until} (HTTP {status})", status=status,
        retry_at=retry_at,
    )


def _describe_status(status: int, headers: Message) -> str:
    if status in (301, 302, 307, 308):
        return f"GitHub answered {status} (issue moved to {headers.get('Location')}); not followed"
    reasons = {401: "unauthorized: check GITHUB_TOKEN", 403: "forbidden", 404: "issue not found"}
    return f"GitHub answered {status} ({reasons.get(status, 'unexpected status')})"


def parse_issue(body: bytes, etag: str | None) -> IssueState | FetchFailure:
    """Parse the issue JSON; a failure names what was wrong with it."""
    if len(body) > MAX_BODY_BYTES:
        return FetchFailure("unexpected_shape", f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return FetchFailure("malformed_json", f"body is not JSON: {error}")
    problem = _shape_problem(document)
    if problem:
        return FetchFailure("unexpected_shape", problem)
    return IssueState(
        state=document["state"],
        state_reason=document.get("state_reason"),
        closed_at=document.get("closed_at"),
        updated_at=document["updated_at"],
        etag=etag,
        title=document.get("title") or "",
    )


def _shape_problem(document: Any) -> str | None:
    """What is wrong with an issue document, or ``None`` when it looks like one."""
    if not isinstance(document, dict):
        return f"expected a JSON object, got {type(document).__name__}"
    if document.get("state") not in ("open", "closed"):
        return f"'state' is {document.get('state')!r}, expected 'open' or 'closed'"
    if not isinstance(document.get("updated_at"), str):
        return "'updated_at' missing or not a string"
    for optional in ("closed_at", "state_reason", "title"):
        if document.get(optional) is not None and not isinstance(document[optional], str):
            return f"'{optional}' is not a string"
    return None


def _parse_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
