"""The resources of the case chain as the tests run it, built the way the definitions build them
(``resources_from`` on a ``Settings``): the local Hub, a data folder, the CPU and the model
registry (the built-in ``rules`` unless a file is given); and the ``models`` partitions of an
instance, as ``model_registry_sensor``'s requests leave them."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from isles_pipeline.catalogue import DEFAULT_REPO_ID
from isles_pipeline.defs.jobs import observe_model_weights_job
from isles_pipeline.defs.models import model_weights_asset
from isles_pipeline.defs.partitions import model_partitions
from isles_pipeline.defs.resources import resources_from
from isles_pipeline.settings import Settings


def resources_for(url: str, data_dir, registry=None, **settings) -> dict:
    return resources_from(Settings(data_dir=str(data_dir), hf_repo=DEFAULT_REPO_ID, hf_endpoint=url, device="cpu",
                                   models_file=None if registry is None else str(registry), **settings))


def register_models(instance: dg.DagsterInstance, names: list[str]) -> None:
    """What the daemon does with ``model_registry_sensor``'s dynamic partition requests."""
    new = [name for name in names if not instance.has_dynamic_partition(model_partitions.name, name)]
    if new:
        instance.add_dynamic_partitions(model_partitions.name, new)


def observe_models(instance: dg.DagsterInstance, resources: dict) -> None:
    """One run of ``observe_model_weights`` (what the automation does for a newly registered model)."""
    defs = dg.Definitions(assets=[model_weights_asset()], jobs=[observe_model_weights_job], resources=resources)
    assert defs.resolve_job_def(observe_model_weights_job.name).execute_in_process(instance=instance).success


class Automation:
    """Declarative Automation evaluated tick after tick, as the daemon does (the cursor carried on)."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def tick(self, when: datetime) -> dict[str, set[str]]:
        """What is requested at ``when``, by asset."""
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor, evaluation_time=when)
        self.cursor = result.cursor
        keys = self.defs.resolve_asset_graph().get_all_asset_keys()
        return {key.to_user_string(): set(result.get_requested_partitions(key)) for key in keys if result.get_requested_partitions(key)}


def save_weights(path, threshold: float) -> None:
    """A tiny network checkpoint (TorchScript, with its sidecar) for the tiny grid: lesion where
    DWI is above ``threshold``; a new threshold is new weights in the same file."""
    import torch

    from isles_pipeline.segment.checkpoints import sidecar_text, torchscript_bytes

    class Threshold(torch.nn.Module):
        def __init__(self, value: float):
            super().__init__()
            self.threshold = torch.nn.Parameter(torch.tensor(value))

        def forward(self, x):  # input channels [ADC, DWI]
            return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:2] - self.threshold], dim=1)

    path.write_bytes(torchscript_bytes(torch.jit.script(Threshold(threshold))))
    path.with_suffix(".json").write_text(sidecar_text({"target_spacing": [4.0, 4.0, 4.0], "roi_size": [16, 16, 16], "overlap": 0.25}))
