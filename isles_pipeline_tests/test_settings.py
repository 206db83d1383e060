"""The settings: read from the environment when the definitions are built (never when a module is
imported), every variable of README's table reaching the definitions it sets."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator

import dagster as dg
import pytest
import torch

import isles_pipeline.definitions
from isles_pipeline import nifti, source
from isles_pipeline.settings import Settings, SettingsError, read_settings, retry_wait_s

# Every variable, with a value that is not its default.
CHANGED = {
    "ISLES_DATA_DIR": "/srv/isles",
    "ISLES_HF_REPO": "lab/isles-mirror",
    "ISLES_HF_REVISION": "v2",
    "HF_ENDPOINT": "http://hub.lab:8000",
    "ISLES_MODELS": "/srv/models.yaml",
    "ISLES_SEGMENTER": "network",
    "ISLES_CHECKPOINT": "lab/nvauto",
    "ISLES_DEVICE": "cuda:1",
    "ISLES_BACKFILL_CRON": "30 3 * * 1",
    "ISLES_AUTOMATION": "on",
    "ISLES_DEPLOYMENT": "cluster",
    "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    "GITHUB_API_URL": "http://github.lab",
    "ISLES_MAX_VOXELS": "1000",
    "ISLES_MAX_READ_MB": "2.5",
    "ISLES_RETRY_WAIT_S": "0.5",
}


def cron_schedules(condition: dg.AutomationCondition) -> Iterator[str]:
    """The cron schedules a condition waits for, wherever they are in it."""
    if hasattr(condition, "cron_schedule"):
        yield condition.cron_schedule
    for child in condition.children:
        yield from cron_schedules(child)


def travelling(resource: dg.ConfigurableResource, field: str):
    """A resource field as a worker resolves it: an EnvVar's value, else the value."""
    value = getattr(resource, field)
    return value.get_value() if isinstance(value, dg.EnvVar) else value


def test_every_setting_is_read_when_the_definitions_are_built(monkeypatch):
    assert set(CHANGED) == {f.metadata["variable"] for f in Settings.__dataclass_fields__.values() if "variable" in f.metadata}
    for variable, value in CHANGED.items():
        monkeypatch.setenv(variable, value)

    defs = isles_pipeline.definitions.build_defs()  # the module was imported before the variables changed

    shard, store, models = (defs.resources[key] for key in ("shard_source", "case_store", "models"))
    # the settings a run's config carries travel as EnvVar: the launchpad shows them, a run may override them
    assert store.data_dir == dg.EnvVar("ISLES_DATA_DIR") and travelling(store, "data_dir") == "/srv/isles"
    assert {f: travelling(shard, f) for f in ("repo_id", "revision", "endpoint")} == {
        "repo_id": "lab/isles-mirror", "revision": "v2", "endpoint": "http://hub.lab:8000"}
    assert {f: travelling(models, f) for f in ("path", "segmenter", "checkpoint", "device", "endpoint")} == {
        "path": "/srv/models.yaml", "segmenter": "network", "checkpoint": "lab/nvauto", "device": "cuda:1",
        "endpoint": "http://hub.lab:8000"}
    graph = defs.resolve_asset_graph()
    for asset in ("case_inputs", "case_prediction", "case_metrics", "model_weights"):
        assert set(cron_schedules(graph.get(dg.AssetKey(asset)).automation_condition)) == {"30 3 * * 1"}, asset
    assert {s.name: s.default_status for s in defs.sensors if s.name in ("nightly_fetch", "arrow_issue_sensor")} == {
        "nightly_fetch": dg.DefaultSensorStatus.RUNNING, "arrow_issue_sensor": dg.DefaultSensorStatus.RUNNING}
    assert defs.resolve_job_def("model_chain").executor_def.name == "k8s"  # cluster, inside Kubernetes
    assert defs.resources["github_issue"].api_url == "http://github.lab"
    # the input budgets and the retry wait are read where they are used, in whichever process decodes or retries
    assert (nifti.max_voxels(), source.max_read_bytes(), retry_wait_s()) == (1000, int(2.5 * 2**20), 0.5)


