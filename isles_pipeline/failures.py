"""Notes of why a case failed at a step, kept beside its files so that reports can say why.

``cases/<case id>/failures/<step>.json`` exists while the step's last attempt for the case
failed; a success removes it.
"""

from __future__ import annotations

import json
import time

from .store import CaseStore


def _path(store: CaseStore, case_id: str, step: str):
    return store.case_path(case_id, f"failures/{step}.json")


def record_failure(store: CaseStore, case_id: str, step: str, cause: str, run_id: str | None = None) -> None:
    note = {"case_id": case_id, "step": step, "cause": cause, "run_id": run_id, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    store.write_text(_path(store, case_id, step), json.dumps(note, indent=2))


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
