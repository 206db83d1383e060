"""The leaderboard: several models over the same cases, summarised, ranked and compared.

Plain pandas / scipy / matplotlib (no Dagster). Which cases count: a model has *done* a case when
it scored it or failed on it. Models are ranked on the cases every model has done (the *ranked*
cases); a case a model failed takes the worst rank there (the challenge rule for a missing
prediction); a case a model has not run yet is not a loss but coverage, shown beside the rank
(scored / expected). A model that has done no case yet is listed unranked. Ranking "rank then
aggregate" (BIAS, as the ISLES challenges do): per ranked case and metric the models are ranked
(better value = lower rank, ties share the mean rank), ranks are averaged over cases, then over
metrics; the lowest mean rank wins. Per model: n, mean, median and IQR of each metric over the
ranked cases it scored, failures by case. Paired comparison with the winner: Wilcoxon signed-rank
p-value and the median paired difference (model - best) on the ranked cases every model scored.
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

from .catalogue import case_ranges
from .formatting import fmt_metric
from .provenance import SYNTHETIC_NOTE, describe_data, is_synthetic
from .store import CaseStore

# metric -> True when higher is better
RANKED_METRICS = {"dice": True, "avd_ml": False, "lesion_count_diff": False, "f1_isles22": True, "f1_isles24": True}
STATS = ("mean", "median", "q1", "q3", "iqr")
WORST_PER_MODEL = 3


@dataclass(frozen=True, eq=False)
class Leaderboard:
    models: list[str]
    table: pd.DataFrame  # one row per model, best first; unranked models (no case done) last
    cases: pd.DataFrame  # one row per (case, model) scored: the inputs
    paired: pd.DataFrame  # model, metric, n, median_diff, p_value: each model against the best
    failures: dict[str, dict[str, str]]  # model -> case id -> cause
    worst: dict[str, list[str]] = field(default_factory=dict)  # model -> lowest-Dice case ids
    complete_cases: list[str] = field(default_factory=list)  # ranked cases every ranked model scored
    ranked_cases: list[str] = field(default_factory=list)  # cases every ranked model scored or failed
    expected_cases: list[str] = field(default_factory=list)  # cases any model should have: coverage's denominator

    @property
    def best(self) -> str | None:
        return next(iter(self.ranked_models), None)  # the table is best first

    @property
    def ranked_models(self) -> list[str]:
        return [str(m) for m in self.table.index[self.table.mean_rank.notna()]] if len(self.table) else []

    @property
    def ranked_records(self) -> pd.DataFrame:
        """The scored records the table and the plots are computed on: the ranked cases."""
        return self.cases[self.cases.case_id.isin(self.ranked_cases) & self.cases.model.isin(self.ranked_models)]


def build_leaderboard(records: Sequence[Mapping], models: Sequence[str], failures: Mapping[str, Mapping[str, str]] | None = None,
                      expected: Iterable[str] = ()) -> Leaderboard:
    """``records``: metrics records (``case_id``, ``model`` and the metrics) of the scored
    (case, model) pairs; ``failures``: model -> case id -> cause of those that failed;
    ``expected``: the cases every model should have (coverage), beyond those some model has done."""
    models = list(models)
    cases = pd.DataFrame([dict(r) for r in records if r.get("model") in models])
    if cases.empty:
        cases = pd.DataFrame(columns=["case_id", "model", *RANKED_METRICS, "gt_ml", "pred_ml"])
    cases = cases.sort_values(["model", "case_id"]).reset_index(drop=True)
    scored = {m: set(cases.case_id[cases.model == m]) for m in models}
    # a case scored after an earlier failure is scored
    failures = {m: {c: str(cause) for c, cause in (failures or {}).get(m, {}).items() if c not in scored[m]} for m in models}
    done = {m: scored[m] | set(failures[m]) for m in models}
    ranked_models = [m for m in models if done[m]]
    ranked = sorted(set.intersection(*(done[m] for m in ranked_models))) if ranked_models else []
    expected_cases = sorted(set(expected).union(*done.values()))
    on_ranked = cases[cases.case_id.isin(ranked)]
    table = _summary(on_ranked, models, scored, failures, len(expected_cases)).join(mean_ranks(on_ranked, ranked_models, ranked))
    table = table.sort_values(["mean_rank", "scored"], ascending=[True, False], kind="stable", na_position="last")
    table.insert(0, "position", range(1, len(table) + 1))
    complete = [c for c in ranked if all(c in scored[m] for m in ranked_models)]
    best = next((str(m) for m in table.index if m in ranked_models), None)
    paired = paired_comparison(cases, best, ranked_models, complete) if best else pd.DataFrame()
    worst = {m: cases[cases.model == m].sort_values(["dice", "case_id"]).case_id.head(WORST_PER_MODEL).tolist() for m in models}
    return Leaderboard(models, table, cases, paired, failures, worst, complete, ranked, expected_cases)


def _summary(on_ranked: pd.DataFrame, models: list[str], scored: Mapping[str, set], failures: Mapping[str, Mapping[str, str]],
             expected: int) -> pd.DataFrame:
    """Per model: the statistics over the ranked cases it scored (``n`` of them), and its coverage
    of the expected cases: scored, failed, not run."""
    rows = {}
    for model in models:
        mine = on_ranked[on_ranked.model == model]
        failed = len(failures.get(model, {}))
        row: dict[str, float | int | str] = {"n": len(mine), "scored": len(scored[model]), "failed": failed,
                                             "not_run": expected - len(scored[model]) - failed, "expected": expected,
                                             "data_revisions": _distinct(mine, "data_revision"),
                                             "fingerprints": _distinct(mine, "fingerprint")}
        for metric in RANKED_METRICS:
            values = mine[metric].astype(float).to_numpy() if len(mine) else np.array([])
            q1, median, q3 = np.percentile(values, (25, 50, 75)) if values.size else (math.nan,) * 3
            row |= {f"{metric}_mean": float(values.mean()) if values.size else math.nan, f"{metric}_median": float(median),
                    f"{metric}_q1": float(q1), f"{metric}_q3": float(q3), f"{metric}_iqr": float(q3 - q1)}
        rows[model] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def _distinct(cases: pd.DataFrame, column: str) -> str:
    """What the rows were computed from: the distinct values of ``column``, comma-separated."""
    return ", ".join(sorted({str(v) for v in cases[column].dropna() if str(v)})) if column in cases else ""


def mean_ranks(cases: pd.DataFrame, models: list[str], case_ids: list[str]) -> pd.DataFrame:
    """Per model of ``models``: the mean rank of each metric over ``case_ids``, where a model
    without a value (it failed the case) ranks last, and ``mean_rank`` (their mean over metrics)."""
    out = pd.DataFrame(index=pd.Index(models, name="model"))
    for metric, higher_better in RANKED_METRICS.items():
        grid = cases.pivot_table(index="case_id", columns="model", values=metric, aggfunc="first") if len(cases) else pd.DataFrame()
        grid = grid.reindex(index=case_ids, columns=models).astype(float)
        worst = -np.inf if higher_better else np.inf  # a failed case ranks last
        ranked = grid.fillna(worst).rank(axis=1, ascending=not higher_better, method="average")
        out[f"rank_{metric}"] = ranked.mean(axis=0) if case_ids else math.nan
    out["mean_rank"] = out[[f"rank_{m}" for m in RANKED_METRICS]].mean(axis=1)
    return out


def paired_comparison(cases: pd.DataFrame, best: str, models: list[str], complete: list[str]) -> pd.DataFrame:
    """Each other model against ``best`` on the ``complete`` cases: median of (model - best) and
    the two-sided Wilcoxon signed-rank p-value (NaN when every difference is zero or no case)."""
    rows = []
    on = cases[cases.case_id.isin(complete)]
    for model in models:
        if model == best:
            continue
        for metric in RANKED_METRICS:
            grid = on.pivot_table(index="case_id", columns="model", values=metric, aggfunc="first")
            diff = (grid[model] - grid[best]).to_numpy(dtype=float) if len(grid) else np.array([])
            rows.append({"model": model, "against": best, "metric": metric, "n": int(diff.size),
                         "median_diff": float(np.median(diff)) if diff.size else math.nan, "p_value": _wilcoxon_p(diff)})
    return pd.DataFrame(rows, columns=["model", "against", "metric", "n", "median_diff", "p_value"])


def _wilcoxon_p(diff: np.ndarray) -> float:
    from scipy.stats import wilcoxon  # half a second to import: not in every run process of the code location

    if diff.size == 0 or not np.any(diff != 0):
        return math.nan
    return float(wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


# --- people's views -------------------------------------------------------------------------

SHOWN = ("dice", "avd_ml", "lesion_count_diff", "f1_isles22", "f1_isles24")


def display_rows(board: Leaderboard) -> list[dict]:
    """The table as a person reads it: mean rank, coverage, median (IQR) per metric."""
    rows = []
    for model, row in board.table.iterrows():
        shown = {"position": int(row.position), "model": str(model),
                 "mean_rank": round(float(row.mean_rank), 3) if row.mean_rank == row.mean_rank else None,
                 "scored / expected": f"{int(row.scored)} / {int(row.expected)}", "failed": int(row.failed),
                 "not run": int(row.not_run), "n": int(row.n)}
        for metric in SHOWN:
            shown[f"{metric} mean"] = fmt_metric(metric, row[f"{metric}_mean"])
            shown[f"{metric} median [IQR]"] = f"{fmt_metric(metric, row[f'{metric}_median'])} [{fmt_metric(metric, row[f'{metric}_iqr'])}]"
        # what the row was computed from (the full revisions are in the table's data_revisions)
        shown |= {"data revision": ", ".join(r[:12] for r in str(row.data_revisions).split(", ") if r),
                  "fingerprints": str(row.fingerprints)}
        rows.append(shown)
    return rows


def title(board: Leaderboard) -> str:
    """Which models, ranked on which cases, of how many expected."""
    ranked = len(board.ranked_cases)
    return (f"{len(board.models)} models, ranked on the {ranked} case{'s' * (ranked != 1)} every model has scored or failed "
            f"({case_ranges(board.ranked_cases)}), of {len(board.expected_cases)} expected")


def to_markdown(board: Leaderboard, overlay_links: Mapping[tuple[str, str], str] | None = None, plots: Mapping[str, str] | None = None) -> str:
    """Ranking table, where its numbers come from, paired comparison, failures, worst cases (linked
    to their overlays), plots (``plots``: title -> image URL, e.g. a data: URI)."""
    rows = display_rows(board)
    lines = [f"## Leaderboard: {title(board)}", ""]
    if is_synthetic(board.cases):
        lines += [SYNTHETIC_NOTE, ""]
    if rows:
        headers = list(rows[0])
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join("-" if r[h] is None else str(r[h]) for h in headers) + " |" for r in rows]
    unranked = [m for m in board.models if m not in board.ranked_models]
    if unranked:
        lines += ["", "Not ranked yet (no case scored or failed): " + ", ".join(f"`{m}`" for m in unranked) + "."]
    lines += ["", "Ranking: on the ranked cases, per case and metric (Dice, AVD, lesion count difference, F1 ISLES'22, "
              "F1 ISLES'24) the models are ranked, ties share the mean rank, a case a model failed ranks last; ranks are "
              "averaged over cases, then metrics. A case a model has not run yet is not ranked: it counts in `scored / "
              "expected` and `not run`, not against the model. Means, medians and IQRs are over the `n` ranked cases each "
              "model scored.", ""]
    sources = describe_data(board.ranked_records, what="(case, model) results")
    if sources:
        lines += ["Data of the ranked results:", "", *(f"- {line}" for line in sources), ""]
    if len(board.paired):
        lines += [f"### Paired with the best model ({board.best}), on the {len(board.complete_cases)} ranked cases every model scored", "",
                  "| model | metric | n | median difference (model - best) | Wilcoxon p |", "|---|---|---|---|---|"]
        for r in board.paired.itertuples():
            p = "-" if r.p_value != r.p_value else f"{r.p_value:.3g}"
            lines.append(f"| {r.model} | {r.metric} | {r.n} | {fmt_metric(r.metric, r.median_diff)} | {p} |")
        lines.append("")
    failed = {m: f for m, f in board.failures.items() if f}
    lines += ["### Failures", ""]
    lines += [f"- **{m}**: {len(f)} case(s): " + "; ".join(f"`{c}` ({cause})" for c, cause in sorted(f.items())) for m, f in failed.items()] or ["None."]
    lines += ["", "### Worst cases (lowest Dice) per model, of every case it scored", ""]
    for model, case_ids in board.worst.items():
        dice = board.cases[board.cases.model == model].set_index("case_id").dice
        items = [_link(f"{c} (Dice {fmt_metric('dice', dice[c])})", (overlay_links or {}).get((c, model))) for c in case_ids]
        lines.append(f"- **{model}**: " + (", ".join(items) if items else "no scored case"))
    for name, url in (plots or {}).items():
        lines += ["", f"### {name}", "", f"![{name}]({url})"]
    return "\n".join(lines) + "\n"


def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


# --- files ----------------------------------------------------------------------------------

def write_leaderboard(board: Leaderboard, store: CaseStore, area: str = "leaderboard") -> dict[str, object]:
    """leaderboard.csv/.parquet (full precision), paired.csv/.parquet, cases.parquet, the plots;
    every file written atomically through the store."""
    folder, paths = store.path(area), {}
    table = board.table.reset_index()
    for name, frame in (("leaderboard", table), ("paired", board.paired), ("cases", board.cases)):
        for suffix, data in (("csv", frame.to_csv(index=False).encode()), ("parquet", _parquet(frame))):
            if name == "cases" and suffix == "csv":
                continue
            paths[f"{name}.{suffix}"] = folder / f"{name}.{suffix}"
            store.write_bytes(paths[f"{name}.{suffix}"], data)
    for name, png in plot_pngs(board).items():
        paths[name] = folder / name
        store.write_bytes(paths[name], png)
    return paths


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def plot_pngs(board: Leaderboard) -> dict[str, bytes]:
    return {"dice_by_model.png": _png(dice_figure(board)), "bland_altman.png": _png(bland_altman_figure(board))}


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def dice_figure(board: Leaderboard) -> Figure:
    """Per-model Dice: a box (median, IQR, 1.5 IQR whiskers) with every case as a jittered dot."""
    order = list(board.table.index)
    figure = Figure(figsize=(max(4.0, 1.6 * len(order) + 1), 4.0))
    axes = figure.add_subplot()
    on = board.ranked_records
    values = [on[on.model == m].dice.astype(float).to_numpy() for m in order]
    positions = np.arange(1, len(order) + 1)
    if any(v.size for v in values):
        axes.boxplot([v if v.size else [np.nan] for v in values], positions=positions, widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0)
    for x, v in zip(positions, values, strict=True):
        axes.scatter(x + jitter.uniform(-0.15, 0.15, v.size), v, s=14, alpha=0.7, zorder=3)
    axes.set_xticks(positions, [f"{m}\n(n={v.size})" for m, v in zip(order, values, strict=True)])
    axes.set_ylim(-0.02, 1.02)
    axes.set_ylabel("Dice")
    axes.set_title(f"Dice, {len(board.ranked_cases)} ranked cases (best-ranked first)", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def bland_altman_figure(board: Leaderboard) -> Figure:
    """Predicted vs true lesion volume: difference (pred - true, ml) against their mean, per model,
    with each model's bias and 95 % limits of agreement (bias +- 1.96 SD)."""
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    on = board.ranked_records
    for index, model in enumerate(board.table.index):
        mine = on[on.model == model]
        if mine.empty:
            continue
        true, pred = mine.gt_ml.astype(float).to_numpy(), mine.pred_ml.astype(float).to_numpy()
        mean, diff = (true + pred) / 2, pred - true
        colour = f"C{index}"
        bias, spread = float(diff.mean()), float(diff.std(ddof=1)) if diff.size > 1 else 0.0
        axes.scatter(mean, diff, s=18, color=colour, alpha=0.75, label=f"{model}: bias {bias:+.2f} ml, LoA ±{1.96 * spread:.2f}")
        axes.axhline(bias, color=colour, lw=1)
        for limit in (bias - 1.96 * spread, bias + 1.96 * spread):
            axes.axhline(limit, color=colour, lw=0.8, ls="--")
    axes.axhline(0, color="black", lw=0.6)
    axes.set_xlabel("mean of predicted and true volume (ml)")
    axes.set_ylabel("predicted - true volume (ml)")
    axes.set_title(f"Bland-Altman: predicted vs true lesion volume, {len(board.ranked_cases)} ranked cases")
    if on.shape[0]:
        axes.legend(fontsize=7, loc="best")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
