"""Retrying the one Hub call that ``huggingface_hub`` does not retry itself: repo info.

In huggingface_hub 2.4, ``HfApi.repo_info``/``model_info`` make one plain GET; range reads
(``HfFileSystem``), tree listings (``list_repo_tree``, which ``snapshot_download`` calls) and file
downloads (``hf_hub_download``) go through the client's own backoff. Those are never wrapped here:
that would multiply the attempts. Bad data, "not found", 4xx and unresolvable hosts are never
retried: a later attempt cannot fix them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from .hub_client import HubError, classify

T = TypeVar("T")
log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """True for faults that a later attempt may not meet: 408/429/5xx, resets, timeouts."""
    if isinstance(exc, HubError):
        return exc.transient
    known = classify(exc)
    return known is not None and known[1]


def backoff_delays(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> list[float]:
    """Delays before attempts 2..N: exponential, capped, with +-50 % jitter."""
    rng = rng or random.Random()
    return [min(max_s, base_s * 2**i) * rng.uniform(0.5, 1.5) for i in range(attempts - 1)]


def call_with_retries(
    fn: Callable[[], T],
    what: str,
    attempts: int = 4,
    base_s: float = 1.0,
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
