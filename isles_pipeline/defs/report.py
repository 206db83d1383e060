"""``metrics_report``: for every registered model, each scored case in one table, a summary, plots,
what failed or is missing, and links to the worst cases' overlays."""

import io

import dagster as dg
import pandas as pd

from ..catalogue import CASE_IDS
from ..formatting import rounded
from ..models import slug_of
from ..report import Report, build_report, write_report
from .leaderboard import collect_results, overlay_links
from .resources import CaseStoreResource, ModelRegistryResource
from .scoring import case_metrics


def _table(frame: pd.DataFrame) -> dg.TableMetadataValue:
    columns = [dg.TableColumn(name, "string" if frame[name].dtype == object else "float") for name in frame.columns]
    records = [
        dg.TableRecord({k: (None if v != v else rounded(k, v)) for k, v in row.items()}) for row in frame.to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


EXPECTED_FROM = "every case with a run of case_inputs, or of this model's chain, in this Dagster instance"


def _sources_section(instance: dg.DagsterInstance, store, registry) -> str:
    """Which models, from which registry; whose case statuses; which results folder."""
    return ("# Where these numbers come from\n\n"
            f"- Models: {', '.join(f'`{n}`' for n in registry.names)} (registry: {registry.source})\n"
            f"- Which cases ran and failed: the Dagster instance in `{instance.root_directory}`\n"
            f"- Results read from: `{store.root}`\n"
            "- Each model's data (dataset repo, commit, synthetic or not) is under its counts below.\n")


def _worst_links(report: Report, model: str, links: dict) -> str:
    items = [f"[{c}]({links[(c, model)]})" if (c, model) in links else c for c in report.worst_cases]
    return f"Overlays of the worst cases: {', '.join(items)}\n" if items else ""


@dg.asset(
    deps=[case_metrics],
    group_name="report",
    kinds={"pandas"},
    description="All materialised case_metrics of every registered model in one table (parquet, CSV), a markdown "
    "summary per model and PNG plots; failed and missing cases are listed, not hidden.",
)
def metrics_report(context: dg.AssetExecutionContext, case_store: CaseStoreResource, models: ModelRegistryResource) -> dg.MaterializeResult:
    store, registry = case_store.store(), models.registry()
    names = registry.names
    results = collect_results(context.instance, store, names)
    sections, frames, metadata, paths = [_sources_section(context.instance, store, registry)], [], {}, {}
    totals = {"scored": 0, "failed": 0, "missing": 0}
    for model in names:
        records = [r for r in results.records if r.get("model") == model]
        report = build_report(records, results.attempted[model], results.failures[model], expected_from=EXPECTED_FROM)
        for name, path in write_report(report, store, area=f"report/{slug_of(model)}").items():
            paths[f"{slug_of(model)}_{name}"] = path
        links = overlay_links(store, [(c, model) for c in report.worst_cases])
        sections.append(f"# Model `{model}`\n\n{report.to_markdown()}\n{_worst_links(report, model, links)}")
        frames.append(report.cases.assign(model=model) if "model" not in report.cases else report.cases)
        totals = {"scored": totals["scored"] + report.scored_count, "failed": totals["failed"] + len(report.failed),
                  "missing": totals["missing"] + len(report.missing)}
        if report.scored_count and "dice" in report.summary.index:
            metadata[f"dice_mean[{model}]"] = dg.MetadataValue.float(rounded("dice", float(report.summary.loc["dice", "mean"])))
    attempted = {c for cases in results.attempted.values() for c in cases}
    markdown = "\n".join(sections) + f"\n{len(CASE_IDS) - len(attempted)} of {len(CASE_IDS)} cases were never run.\n"
    combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for name, data in (("summary.md", markdown.encode()), ("metrics.csv", combined.to_csv(index=False).encode()),
                       ("metrics.parquet", _parquet(combined))):
        paths[name] = store.path("report", name)
        store.write_bytes(paths[name], data)
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "models": dg.MetadataValue.int(len(names)),
            **{key: dg.MetadataValue.int(value) for key, value in totals.items()},
            "never_run": dg.MetadataValue.int(len(CASE_IDS) - len(attempted)),
            "summary": dg.MetadataValue.md(markdown),
            "cases": _table(combined),
            **{name.replace(".", "_"): dg.MetadataValue.path(str(path)) for name, path in paths.items()},
        }
    )


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
