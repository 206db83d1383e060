"""A model is known by its weights: retrained into the same file, its fingerprint changes, Dagster
reports its predictions and metrics out of date, and the automation recomputes them; a batch run
records each case's own data version."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import dagster as dg
from dagster._utils.test.data_versions import get_stale_status_resolver  # the resolver the UI's staleness uses

from isles_pipeline.catalogue import CASE_IDS
from isles_pipeline.definitions import build_defs
from isles_pipeline.defs.partitions import case_model_key, range_tags
from isles_pipeline.models import ModelSpec, write_registry
from isles_pipeline.settings import Settings
from isles_pipeline.weights import fingerprint
from isles_pipeline_tests.chain import Automation, register_models, save_weights

CASES = list(CASE_IDS[:3])


def statuses(defs: dg.Definitions, instance: dg.DagsterInstance, model: str) -> dict[str, set[str]]:
    """Asset -> the stale statuses of the model's partitions, as the UI computes them."""
    resolver = get_stale_status_resolver(instance, list(defs.assets))
    return {asset: {resolver.get_status(dg.AssetKey(asset), case_model_key(c, model)).value for c in CASES}
            for asset in ("case_prediction", "case_metrics")}


def test_new_weights_at_the_same_path_make_the_models_results_out_of_date(hub, tmp_path):
    weights = tmp_path / "model.ts"
    save_weights(weights, 0.5)
    network, rules = ModelSpec("network:thresh", str(weights)), ModelSpec("rules")
    registry = write_registry(tmp_path / "models.yaml", [rules, network])
    defs = build_defs(Settings(data_dir=str(tmp_path / "data"), hf_endpoint=hub.url, models_file=str(registry), device="cpu"))
    with dg.instance_for_test() as instance:
        register_models(instance, [rules.name, network.name])
        assert defs.resolve_job_def("observe_model_weights").execute_in_process(instance=instance).success
        assert defs.resolve_job_def("case_inputs_job").execute_in_process(tags=range_tags(CASES), instance=instance).success
        for model in (rules, network):  # one batch run of the three cases per model
            assert defs.resolve_job_def("model_chain").execute_in_process(tags=range_tags(CASES, model.name), instance=instance).success

        # a batch run records each case's own data version (Dagster's is one per step: the same for all three)
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("case_prediction"),
                                                                        asset_partitions=[case_model_key(c, network.name) for c in CASES]),
                                                  limit=3).records
        own = {r.asset_materialization.partition: r.asset_materialization.metadata["data_version"].value for r in records}
        assert len(set(own.values())) == 3 and all(r.asset_materialization.tags.get("dagster/data_version") for r in records)
        before = fingerprint(network)
        info = json.loads((tmp_path / "data" / "cases" / CASES[0] / "models" / network.slug / "prediction.json").read_text())
        assert (info["fingerprint"], info["weights"]) == (before.value, before.weights)
        assert statuses(defs, instance, network.name) == statuses(defs, instance, rules.name) == {
            "case_prediction": {"FRESH"}, "case_metrics": {"FRESH"}}

        automation = Automation(defs, instance)
        assert automation.tick(datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc)) == {}
        save_weights(weights, 2.5)  # retrained into the same file
        assert fingerprint(network).value != before.value and fingerprint(rules) == fingerprint(rules)
        assert defs.resolve_job_def("observe_model_weights").execute_in_process(instance=instance).success

        assert statuses(defs, instance, network.name) == {"case_prediction": {"STALE"}, "case_metrics": {"STALE"}}
        assert statuses(defs, instance, rules.name) == {"case_prediction": {"FRESH"}, "case_metrics": {"FRESH"}}
        changed = {case_model_key(c, network.name) for c in CASES}
        assert automation.tick(datetime(2026, 12, 3, 1, 1, tzinfo=timezone.utc)) == {"case_prediction": changed, "case_metrics": changed}
