"""The batch report: per-case table, summary statistics, worst cases, and what was not scored.

Plain pandas/matplotlib (no Dagster). Every expected case is accounted for: scored, failed (with
its error message) or missing (neither); the markdown lists failed and missing cases by name.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from upath import UPath

from isles_pipeline.catalogue import case_ranges
from isles_pipeline.formatting import decimals_for, fmt_metric
from isles_pipeline.metrics import HEADLINE_KEYS
from isles_pipeline.provenance import SYNTHETIC_NOTE, describe_data, is_synthetic
from isles_pipeline.store import CaseStore

CASE_ID = "case_id"
# Summarised when present: the headline metrics, then the run time of a case.
SUMMARY_METRICS = (*HEADLINE_KEYS, "seconds")
SUMMARY_COLUMNS = ("n", "mean", "std", "median", "q1", "q3", "iqr", "min", "max")
WORST_CASE_COLUMNS = (CASE_ID, "dice", "f1_isles24", "gt_ml", "pred_ml")
DEFAULT_WORST = 5


@dataclass(frozen=True, eq=False)
class Report:
    """A scored batch: ``cases`` has one row per scored case (sorted by case id), ``summary`` one
    row per metric; ``failed`` maps case id -> error message."""

    cases: pd.DataFrame
    summary: pd.DataFrame
    worst_cases: list[str]
    missing: list[str]
    failed: dict[str, str]
    unexpected: list[str] = field(default_factory=list)
    expected_count: int = 0
    expected: list[str] = field(default_factory=list)
    expected_from: str = ""  # which cases were expected, in a person's words (e.g. "cases run in this instance")

    @property
    def scored_count(self) -> int:
        return len(self.cases)

    def to_markdown(self) -> str:
        """A readable summary: counts, summary table, worst cases, failed and missing cases."""
        sections = [
            _counts_section(self),
            _summary_section(self),
            _worst_section(self),
            _cases_section("Failed cases", [f"- `{case}`: {_fmt(message)}" for case, message in self.failed.items()]),
            _cases_section("Missing cases", [f"- `{case}`" for case in self.missing]),
            _cases_section("Scored but not expected", [f"- `{case}`" for case in self.unexpected], none=""),
        ]
        return "\n\n".join(s for s in sections if s) + "\n"


def build_report(
    records: Sequence[Mapping[str, object]],
    expected_case_ids: Iterable[str],
    failures: Mapping[str, str],
    n_worst: int = DEFAULT_WORST,
    expected_from: str = "",
) -> Report:
    """Assemble a :class:`Report` from per-case records (``case_id`` + ``CaseScores.as_dict()``
    numbers + optional extras such as segmenter, device, seconds and the data fields of
    ``provenance.py``) and the expected case ids (``expected_from``: where that list came from)."""
    cases = _cases_frame(records)
    expected = sorted(set(expected_case_ids))
    scored = set(cases[CASE_ID])
    return Report(
        cases=cases,
        summary=summarise(cases),
        worst_cases=worst_by_dice(cases, n_worst),
        missing=[c for c in expected if c not in scored and c not in failures],
        failed={c: str(failures[c]) for c in sorted(failures)},
        unexpected=sorted(scored - set(expected)),
        expected_count=len(expected),
        expected=expected,
        expected_from=expected_from,
    )


def summarise(cases: pd.DataFrame) -> pd.DataFrame:
    """Per metric: n, mean, sample std, median, quartiles (linear interpolation), IQR, min, max."""
    rows = {}
    for metric in (m for m in SUMMARY_METRICS if m in cases.columns):
        values = pd.to_numeric(cases[metric], errors="coerce").dropna().astype(float)
        q1, q3 = values.quantile([0.25, 0.75])  # NaN for no values
        rows[metric] = {
            "n": len(values),
            "mean": values.mean(),
            "std": values.std(ddof=1),
            "median": values.median(),
            "q1": q1,
            "q3": q3,
            "iqr": q3 - q1,
            "min": values.min(),
            "max": values.max(),
        }
    summary = pd.DataFrame.from_dict(rows, orient="index", columns=list(SUMMARY_COLUMNS))
    summary.index.name = "metric"
    return summary.astype({"n": int})


def worst_by_dice(cases: pd.DataFrame, n: int = DEFAULT_WORST) -> list[str]:
    """Case ids of the ``n`` lowest Dice scores (ties by case id)."""
    if cases.empty or "dice" not in cases.columns:
        return []
    ranked = cases.sort_values(["dice", CASE_ID], kind="stable")
    return ranked[CASE_ID].head(n).tolist()


def write_report(report: Report, store: CaseStore, area: str = "report") -> dict[str, UPath]:
    """Write metrics.parquet, metrics.csv, summary.md and the two PNG plots under ``<root>/<area>/``
    (atomically, through the store); return the written paths by file name."""
    contents = {
        "metrics.parquet": _parquet_bytes(report.cases),
        "metrics.csv": report.cases.to_csv(index=False).encode("utf-8"),
        "summary.md": report.to_markdown().encode("utf-8"),
        "dice_per_case.png": _png_bytes(dice_per_case_figure(report.cases)),
        "volume_pred_vs_true.png": _png_bytes(volume_figure(report.cases)),
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = store.path(area, name)
        store.write_bytes(paths[name], data)
    return paths


# --- tables ------------------------------------------------------------------------------------


def _cases_frame(records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """One row per record, columns case_id, the headline metrics, then any extras."""
    for i, record in enumerate(records):
        if CASE_ID not in record:
            raise ValueError(f"record {i} has no {CASE_ID!r}: {dict(record)!r}")
    frame = pd.DataFrame([dict(r) for r in records])
    if frame.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c == CASE_ID else float) for c in (CASE_ID, *HEADLINE_KEYS)})
    duplicated = sorted(set(frame.loc[frame[CASE_ID].duplicated(), CASE_ID]))
    if duplicated:
        raise ValueError(f"cases scored more than once: {duplicated}")
    first = [CASE_ID, *(k for k in HEADLINE_KEYS if k in frame.columns)]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    return frame.sort_values(CASE_ID, kind="stable").reset_index(drop=True)


def _fmt(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{float(value):.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned, 4 significant digits."""
    body = [[_fmt(v) for v in row] for row in rows]
    aligns = ["---:" if body and all(_is_number(row[i]) for row in body) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "n/a"
    return True


# --- markdown sections -------------------------------------------------------------------------


def _counts_section(report: Report) -> str:
    """The counts, and where they come from: which cases were expected (and why), the data scored."""
    scope = f" ({report.expected_from})" if report.expected_from else ""
    lines = ["# Segmentation scores", ""]
    if is_synthetic(report.cases):
        lines += [SYNTHETIC_NOTE, ""]
    lines += [
        f"- Expected cases: {report.expected_count}: {case_ranges(report.expected)}{scope}",
        f"- Scored: {report.scored_count}",
        f"- Failed: {len(report.failed)}",
        f"- Missing (neither scored nor failed): {len(report.missing)}",
    ]
    sources = describe_data(report.cases)
    if len(sources) == 1:
        lines.append(f"- Data: {sources[0]}")
    elif sources:
        lines += [f"- Data: **{len(sources)} different sources** (the scores do not all come from the same data):",
                  *(f"  - {line}" for line in sources)]
    if report.scored_count == 0:
        lines += ["", "**No case is scored.**"]
    return "\n".join(lines)


def _summary_section(report: Report) -> str:
    if report.scored_count == 0:
        return ""
    # a person reads Dice to 3 decimals and volumes to 2 (formatting.py); the files keep all digits
    rows = ([metric, *(_shown(metric, c, row[c]) for c in SUMMARY_COLUMNS)] for metric, row in report.summary.iterrows())
    headers = ["metric", *("IQR" if c == "iqr" else c for c in SUMMARY_COLUMNS)]
    return "## Summary\n\n" + markdown_table(headers, rows)


def _worst_section(report: Report) -> str:
    if not report.worst_cases:
        return ""
    columns = [c for c in WORST_CASE_COLUMNS if c in report.cases.columns]
    worst = report.cases.set_index(CASE_ID).loc[report.worst_cases].reset_index()
    rows = ([_shown(c, c, v) for c, v in zip(columns, row, strict=True)] for row in worst[columns].itertuples(index=False))
    return f"## Worst {len(report.worst_cases)} cases by Dice\n\n" + markdown_table(columns, rows)


def _shown(metric: str, column: str, value: object) -> object:
    """A summary or worst-case cell for a person: fixed decimals for scores and volumes."""
    if column == "n" or decimals_for(metric) is None or not isinstance(value, (int, float, np.number)):
        return value
    return fmt_metric(metric, float(value))


def _cases_section(title: str, items: Sequence[str], none: str = "None.") -> str:
    """``## title (n)`` over the items; with no item, ``## title`` over ``none`` (no section when empty)."""
    if not items:
        return f"## {title}\n\n{none}" if none else ""
    return f"## {title} ({len(items)})\n\n" + "\n".join(items)


# --- files and plots ---------------------------------------------------------------------------


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _no_data(figure: Figure, title: str) -> Figure:
    ax = figure.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, "No case is scored", ha="center", va="center", fontsize=14)
    return figure


