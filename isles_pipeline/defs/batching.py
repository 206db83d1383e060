"""Running a partitioned asset over the cases of a run: one case, or a batch of several.

A backfill run carries several cases (see ``partitions.CASES_PER_RUN``) so that torch and the
model load once per run. Each case gets its own metadata, and one case's failure never stops
the others. What happens to a failure depends on its kind, the same in one-case and batch runs:

- a transient fault (:func:`~isles_pipeline.retry.is_transient`: the Hub answered 5xx/429/408,
  timed out or dropped the connection after the client's own retries) makes the step ask
  Dagster for a retry (``RetryRequested``, exponential backoff). The retry runs the step's cases
  again; cases already done are cheap (an unchanged shard is not downloaded again), and cases
  whose data proved bad in an earlier attempt of the run are not tried again;
- anything else (bad data, a missing input, a read-only store, a bug) is final:
  ``Failure(allow_retries=False)`` names every failed case and its cause.

When a batch ends with failures, the cases that succeeded are still recorded as materialised
and Dagster marks exactly the failed partitions as failed; the nightly automation tries the failed
cases again. Every failure's cause goes to the run log, the step's metadata and a note in the
store (``failures.py``), which the report reads.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from ..failures import clear_failure, read_failure, record_failure
from ..retry import is_transient
from ..settings import retry_wait_s
from ..store import CaseStore

# A Hub outage that outlasts the client's own retries (about 23 s) is waited out this way:
# 3 more attempts of the step, 15 s, 30 s, 60 s apart (+-25 %); ISLES_RETRY_WAIT_S sets the first.
TRANSIENT_RETRIES = 3


@dataclass
class CaseOutcome:
    """What one case's work produced for its partition."""

    metadata: Mapping[str, Any]
    data_version: str | None = None
    check_results: list[dg.AssetCheckResult] = field(default_factory=list)


@dataclass(frozen=True)
class CaseFailure:
    cause: str
    transient: bool


def describe(case_id: str, exc: BaseException, model: str | None = None) -> str:
    """One line naming the case (and the model, for a per-model step) and the cause."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    who = f"case {case_id}" if model is None else f"case {case_id}, model {model}"
    if text.startswith(f"{who}: "):
        return text
    if text.startswith(f"case {case_id}: "):
        return f"{who}: {text[len(f'case {case_id}: '):]}"
    return f"{who}: {type(exc).__name__}: {text}"


@dataclass(frozen=True)
class Subject:
    """What a partition key stands for: its case, its model (per-model steps) and the step name
    under which its failure note is kept beside the case's files."""

    case_id: str
    model: str | None
    step: str


def case_subject(step: str) -> Callable[[str], Subject]:
    return lambda key: Subject(key, None, step)


def run_cases(
    context: dg.AssetExecutionContext,
    store: CaseStore,
    work: Callable[[str], CaseOutcome],
    subject: Callable[[str], Subject] | None = None,
) -> dg.MaterializeResult:
    """Apply ``work`` to every partition key of the run and report the results the Dagster way.
    ``subject`` says which case (and model) a key is; by default the key is the case id."""
    run_id = context.run.run_id
    subject = subject or case_subject(context.asset_key.to_user_string())
    keys = context.partition_keys
    succeeded: dict[str, CaseOutcome] = {}
    failures: dict[str, CaseFailure] = {}
    for index, key in enumerate(keys, start=1):
        about = subject(key)
        if len(keys) > 1:
            context.log.info(f"partition {index} of {len(keys)}: {key}")
        earlier = read_failure(store, about.case_id, about.step)
        if context.retry_number and earlier and earlier.get("run_id") == run_id and not earlier.get("transient"):
            failures[key] = CaseFailure(earlier["cause"], transient=False)  # bad data stays bad
            continue
        try:
            succeeded[key] = work(key)
        except Exception as exc:  # one case never stops the others
            failures[key] = CaseFailure(describe(about.case_id, exc, about.model), is_transient(exc))
            record_failure(store, about.case_id, about.step, failures[key].cause, run_id, failures[key].transient)
            context.log.error(failures[key].cause)
            continue
        clear_failure(store, about.case_id, about.step)
    if not failures:
        return _materialised(context, keys, succeeded)
    if any(f.transient for f in failures.values()) and context.retry_number < TRANSIENT_RETRIES:
        wait = retry_wait_s() * 2**context.retry_number * random.uniform(0.75, 1.25)
        context.log.warning(f"{_count(failures, keys)}; transient, retrying the step in {wait:.0f} s "
                            f"(retry {context.retry_number + 1} of {TRANSIENT_RETRIES})")
        raise dg.RetryRequested(max_retries=TRANSIENT_RETRIES, seconds_to_wait=wait)
    for case_id, outcome in succeeded.items():
        context.log_event(dg.AssetMaterialization(asset_key=context.asset_key, partition=case_id, metadata=_with_version(outcome)))
    causes = {case_id: f.cause for case_id, f in failures.items()}
    raise dg.Failure(
        description="; ".join(causes.values()) if len(keys) == 1 else f"{_count(failures, keys)}: " + "; ".join(causes.values()),
        metadata={"failed_cases": dg.MetadataValue.json(causes)},
        allow_retries=False,
    )


def _count(failures: Mapping[str, CaseFailure], keys: list[str]) -> str:
    return f"{len(failures)} of {len(keys)} cases failed" if len(keys) > 1 else f"case {keys[0]} failed"


def _materialised(context: dg.AssetExecutionContext, keys: list[str], succeeded: dict[str, CaseOutcome]) -> dg.MaterializeResult:
    if len(keys) == 1:
        outcome = succeeded[keys[0]]
        return dg.MaterializeResult(
            metadata=dict(outcome.metadata),
            data_version=dg.DataVersion(outcome.data_version) if outcome.data_version else None,
            check_results=outcome.check_results or None,
        )
    # One materialisation per case, each with its own metadata; an empty result (not None,
    # which would go to an IO manager) records them. Dagster gives every partition of a
    # multi-partition step the same data version (a MaterializeResult has no partition), so each
    # case's own version goes into its metadata.
    for case_id, outcome in succeeded.items():
        context.add_asset_metadata(_with_version(outcome), partition_key=case_id)
    return dg.MaterializeResult()


def _with_version(outcome: CaseOutcome) -> dict:
    """The case's metadata with its own data version (what a one-case run records as Dagster's)."""
    return {**outcome.metadata, **({"data_version": outcome.data_version} if outcome.data_version else {})}
