"""The model registry in Dagster: ``model_registry_sensor`` keeps the ``models`` partitions in
step with ``models.yaml``, and ``model_weights`` reports each model's fingerprint (its weights by
content, and its settings) as the data version of the model's partition, so that a changed model
shows its predictions and metrics as out of date."""

import dagster as dg

from .partitions import model_partitions
from .resources import ModelRegistryResource


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds every model of the registry (ISLES_MODELS / models.yaml) to the `models` partitions, so that "
    "the case x model grid shows a newly registered model; a model removed from the registry keeps its results.",
)
def model_registry_sensor(context: dg.SensorEvaluationContext, models: ModelRegistryResource):
    names = models.registry().names
    new = [n for n in names if not context.instance.has_dynamic_partition(model_partitions.name, n)]
    if not new:
        return dg.SkipReason(f"{len(names)} model(s) registered, none new")
    return dg.SensorResult(dynamic_partitions_requests=[model_partitions.build_add_request(new)])


def observe_model_weights(context, models: ModelRegistryResource) -> dg.DataVersionsByPartition:
    """The fingerprint of every registered model that has a partition (``weights.fingerprint``)."""
    from ..weights import fingerprint

    registry, known = models.registry(), set(context.instance.get_dynamic_partitions(model_partitions.name))
    versions = {}
    for spec in (m for m in registry.models if m.name in known):
        try:
            found = fingerprint(spec, models.endpoint)
        except Exception as exc:  # one model's missing weights do not hide the others' changes
            context.log.error(f"model {spec.name}: no fingerprint, its version is kept: {type(exc).__name__}: {exc}")
            continue
        context.log.info(f"model {spec.name}: fingerprint {found.value} ({found.weights or 'no weights'})")
        versions[spec.name] = found.value
    return dg.DataVersionsByPartition(versions)


def model_weights_asset(automation_condition: dg.AutomationCondition | None = None) -> dg.SourceAsset:
    """``model_weights``: observed, not materialised; the automation condition comes with the
    definitions (it holds the nightly cron)."""
    return dg.observable_source_asset(
        name="model_weights",
        partitions_def=model_partitions,
        group_name="models",
        automation_condition=automation_condition,
        description="Each registered model's fingerprint: sha256 of the weight files it loads (or the commit of its Hub "
        "repo) and its settings. A new fingerprint marks the model's case_prediction and case_metrics out of date.",
    )(observe_model_weights)