def test_the_defaults_and_nothing_from_the_environment(monkeypatch):
    for variable in CHANGED:
        monkeypatch.delenv(variable, raising=False)
    settings = read_settings()
    assert settings == Settings() and settings.from_environment == frozenset()
    defs = isles_pipeline.definitions.build_defs()
    assert defs.resources["case_store"].data_dir == ".isles/data"  # a plain value: nothing to resolve on a worker
    assert {s.name: s.default_status for s in defs.sensors} == {
        "nightly_fetch": dg.DefaultSensorStatus.STOPPED, "arrow_issue_sensor": dg.DefaultSensorStatus.STOPPED,
        "chain_automation": dg.DefaultSensorStatus.RUNNING, "report_automation": dg.DefaultSensorStatus.RUNNING,
        "model_registry_sensor": dg.DefaultSensorStatus.RUNNING}
    assert defs.resolve_job_def("model_chain").executor_def.name == "in_process"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ISLES_DEVICE", "gpu", "ISLES_DEVICE='gpu': expected auto, cpu, cuda or cuda:N"),
        ("ISLES_SEGMENTER", "unet", "ISLES_SEGMENTER='unet': expected one of rules, network, nnunet"),
        ("ISLES_AUTOMATION", "maybe", "ISLES_AUTOMATION='maybe': expected on/off"),
        ("ISLES_BACKFILL_CRON", "nightly", "ISLES_BACKFILL_CRON='nightly': expected a cron expression of five fields"),
        ("ISLES_MAX_VOXELS", "-3", "ISLES_MAX_VOXELS='-3': expected a positive integer"),
        ("ISLES_RETRY_WAIT_S", "soon", "ISLES_RETRY_WAIT_S='soon': expected a positive number"),
    ],
)
def test_a_bad_value_fails_the_build_in_one_line_naming_the_variable_not_the_import(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    module = importlib.reload(isles_pipeline.definitions)  # importing reads nothing
    with pytest.raises(SettingsError) as caught:
        module.build_defs()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.fixture()
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_the_model_and_data_settings_are_what_case_prediction_records(hub, replica_dir, tmp_path, monkeypatch, instance):
    """ISLES_MODELS, ISLES_SEGMENTER/ISLES_CHECKPOINT, ISLES_DEVICE, ISLES_DATA_DIR, ISLES_HF_REPO,
    ISLES_HF_REVISION and HF_ENDPOINT, set as a user sets them, seen in prediction.json."""
    from huggingface_hub import HfApi

    from isles_pipeline.defs.partitions import case_model_key
    from isles_pipeline.failures import read_failure
    from isles_pipeline.models import ModelSpec, write_registry
    from isles_pipeline.store import CaseStore
    from isles_pipeline.weights import fingerprint
    from isles_pipeline_tests.chain import register_models, save_weights

    case = "sub-stroke0001"
    hub.add_repo("dataset", "lab/isles-mirror", replica_dir)
    commit = HfApi(endpoint=hub.url).dataset_info("lab/isles-mirror").sha
    loose = ModelSpec("rules:loose", options={"dwi_factor": 1.15})
    monkeypatch.chdir(tmp_path)
    for variable, value in {"ISLES_DATA_DIR": str(tmp_path / "data"), "ISLES_HF_REPO": "lab/isles-mirror", "ISLES_HF_REVISION": commit,
                            "HF_ENDPOINT": hub.url, "ISLES_DEVICE": "cpu",
                            "ISLES_MODELS": str(write_registry(tmp_path / "loose.yaml", [loose]))}.items():
        monkeypatch.setenv(variable, value)

    assert isles_pipeline.definitions.build_defs().resolve_job_def("case_inputs_job").execute_in_process(
        partition_key=case, instance=instance).success

    def run(model: str) -> dict:
        """case_prediction for the case with the definitions built now; what it recorded."""
        register_models(instance, [model])
        isles_pipeline.definitions.build_defs().resolve_job_def("model_chain").execute_in_process(
            partition_key=case_model_key(case, model), instance=instance, raise_on_error=False)
        path = tmp_path / "data" / "cases" / case / "models" / model.replace(":", "_") / "prediction.json"
        return json.loads(path.read_text()) if path.exists() else {}

    recorded = run(loose.name)
    assert (recorded["model"], recorded["options"], recorded["ran_with"]["dwi_factor"]) == ("rules:loose", {"dwi_factor": 1.15}, 1.15)
    assert (recorded["data_repo"], recorded["data_revision"]) == ("lab/isles-mirror", commit)
    assert recorded["requested_device"] == "cpu" and recorded["fingerprint"] == fingerprint(loose).value

    monkeypatch.delenv("ISLES_MODELS")
    save_weights(tmp_path / "model.ts", 0.5)
    monkeypatch.setenv("ISLES_SEGMENTER", "network")
    monkeypatch.setenv("ISLES_CHECKPOINT", str(tmp_path / "model.ts"))
    recorded = run("network:given")
    given = ModelSpec("network:given", str(tmp_path / "model.ts"))
    assert (recorded["segmenter"], recorded["weights"], recorded["fingerprint"]) == ("network", fingerprint(given).weights,
                                                                                     fingerprint(given).value)
    assert recorded["ran_with"]["roi_size"] == [16, 16, 16]  # the checkpoint's sidecar

    if not torch.cuda.is_available():
        monkeypatch.setenv("ISLES_DEVICE", "cuda")
        (tmp_path / "data" / "cases" / case / "models" / "network_given" / "prediction.json").unlink()
        assert run("network:given") == {}
        note = read_failure(CaseStore(tmp_path / "data"), case, "case_prediction.network_given")
        assert "device 'cuda' was requested but CUDA is not available" in note["cause"]
