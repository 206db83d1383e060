"""The settings: read from the environment when the definitions are built (never when a module is
imported), every variable of README's table reaching the definitions it sets."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import dagster as dg
import pytest

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
        "chain_automation": dg.DefaultSensorStatus.RUNNING, "model_registry_sensor": dg.DefaultSensorStatus.RUNNING}
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
