"""The code location: every asset, check, job and sensor, with the resources, executor and
automation that the settings select (``settings.py``; README: ISLES_DATA_DIR, ISLES_MODELS ...).

Nothing is read when this module is imported: ``defs`` (``@dg.definitions``) builds the
definitions when Dagster loads the code location, from the environment as it is then.
"""

import dagster as dg

from .defs.automation import automation_sensors, conditions, with_conditions
from .defs.deployment import case_chain_executor
from .defs.jobs import CASE_CHAIN, case_inputs_job, model_chain_job, observe_model_weights_job, report_job
from .defs.leaderboard import leaderboard
from .defs.models import model_registry_sensor, model_weights_asset
from .defs.report import metrics_report
from .defs.resources import resources_from
from .defs.scoring import inputs_on_one_grid, metrics_in_range
from .defs.training import segmenter_checkpoint, train_segmenter_job
from .defs.upstream import RESOURCE_KEY, UPSTREAM_ASSETS, UPSTREAM_JOBS, GitHubIssueResource, build_arrow_issue_sensor
from .settings import Settings, read_settings


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    """Everything, for these settings (default: read from the environment now)."""
    settings = settings or read_settings()
    automated = conditions(settings.backfill_cron)
    return dg.Definitions(
        assets=[*with_conditions([*CASE_CHAIN, metrics_report, leaderboard], automated),
                model_weights_asset(automated["model_weights"]), segmenter_checkpoint, *UPSTREAM_ASSETS],
        asset_checks=[inputs_on_one_grid, metrics_in_range],
        jobs=[case_inputs_job, model_chain_job, report_job, observe_model_weights_job, train_segmenter_job, *UPSTREAM_JOBS],
        sensors=[model_registry_sensor, *automation_sensors(settings), build_arrow_issue_sensor(running=settings.automation)],
        executor=case_chain_executor(settings),
        resources={**resources_from(settings), RESOURCE_KEY: GitHubIssueResource(api_url=settings.github_api_url)},
    )


@dg.definitions
def defs() -> dg.Definitions:
    """What ``dagster dev -w workspace.yaml`` (and ``dagster api grpc -m``) loads."""
    return build_defs()