def dice_per_case_figure(cases: pd.DataFrame) -> Figure:
    """Horizontal bars of Dice per case, best at the top, with the mean as a dashed line."""
    title = "Dice per case"
    ranked = cases.dropna(subset=["dice"]) if "dice" in cases.columns else cases.iloc[0:0]
    ranked = ranked.sort_values(["dice", CASE_ID], ascending=[True, False], kind="stable")
    # One bar per case id, each about 0.22 inch tall so that the labels stay readable.
    figure = Figure(figsize=(8, max(3.0, 1.5 + 0.22 * len(ranked))), layout="constrained")
    if ranked.empty:
        return _no_data(figure, title)
    ax = figure.subplots()
    ax.barh(ranked[CASE_ID].astype(str), ranked["dice"], color="tab:blue")
    mean = float(ranked["dice"].mean())
    ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean {mean:.3f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.6, len(ranked) - 0.4)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("Dice")
    ax.set_title(f"{title} (n = {len(ranked)})")
    ax.legend(loc="lower right")
    return figure


def volume_figure(cases: pd.DataFrame) -> Figure:
    """Predicted against true lesion volume (ml) with the identity line; symlog axes when the
    volumes span more than two decades (empty masks stay on the plot at 0)."""
    title = "Lesion volume: predicted vs true"
    columns = {"gt_ml", "pred_ml"}
    volumes = cases.dropna(subset=list(columns)) if columns <= set(cases.columns) else cases.iloc[0:0]
    figure = Figure(figsize=(6, 6), layout="constrained")
    if volumes.empty:
        return _no_data(figure, title)
    ax = figure.subplots()
    true_ml, pred_ml = volumes["gt_ml"].to_numpy(float), volumes["pred_ml"].to_numpy(float)
    top = max(float(true_ml.max()), float(pred_ml.max()), 1e-3) * 1.1
    ax.plot([0.0, top], [0.0, top], color="grey", linestyle="--", label="identity")
    ax.scatter(true_ml, pred_ml, color="tab:blue", alpha=0.8, label="case", clip_on=False)
    if _spans_decades(np.concatenate([true_ml, pred_ml])):
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlim(0.0, top)
    ax.set_ylim(0.0, top)
    ax.set_xlabel("true volume (ml)")
    ax.set_ylabel("predicted volume (ml)")
    ax.set_title(f"{title} (n = {len(volumes)})")
    ax.legend(loc="upper left")
    return figure


def _spans_decades(values: np.ndarray, decades: float = 2.0) -> bool:
    positive = values[values > 0]
    return positive.size > 0 and float(positive.max() / positive.min()) > 10**decades
