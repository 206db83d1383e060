"""What runs by itself, in Dagster's Declarative Automation (``AutomationCondition``):

- **nightly** (the cron of ``ISLES_BACKFILL_CRON``): every case whose inputs are missing (failed
  ones included) is fetched, every registered model is observed (``model_weights``: a model whose
  weights changed gets a new data version), and every (case, model) still missing is run;
- **when a case's inputs land** (or a model's weights change, or a model is registered): its
  (case, model) partitions are segmented and scored (``eager``);
- **when the chain is done**: ``metrics_report`` and the ``leaderboard`` are refreshed once no
  ``case_metrics`` partition is in progress, so that a backfill of many runs refreshes them once.

Three sensors evaluate the conditions: ``nightly_fetch`` (``case_inputs``: off unless
``ISLES_AUTOMATION=on``, so a laptop never starts a 149-case download by itself),
``chain_automation`` (the models' weights and their (case, model) partitions: on, it only runs models
on cases already fetched) and ``report_automation`` (the report and the leaderboard, on). The first
two send requests for several partitions as backfills, which the backfill policy cuts into runs of
8 cases (runs requested directly hold one (case, model) each); the report's one run is requested
directly, every 10 s, so it does not wait for the backfill daemon's 30 s loop
(docs/orchestration.md has the delays, measured).
"""

from __future__ import annotations

import dagster as dg

from ..settings import Settings

AC = dg.AutomationCondition
FETCHED = ("case_inputs",)
CHAIN = ("model_weights", "case_prediction", "case_metrics")
REPORTS = ("metrics_report", "leaderboard")
# How often report_automation evaluates (Dagster's default is 30 s): the report's delay after the last model run.
REPORT_INTERVAL_S = 10


def conditions(cron: str) -> dict[str, dg.AutomationCondition]:
    """The condition of each asset, for the nightly ``cron``."""
    tonight = AC.cron_tick_passed(cron).since_last_handled().with_label(f"nightly ({cron})")
    missing_tonight = (AC.missing() & tonight & ~AC.any_deps_missing() & ~AC.in_progress()).with_label("missing, nightly")
    # segmenter_checkpoint is lineage only (the trained model a network may run), never a wait
    chain = (AC.eager() | missing_tonight).ignore(dg.AssetSelection.assets("segmenter_checkpoint"))
    chain_done = (
        (AC.any_deps_updated() | AC.any_deps_match(AC.execution_failed().newly_true())).since_last_handled()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("after the chain")
    return {
        "case_inputs": (AC.missing() & tonight & ~AC.in_progress()).with_label("missing, nightly"),
        "model_weights": tonight | AC.missing().newly_true().with_label("newly registered"),
        "case_prediction": chain,
        "case_metrics": chain,
        "metrics_report": chain_done,
        "leaderboard": chain_done,
    }


def with_conditions(assets: list, found: dict[str, dg.AutomationCondition]) -> list:
    """The assets, each with its condition in ``found`` (``model_weights`` is built with its own)."""
    return [
        a.with_attributes(automation_condition={k: found[k.to_user_string()] for k in a.keys if k.to_user_string() in found})
        if isinstance(a, dg.AssetsDefinition) and any(k.to_user_string() in found for k in a.keys)
        else a
        for a in assets
    ]


def automation_sensors(settings: Settings) -> list[dg.AutomationConditionSensorDefinition]:
    fetch_status = dg.DefaultSensorStatus.RUNNING if settings.automation else dg.DefaultSensorStatus.STOPPED
    return [
        dg.AutomationConditionSensorDefinition(
            "nightly_fetch",
            target=dg.AssetSelection.assets(*FETCHED),
            default_status=fetch_status,
            description="Nightly: fetch every case whose inputs are missing, 8 per run. Off unless ISLES_AUTOMATION=on.",
        ),
        dg.AutomationConditionSensorDefinition(
            "chain_automation",
            target=dg.AssetSelection.assets(*CHAIN),
            default_status=dg.DefaultSensorStatus.RUNNING,
            description="Run the registered models on cases whose inputs landed (and on every missing (case, model) "
            "nightly), and observe the models' weights nightly and when registered.",
        ),
        dg.AutomationConditionSensorDefinition(
            "report_automation",
            target=dg.AssetSelection.assets(*REPORTS),
            default_status=dg.DefaultSensorStatus.RUNNING,
            emit_backfills=False,
            minimum_interval_seconds=REPORT_INTERVAL_S,
            description="Refresh the report and the leaderboard once, when the chain is done.",
        ),
    ]
