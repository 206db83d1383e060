"""Where results come from, for the reports: the data each (case, model) record was scored on
(dataset repo, resolved commit, and whether the shard was a synthetic replica and of which grid),
carried in the metrics record and summarised in a person's words."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pandas as pd

from .inputs import CaseManifest

DATA_FIELDS = ("data_repo", "data_revision", "data_synthetic", "data_grid")
SYNTHETIC_NOTE = ("**Synthetic data.** These cases come from a replica built by `isles-pipeline replica build` "
                  "(phantoms with the real layout, no patient data): the numbers test the pipeline, not a model's "
                  "accuracy on ISLES'24.")


def data_fields(manifest: CaseManifest | None) -> dict[str, object]:
    """The record fields naming the data a case was scored on (all None when its manifest is gone)."""
    if manifest is None:
        return dict.fromkeys(DATA_FIELDS)
    replica = manifest.replica or {}
    return {"data_repo": manifest.repo_id, "data_revision": manifest.revision, "data_synthetic": manifest.replica is not None,
            "data_grid": replica.get("grid")}


def is_synthetic(records: pd.DataFrame) -> bool:
    """Whether any record was scored on a synthetic replica's data."""
    return "data_synthetic" in records and bool(records["data_synthetic"].fillna(False).astype(bool).any())


def describe_data(records: pd.DataFrame, what: str = "scored") -> list[str]:
    """One line per distinct data source of the records, with how many records each: e.g.
    ``hugging-science/isles24-stroke @ 3f0c1a2b9d4e (synthetic replica, grid tiny): 4 scored``."""
    if records.empty or not any(c in records for c in DATA_FIELDS):
        return []  # records that do not carry the data fields at all (not from case_metrics)
    columns = {c: records[c] if c in records else pd.Series([None] * len(records), index=records.index) for c in DATA_FIELDS}
    counts = Counter(tuple(None if pd.isna(v) else v for v in row) for row in zip(*columns.values(), strict=True))
    return [f"{_source(dict(zip(DATA_FIELDS, key, strict=True)))}: {n} {what}" for key, n in counts.items()]


def _source(fields: Mapping[str, object]) -> str:
    if fields["data_repo"] is None:
        return "data not recorded (scored before the data revision was recorded with the metrics)"
    text = f"`{fields['data_repo']}` @ `{str(fields['data_revision'])[:12]}`"
    if fields["data_synthetic"]:
        text += " (synthetic replica" + (f", grid {fields['data_grid']}" if fields["data_grid"] else "") + ")"
    return text
