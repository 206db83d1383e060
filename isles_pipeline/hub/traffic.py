"""What a local Hub server counts (requests, bytes) and the faults it can be told to inject."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

ROUTE_KINDS: tuple[str, ...] = ("repo_info", "tree", "paths_info", "resolve", "agent_harnesses", "whoami", "other")
FAULT_KINDS: tuple[str, ...] = ("status", "reset", "delay")


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
    authenticated: bool = False  # a Bearer token came with it (the token itself is never kept)


@dataclass
class LiveRecord:
    """A request being answered: ``bytes_sent`` grows as the body goes out."""

    method: str
    route_kind: str
    path: str
    range: str | None
    status: int
    bytes_sent: int = 0
    authenticated: bool = False

    def frozen(self) -> RequestRecord:
        return RequestRecord(**vars(self))


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters at one moment; ``log`` holds the most recent requests, oldest first."""

    total_requests: int
    requests_by_route: dict[str, int]
    range_requests: int
    bytes_sent: int
    log: list[RequestRecord]

    def to_dict(self) -> dict[str, Any]:
        # Not asdict(self): it would deep-copy the whole log only to have it replaced.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
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
            self._log: deque[LiveRecord] = deque(maxlen=self._max_log)

    def begin(
        self, method: str, route_kind: str, path: str, range_header: str | None, status: int, authenticated: bool = False
    ) -> LiveRecord:
        record = LiveRecord(method, route_kind, path, range_header, status, authenticated=authenticated)
        with self._lock:
            self._by_route[route_kind] += 1
            self._range_requests += range_header is not None
            self._log.append(record)
        return record

    def add_bytes(self, record: LiveRecord, count: int) -> None:
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
    """Faults waiting to be applied; each request consumes at most one (the oldest that matches).

    A plan that is not ``enabled`` refuses faults: a served mirror never breaks by accident."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, route_kind: str, kind: str, times: int = 1, **options: Any) -> Fault:
        """Plan a fault; options: status, retry_after, seconds, after_bytes, path_contains."""
        if not self.enabled:
            raise RuntimeError("fault injection is off: start the server with faults=True (hub serve --faults)")
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


