"""What every huggingface_hub client of the pipeline shares: bounded timeouts, and one clear error
for every way the Hub can fail to answer.

The token is the client's own: ``HF_TOKEN``, else the login ``hf auth login`` stored under
``HF_HOME``. No call here passes ``token=``, so its value never goes through the pipeline, nor into
an fs's ``storage_options``, run config, metadata or logs.

Retries are not done here. ``HfFileSystem`` retries its range reads and tree listings itself
(408, 429, 5xx, timeouts, dropped connections: 5 retries over about 23 s); the one call it does
not retry, repo info, is retried by :mod:`isles_pipeline.retry`. Whatever is still failing after
that reaches the caller as a :class:`HubError` that names the case, the endpoint and the cause,
and says whether a later attempt may succeed (``transient``): Dagster retries those, and only those.
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import set_client_factory
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._http import default_client_factory

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Tree listings and paths-info carry no timeout of their own in huggingface_hub: a Hub that
# accepts the connection and never answers would hang the case forever.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
_configured = threading.Lock()
_done = False


def _bounded_client() -> httpx2.Client:
    client = default_client_factory()
    client.timeout = httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    return client


def bound_client_timeouts() -> None:
    """Give huggingface_hub's shared HTTP client a default timeout (once per process); calls that
    set their own (range reads: ``HF_HUB_DOWNLOAD_TIMEOUT``) keep it."""
    global _done
    with _configured:
        if not _done:
            set_client_factory(_bounded_client)
            _done = True


class HubError(ConnectionError):
    """The Hub did not give what a case needs. ``transient``: a later attempt may succeed."""

    def __init__(self, problem: str, endpoint: str, transient: bool, case_id: str | None = None):
        where = f"case {case_id}: " if case_id else ""
        advice = "; it may answer later" if transient else ""
        super().__init__(f"{where}{problem} (Hub {endpoint}){advice}")
        self.problem, self.endpoint, self.transient, self.case_id = problem, endpoint, transient, case_id


def check_resolvable(endpoint: str, case_id: str | None = None) -> None:
    """Fail at once, not after the client's retries, when the endpoint's host has no address."""
    parts = urlsplit(endpoint)
    if not parts.hostname:
        raise HubError(f"HF_ENDPOINT {endpoint!r} is not a URL", endpoint, transient=False, case_id=case_id)
    try:
        socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        problem = f"cannot resolve the host {parts.hostname!r} ({exc.strerror}); check HF_ENDPOINT"
        raise HubError(problem, endpoint, transient=False, case_id=case_id) from None


def classify(exc: BaseException, target: str = "the repo") -> tuple[str, bool] | None:
    """(what went wrong, transient) for a Hub client error about ``target`` (``repo@revision``);
    None for anything else."""
    if isinstance(exc, GatedRepoError):
        return f"{target}: gated: ask for access on the Hub, then set HF_TOKEN or run `hf auth login`", False
    if isinstance(exc, RepositoryNotFoundError):
        return f"{target}: repo not found (or private: set HF_TOKEN or run `hf auth login`)", False
    if isinstance(exc, RevisionNotFoundError):
        return f"{target}: revision not found", False
    if isinstance(exc, EntryNotFoundError):
        return f"{target}: file not found", False
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return f"access denied (HTTP {status}): set HF_TOKEN, or run `hf auth login`, with a token that can read the repo", False
        return f"HTTP {status} from the Hub", status in TRANSIENT_STATUS
    if isinstance(exc, httpx2.TimeoutException):
        return f"no answer in time ({type(exc).__name__})", True
    if isinstance(exc, httpx2.ConnectError):
        return f"cannot connect ({_reason(exc)})", True
    if isinstance(exc, httpx2.TransportError):
        return f"the connection failed mid-transfer ({type(exc).__name__}: {_reason(exc)})", True
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


@contextmanager
def hub_faults(endpoint: str, case_id: str | None = None, target: str = "the repo"):
    """Turn the client's errors into one :class:`HubError` naming the case and the endpoint."""
    try:
        yield
    except HubError:
        raise
    except Exception as exc:
        known = classify(exc, target)
        if known is None:
            raise
        raise HubError(known[0], endpoint, known[1], case_id) from exc
