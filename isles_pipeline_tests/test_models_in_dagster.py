"""Several models side by side on a real instance against the local Hub: the case x model
partitions, one fetch per case, the leaderboard's numbers, and a model added later computing only
its own partitions."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from isles_pipeline.catalogue import CASE_IDS
from isles_pipeline.definitions import build_defs
from isles_pipeline.defs.cases import case_inputs
from isles_pipeline.defs.jobs import MODEL_CHAIN
from isles_pipeline.defs.leaderboard import leaderboard
from isles_pipeline.defs.partitions import case_model_key, range_tags
from isles_pipeline.defs.report import metrics_report
from isles_pipeline.defs.segmentation import case_prediction
from isles_pipeline.leaderboard import RANKED_METRICS, build_leaderboard
from isles_pipeline.models import ModelSpec, write_registry
from isles_pipeline.settings import Settings
from isles_pipeline.weights import fingerprint
from isles_pipeline_tests.chain import Automation, observe_models, register_models, resources_for

CASES = list(CASE_IDS[:3])
RULES = ModelSpec("rules")
LOOSE = ModelSpec("rules:loose", options={"dwi_factor": 1.15, "adc_high": 0.8})
STRICT = ModelSpec("rules:strict", options={"dwi_factor": 2.0, "adc_high": 0.5})


def count(instance: dg.DagsterInstance, asset: str, partition: str) -> int:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=100)
    return len(records.records)


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset)
    return {k: getattr(v, "value", v) for k, v in event.event_specific_data.materialization.metadata.items()}


def run_models(instance, resources, names: list[str]) -> None:
    register_models(instance, names)
    observe_models(instance, resources)
    for name in names:
        assert dg.materialize(MODEL_CHAIN, instance=instance, resources=resources, tags=range_tags(CASES, name)).success, name


@pytest.fixture()
def two_models(hub, tmp_path):
    registry = write_registry(tmp_path / "models.yaml", [RULES, LOOSE])
    resources = resources_for(hub.url, tmp_path / "data", registry)
    with dg.instance_for_test() as instance:
        assert dg.materialize([case_inputs], instance=instance, resources=resources, tags=range_tags(CASES)).success
        run_models(instance, resources, [RULES.name, LOOSE.name])
        yield instance, resources, tmp_path


def test_definitions_grid_is_case_by_model():
    defs = build_defs(Settings())
    prediction = defs.resolve_assets_def("case_prediction")
    dimensions = {d.name: d.partitions_def for d in prediction.partitions_def.partitions_defs}
    assert set(dimensions) == {"case", "model"}
    assert dimensions["case"].get_partition_keys() == list(CASE_IDS)
    assert isinstance(dimensions["model"], dg.DynamicPartitionsDefinition) and dimensions["model"].name == "models"
    assert defs.resolve_assets_def("case_inputs").partitions_def.get_partition_keys() == list(CASE_IDS)
    upstream = {k.to_user_string() for k in defs.resolve_assets_def("case_prediction").dependency_keys}
    assert upstream == {"case_inputs", "model_weights", "segmenter_checkpoint"}
    assert {k.to_user_string() for k in defs.resolve_assets_def("case_metrics").dependency_keys} == {"case_prediction", "model_weights"}


def test_two_models_fetch_once_and_the_leaderboard_means_are_the_case_metrics_means(two_models):
    instance, resources, tmp_path = two_models
    data = tmp_path / "data"
    for case_id in CASES:
        assert count(instance, "case_inputs", case_id) == 1
        for model in (RULES, LOOSE):
            assert count(instance, "case_metrics", case_model_key(case_id, model.name)) == 1
            record = json.loads((data / "cases" / case_id / "models" / model.slug / "metrics.json").read_text())
            assert (record["model"], record["fingerprint"]) == (model.name, fingerprint(model).value)
    # the UI shows Dice to 3 decimals and volumes to 2; metrics.json keeps every digit
    for case_id in CASES:
        key = case_model_key(case_id, LOOSE.name)
        shown = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("case_metrics"), asset_partitions=[key]),
                                                limit=1).records[0].asset_materialization.metadata
        record = json.loads((data / "cases" / case_id / "models" / LOOSE.slug / "metrics.json").read_text())
        assert shown["dice"].value == round(record["dice"], 3) and shown["pred_ml"].value == round(record["pred_ml"], 2)
        assert "data:image/png;base64," in shown["overlay"].value
        assert (data / "cases" / case_id / "models" / LOOSE.slug / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    full = [json.loads((data / "cases" / c / "models" / LOOSE.slug / "metrics.json").read_text())["pred_ml"] for c in CASES]
    assert any(v != round(v, 2) for v in full)
    manifest = json.loads((data / "cases" / CASES[0] / "source.json").read_text())
    assert set(manifest["files"]) == {"dwi", "adc", "lesion_mask"}

    result = dg.materialize([leaderboard], instance=instance, resources=resources)
    meta = metadata_of(result, "leaderboard")
    table = pd.read_parquet(data / "leaderboard" / "leaderboard.parquet").set_index("model")
    assert sorted(table.index) == sorted([RULES.name, LOOSE.name]) and meta["complete_cases"] == 3
    # each row names what it was computed from: the dataset revision and the model's fingerprint
    revision = json.loads((data / "cases" / CASES[0] / "source.json").read_text())["revision"]
    assert set(table.data_revisions) == {revision} and len(revision) == 40
    assert {m.name: table.loc[m.name, "fingerprints"] for m in (RULES, LOOSE)} == {m.name: fingerprint(m).value for m in (RULES, LOOSE)}
    for model in (RULES, LOOSE):
        records = [json.loads((data / "cases" / c / "models" / model.slug / "metrics.json").read_text()) for c in CASES]
        assert table.loc[model.name, "n"] == 3 and table.loc[model.name, "failed"] == 0
        for metric in RANKED_METRICS:
            values = np.array([r[metric] for r in records], dtype=float)
            assert table.loc[model.name, f"{metric}_mean"] == pytest.approx(values.mean(), rel=1e-12, abs=1e-15)
            assert table.loc[model.name, f"{metric}_median"] == pytest.approx(np.median(values), rel=1e-12, abs=1e-15)
    paired = pd.read_parquet(data / "leaderboard" / "paired.parquet")
    assert len(paired) == len(RANKED_METRICS) and set(paired.n) == {3}
    assert (data / "leaderboard" / "dice_by_model.png").read_bytes()[:4] == b"\x89PNG"
    assert "![Dice by model](data:image/png;base64," in meta["summary"]
    report = metadata_of(dg.materialize([metrics_report], instance=instance, resources=resources), "metrics_report")
    assert (report["models"], report["scored"], report["failed"]) == (2, 6, 0)
    assert "# Model `rules:loose`" in report["summary"] and "overlay.png" in report["summary"]


def test_a_third_model_materialises_only_its_partitions(two_models):
    instance, resources, tmp_path = two_models
    registry = write_registry(tmp_path / "models.yaml", [RULES, LOOSE, STRICT])
    defs = build_defs(Settings(data_dir=str(tmp_path / "data"), models_file=str(registry), device="cpu"))
    automation = Automation(defs, instance)
    assert automation.tick(datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc)) == {}
    register_models(instance, [STRICT.name])  # model_registry_sensor's request, applied
    observed = automation.tick(datetime(2026, 12, 3, 1, 1, tzinfo=timezone.utc))
    assert observed == {"model_weights": {STRICT.name}}  # a newly registered model is observed first
    assert defs.resolve_job_def("observe_model_weights").execute_in_process(instance=instance).success
    requested = automation.tick(datetime(2026, 12, 3, 1, 2, tzinfo=timezone.utc))
    strict = {case_model_key(c, STRICT.name) for c in CASES}
    assert requested == {"case_prediction": strict, "case_metrics": strict}
    assert dg.materialize(MODEL_CHAIN, instance=instance, resources=resources_for(None, tmp_path / "data", registry),
                          tags=range_tags(CASES, STRICT.name)).success
    for asset in ("case_prediction", "case_metrics"):
        counts = {(c, m.name): count(instance, asset, case_model_key(c, m.name)) for c in CASES for m in (RULES, LOOSE, STRICT)}
        assert set(counts.values()) == {1}, counts
    assert all(count(instance, "case_inputs", c) == 1 for c in CASES)
    assert automation.tick(datetime(2026, 12, 3, 1, 3, tzinfo=timezone.utc)).keys() <= {"metrics_report", "leaderboard"}


# Each rule option of the registry: a value other than the rule's default.
RULE_OPTIONS = {"adc_low": 0.2, "adc_high": 0.7, "adc_relative": 0.8, "dwi_factor": 1.2, "csf_adc": 1.8, "edge_erosion_mm": 2.0,
                "min_lesion_ml": 0.5}


def test_each_rule_option_of_the_registry_is_what_case_prediction_records(two_models):
    instance, _, tmp_path = two_models
    models = [ModelSpec(f"rules:{name.replace('_', '-')}", options={name: value}) for name, value in RULE_OPTIONS.items()]
    registry = write_registry(tmp_path / "options.yaml", [RULES, *models])
    register_models(instance, [m.name for m in models])
    tags = {"dagster/asset_partition_range_start": case_model_key(CASES[0], models[0].name),
            "dagster/asset_partition_range_end": case_model_key(CASES[0], models[-1].name)}
    assert dg.materialize([case_prediction], instance=instance, resources=resources_for(None, tmp_path / "data", registry), tags=tags).success

    def recorded(model: ModelSpec) -> dict:
        return json.loads((tmp_path / "data" / "cases" / CASES[0] / "models" / model.slug / "prediction.json").read_text())

    defaults = recorded(RULES)["ran_with"]
    assert set(defaults) == set(RULE_OPTIONS) and recorded(RULES)["options"] == {}
    for model, (name, value) in zip(models, RULE_OPTIONS.items(), strict=True):
        assert recorded(model)["options"] == {name: value} and recorded(model)["ran_with"] == {**defaults, name: value}, name


def test_a_model_run_on_fewer_cases_is_ranked_on_the_cases_both_ran_and_the_better_one_wins(hub, tmp_path):
    """Issue 14's scenario on the assets: `rules` (the better model on this replica) has run one case,
    `rules:loose` all three; the leaderboard ranks them on the one case both ran, `rules` wins, and
    its two cases not run yet are coverage beside the rank, not losses."""
    registry = write_registry(tmp_path / "models.yaml", [RULES, LOOSE])
    resources = resources_for(hub.url, tmp_path / "data", registry)
    with dg.instance_for_test() as instance:
        assert dg.materialize([case_inputs], instance=instance, resources=resources, tags=range_tags(CASES)).success
        register_models(instance, [RULES.name, LOOSE.name])
        assert dg.materialize(MODEL_CHAIN, instance=instance, resources=resources, tags=range_tags(CASES, LOOSE.name)).success
        assert dg.materialize(MODEL_CHAIN, instance=instance, resources=resources, partition_key=case_model_key(CASES[0], RULES.name)).success
        meta = metadata_of(dg.materialize([leaderboard], instance=instance, resources=resources), "leaderboard")
        report = metadata_of(dg.materialize([metrics_report], instance=instance, resources=resources), "metrics_report")
    table = pd.read_parquet(tmp_path / "data" / "leaderboard" / "leaderboard.parquet").set_index("model")
    assert (meta["best_model"], meta["ranked_cases"], meta["expected_cases"]) == (RULES.name, 1, 3)
    assert table.loc[RULES.name, ["position", "n", "scored", "failed", "not_run", "expected"]].tolist() == [1, 1, 1, 0, 2, 3]
    assert table.loc[LOOSE.name, ["position", "n", "scored", "failed", "not_run", "expected"]].tolist() == [2, 1, 3, 0, 0, 3]
    cases = pd.read_parquet(tmp_path / "data" / "leaderboard" / "cases.parquet")
    # the test means something: counted as failures, the two cases not run would have crowned rules:loose
    as_failures = {RULES.name: {c: "not run" for c in CASES[1:]}}
    assert build_leaderboard(cases.to_dict("records"), [RULES.name, LOOSE.name], as_failures).best == LOOSE.name
    summary = meta["summary"]
    assert summary.startswith(f"## Leaderboard: 2 models, ranked on the 1 case every model has scored or failed ({CASES[0]}), of 3 expected")
    assert f"| 1 | {RULES.name} | " in summary and "| 1 / 3 | 0 | 2 | 1 |" in summary
    # the data are the replica's, and the report and the leaderboard say so
    assert set(cases.data_synthetic) == {True} and set(cases.data_grid) == {"tiny"} and cases.data_revision.nunique() == 1
    for text in (summary, report["summary"]):
        assert "**Synthetic data.**" in text and "(synthetic replica, grid tiny)" in text
    assert (f"- Expected cases: 3: {CASES[0]} to {CASES[-1]} (every case with a run of case_inputs, or of this model's chain, "
            "in this Dagster instance)\n- Scored: 1\n- Failed: 0\n- Missing (neither scored nor failed): 2") in report["summary"]
    assert f"- Models: `{RULES.name}`, `{LOOSE.name}` (registry: {registry})" in report["summary"]
