"""Notes of why a case failed at a step, kept beside its files so that reports can say why.

``cases/<case id>/failures/<step>.json`` exists while the step's last attempt for the case
failed; a success removes it. A note says whether the fault was transient, so that a retry of
the same run does not try again what cannot succeed.
"""

from __future__ import annotations

import json
import logging
import time

from .store import CaseStore

log = logging.getLogger(__name__)


def _path(store: CaseStore, case_id: str, step: str):
    return store.case_path(case_id, f"failures/{step}.json")


def record_failure(store: CaseStore, case_id: str, step: str, cause: str, run_id: str | None = None, transient: bool = False) -> None:
    """Write the note; a store that cannot take it (read-only, full) is logged, never raised:
    the failure being recorded is what the user must see."""
    note = {"case_id": case_id, "step": step, "cause": cause, "run_id": run_id, "transient": transient,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        store.write_text(_path(store, case_id, step), json.dumps(note, indent=2))
    except OSError as exc:
        log.warning("case %s: could not note the failure of %s in %s (%s)", case_id, step, store, exc)


def read_failure(store: CaseStore, case_id: str, step: str) -> dict | None:
    path = _path(store, case_id, step)
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def clear_failure(store: CaseStore, case_id: str, step: str) -> None:
    path = _path(store, case_id, step)
    if path.exists():
        path.unlink()


def read_failures(store: CaseStore, case_ids: list[str]) -> dict[str, str]:
    """case id -> "step: cause" for every case with a failure note (the first step that failed)."""
    found = {}
    for case_id in case_ids:
        folder = store.case_path(case_id, "failures")
        if not folder.exists():
            continue
        notes = [json.loads(p.read_text()) for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".json")]
        if notes:
            found[case_id] = "; ".join(f"{n['step']}: {n['cause']}" for n in notes)
    return found
