"""Retrying transient network faults with exponential backoff and jitter.

``HfFileSystem`` retries range reads and tree listings itself, but not repo-info or paths-info
calls, and not a connection that drops in the middle of a body; this fills those gaps.
Bad data and "not found" are never retried: retrying cannot fix them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """True for faults that a later attempt may not meet: 408/429/5xx, resets, timeouts."""
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None) if exc.response is not None else None
        return status in TRANSIENT_STATUS
    return isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError))


def backoff_delays(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> list[float]:
    """Delays before attempts 2..N: exponential, capped, with +-50 % jitter."""
    rng = rng or random.Random()
    return [min(max_s, base_s * 2**i) * rng.uniform(0.5, 1.5) for i in range(attempts - 1)]


def call_with_retries(
    fn: Callable[[], T],
    what: str,
    attempts: int = 4,
    base_s: float = 0.5,
    max_s: float = 8.0,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Call ``fn``; on a transient fault wait and try again, up to ``attempts`` calls in all."""
    delays = backoff_delays(attempts, base_s, max_s)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            log.warning("%s: transient fault (%s), retry %d of %d", what, type(exc).__name__, attempt, attempts - 1)
            time.sleep(delays[attempt - 1])
    raise AssertionError("unreachable")
