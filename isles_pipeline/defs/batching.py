"""Running a partitioned asset over the cases of a run: one case, or a batch of several.

A backfill run carries several cases (see ``partitions.CASES_PER_RUN``) so that torch and the
model load once per run. Each case gets its own metadata. When a case of a batch fails, the
cases that succeeded are still recorded as materialised, the step then fails naming every
failed case and its cause, and Dagster marks exactly those partitions as failed; the backfill
schedule retries failed cases alone, so that one bad case cannot hold its batch back twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from ..failures import clear_failure, record_failure
from ..inputs import MissingInputsError
from ..nifti import NiftiError
from ..source import CaseDataError
from ..store import CaseStore

# Problems in the data itself: retrying the step cannot fix them.
BAD_DATA_ERRORS = (CaseDataError, NiftiError, MissingInputsError)


@dataclass
class CaseOutcome:
    """What one case's work produced for its partition."""

    metadata: Mapping[str, Any]
    data_version: str | None = None
    check_results: list[dg.AssetCheckResult] = field(default_factory=list)


def describe(case_id: str, exc: BaseException) -> str:
    text = str(exc)
    return text if case_id in text else f"case {case_id}: {type(exc).__name__}: {text}"


def run_cases(context: dg.AssetExecutionContext, store: CaseStore, work: Callable[[str], CaseOutcome]) -> dg.MaterializeResult:
    """Apply ``work`` to every case of the run and report the results the Dagster way.

    A case's failure is also noted in the store (``failures.py``) so that the report can say why.
    """
    step = context.asset_key.to_user_string()

    def tracked(case_id: str) -> CaseOutcome:
        try:
            outcome = work(case_id)
        except Exception as exc:
            record_failure(store, case_id, step, describe(case_id, exc), context.run.run_id)
            raise
        clear_failure(store, case_id, step)
        return outcome

    keys = context.partition_keys
    if len(keys) == 1:
        return _run_one(keys[0], tracked)
    return _run_batch(context, keys, tracked)


def _run_one(case_id: str, work: Callable[[str], CaseOutcome]) -> dg.MaterializeResult:
    try:
        outcome = work(case_id)
    except BAD_DATA_ERRORS as exc:
        raise dg.Failure(description=describe(case_id, exc), allow_retries=False) from exc
    return dg.MaterializeResult(
        metadata=dict(outcome.metadata),
        data_version=dg.DataVersion(outcome.data_version) if outcome.data_version else None,
        check_results=outcome.check_results or None,
    )


def _run_batch(context: dg.AssetExecutionContext, keys: list[str], work: Callable[[str], CaseOutcome]):
    succeeded: dict[str, CaseOutcome] = {}
    failures: dict[str, str] = {}
    for index, case_id in enumerate(keys, start=1):
        context.log.info(f"case {index} of {len(keys)}: {case_id}")
        try:
            succeeded[case_id] = work(case_id)
        except Exception as exc:  # one case never stops the others
            failures[case_id] = describe(case_id, exc)
            context.log.error(failures[case_id])
    if not failures:
        # One materialisation per case, each with its own metadata; an empty result (not None,
        # which would go to an IO manager) records them.
        for case_id, outcome in succeeded.items():
            context.add_asset_metadata(dict(outcome.metadata), partition_key=case_id)
        return dg.MaterializeResult()
    for case_id, outcome in succeeded.items():
        context.log_event(dg.AssetMaterialization(asset_key=context.asset_key, partition=case_id, metadata=dict(outcome.metadata)))
    raise dg.Failure(
        description=f"{len(failures)} of {len(keys)} cases failed: " + "; ".join(failures.values()),
        metadata={"failed_cases": dg.MetadataValue.json(failures)},
        allow_retries=False,
    )
