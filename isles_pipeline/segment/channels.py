"""Which shard image columns a segmenter reads, so that ``case_inputs`` fetches only those.

The built-in segmenters read DWI and ADC. An nnU-Net model names its input channels in its
``dataset.json`` (``channel_names``: {"0": "DWI", "1": "ADC"}); :func:`column_for_channel` maps
each name, case-insensitively and through common aliases, to one of the shard's image columns.
Only that one file is read (downloaded, for a Hub model): no weights, no torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .hub_models import HUB_PREFIX, CheckpointError, download_marker_file
from .nnunet_v1_files import is_v1_folder
from .nnunet_v1_files import read_channel_names as read_v1_channel_names

# The MRI pair every built-in segmenter reads.
MRI_COLUMNS = ("dwi", "adc")
# Every image column of an ISLES'24 shard a model may read (all on one grid per case, see isles24.md).
IMAGE_COLUMNS = ("ncct", "cta", "tmax", "mtt", "cbf", "cbv", "dwi", "adc")
# Other names models give these channels (compared lower-case, without spaces, '-', '_' or '.').
ALIASES = {
    "dwi": ("dwi", "trace", "dwitrace", "b1000", "diffusion"),
    "adc": ("adc", "adcmap"),
    "ncct": ("ncct", "ct", "noncontrastct", "plainct"),
    "cta": ("cta", "ctangiography", "angio"),
    "tmax": ("tmax", "ctptmax"),
    "mtt": ("mtt", "ctpmtt"),
    "cbf": ("cbf", "rcbf", "ctpcbf"),
    "cbv": ("cbv", "rcbv", "ctpcbv"),
}
_COLUMN_OF_ALIAS = {alias: column for column, aliases in ALIASES.items() for alias in aliases}


def column_for_channel(channel: str, model: str = "the model") -> str:
    """The shard column that feeds a model channel named ``channel`` ("DWI", "Tmax", "rCBF" ...)."""
    key = re.sub(r"[\s_.\-]", "", str(channel).lower())
    if key not in _COLUMN_OF_ALIAS:
        raise ValueError(
            f"{model} needs a channel {channel!r} that no shard column provides "
            f"(the shards hold {', '.join(IMAGE_COLUMNS)})"
        )
    return _COLUMN_OF_ALIAS[key]


def columns_for_channels(channel_names: dict[str, str], model: str = "the model") -> tuple[str, ...]:
    """The shard columns for nnU-Net's ``channel_names`` ({"0": "DWI", ...}), in channel order."""
    ordered = [channel_names[key] for key in sorted(channel_names, key=int)]
    return tuple(column_for_channel(name, model) for name in ordered)


def input_columns_for(name: str, checkpoint: str | None = None) -> tuple[str, ...]:
    """The image columns (shard column names) that segmenter ``name`` with ``checkpoint`` reads."""
    if name == "nnunet" and checkpoint:
        return columns_for_channels(model_channel_names(checkpoint), f"nnU-Net model {checkpoint}")
    return MRI_COLUMNS


def model_channel_names(model: str) -> dict[str, str]:
    """The channel names of an nnU-Net model, read from the one file that holds them: v2's
    ``dataset.json``, v1's ``plans.pkl`` (through the allow-list). Of a Hub model repo only that
    file is downloaded; the weights stay on the Hub until the model runs."""
    local = Path(model).expanduser()
    if not model.startswith(HUB_PREFIX) and local.exists():
        return folder_channel_names(local)
    return folder_channel_names(download_marker_file(model).parent)


def folder_channel_names(folder: Path) -> dict[str, str]:
    """The channel names of a local nnU-Net model folder (v1 or v2)."""
    if is_v1_folder(folder):
        return read_v1_channel_names(folder)
    if not (folder / "dataset.json").is_file():
        raise CheckpointError(f"nnU-Net model folder {str(folder)!r} has no dataset.json (nor an nnU-Net v1 plans.pkl)")
    return read_channel_names(folder / "dataset.json")


def read_channel_names(dataset_json: Path) -> dict[str, str]:
    """``channel_names`` of an nnU-Net ``dataset.json`` (older ones call it ``modality``)."""
    dataset = json.loads(dataset_json.read_text())
    names = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{dataset_json}: no channel_names")
    return {str(k): str(v) for k, v in names.items()}
