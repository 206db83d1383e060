"""``metrics_report``: every scored case in one table, a summary, plots, and what is missing."""

import json

import dagster as dg

from ..catalogue import CASE_IDS
from ..failures import read_failures
from ..report import Report, build_report, write_report
from .partitions import CASE_CHAIN_KEYS, chain_statuses
from .resources import CaseStoreResource
from .scoring import METRICS_FILE, case_metrics


def _table(report: Report) -> dg.TableMetadataValue:
    frame = report.cases.round(4)
    columns = [dg.TableColumn(name, "string" if frame[name].dtype == object else "float") for name in frame.columns]
    records = [dg.TableRecord({k: (None if v != v else v) for k, v in row.items()}) for row in frame.to_dict("records")]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


@dg.asset(
    deps=[case_metrics],
    group_name="report",
    kinds={"pandas"},
    description="All materialised case_metrics in one table (parquet, CSV), a markdown summary and PNG plots; "
    "failed and missing cases are listed, not hidden.",
)
def metrics_report(context: dg.AssetExecutionContext, case_store: CaseStoreResource) -> dg.MaterializeResult:
    store = case_store.store()
    statuses = chain_statuses(context.instance)
    attempted = [c for c in CASE_IDS if any(statuses[a].get(c) is not None for a in CASE_CHAIN_KEYS)]
    scored = [c for c in attempted if statuses["case_metrics"].get(c) == dg.AssetPartitionStatus.MATERIALIZED]
    records = [json.loads(store.case_path(c, METRICS_FILE).read_text()) for c in scored if store.case_path(c, METRICS_FILE).exists()]
    failures = read_failures(store, [c for c in attempted if c not in scored])
    for asset in CASE_CHAIN_KEYS:
        for case_id, status in statuses[asset].items():
            if status == dg.AssetPartitionStatus.FAILED and case_id not in failures and case_id not in scored:
                failures[case_id] = f"{asset} failed (see its run in the Dagster UI)"
    report = build_report(records, attempted, failures)
    paths = write_report(report, store)
    markdown = report.to_markdown() + f"\n{len(CASE_IDS) - len(attempted)} of {len(CASE_IDS)} cases were never run.\n"
    dice = report.summary.loc["dice"] if "dice" in report.summary.index and report.scored_count else None
    dice_metadata = {"dice_mean": float(dice["mean"]), "dice_median": float(dice["median"])} if dice is not None else {}
    return dg.MaterializeResult(
        metadata={
            **{key: dg.MetadataValue.float(round(value, 4)) for key, value in dice_metadata.items()},
            "scored": dg.MetadataValue.int(report.scored_count),
            "failed": dg.MetadataValue.int(len(report.failed)),
            "missing": dg.MetadataValue.int(len(report.missing)),
            "never_run": dg.MetadataValue.int(len(CASE_IDS) - len(attempted)),
            "summary": dg.MetadataValue.md(markdown),
            "cases": _table(report),
            **{name.replace(".", "_"): dg.MetadataValue.path(str(path)) for name, path in paths.items()},
        }
    )
