"""Reading nnU-Net v1 trained-model folders without running code from them.

A v1 folder (``RESULTS_FOLDER/nnUNet/3d_fullres/TaskNNN_Name/nnUNetTrainerV2__nnUNetPlansv2.1/``)
holds ``plans.pkl`` and ``fold_K/model_final_checkpoint.model`` with ``.model.pkl`` beside it
(or ``model_best.model``). All three are pickles, and a pickle can name any importable callable
and have the loader call it. So nothing here calls ``pickle.load`` or ``torch.load(...,
weights_only=False)``:

* ``plans.pkl`` and ``*.model.pkl`` go through :class:`AllowListUnpickler`, which admits only
  the classes of :data:`PICKLE_GLOBALS` (dicts, lists and numbers need none; numpy arrays,
  numpy scalars and ``OrderedDict`` are what v1 writes);
* the checkpoint goes through ``torch.load(weights_only=True)`` with the numpy globals of
  :data:`PICKLE_GLOBALS` allowed (v1 pickles numpy scalars in its training history).

A file that names anything else is refused with one line naming the file and the class. The
trainer class that ``.model.pkl`` names is never imported: it must be one of :data:`TRAINERS`,
whose networks :mod:`isles_pipeline.segment.nnunet_v1` builds from the plans itself.

This module does not import torch (the fetch step reads a model's channels through it).
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..formatting import first_line

PLANS_FILE = "plans.pkl"
# v1's checkpoint names, in the order it prefers them (nnUNet_predict's default first).
CHECKPOINT_NAMES = ("model_final_checkpoint", "model_best")
# Trainers whose inference network is nnUNetTrainerV2's Generic_UNet, and where their __init__
# arguments (pickled in .model.pkl as 'init') hold the stage: nnUNetTrainerV2(plans_file, fold,
# output_folder, dataset_directory, batch_dice, stage, ...); the DDP trainer (SEALS') adds
# local_rank after fold.
TRAINERS = {"nnUNetTrainerV2": 5, "nnUNetTrainerV2_DDP": 6}


class V1ModelError(ValueError):
    """A v1 model file that is refused or unusable; the message is one line naming the file."""


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _allowed_globals() -> dict[str, object]:
    """Every class or function a v1 pickle may name, by its pickled ``module.name``."""
    multiarray = _numpy_multiarray()
    allowed: dict[str, object] = {
        "collections.OrderedDict": collections.OrderedDict,
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
        "_codecs.encode": codecs.encode,  # bytes in protocol-2 pickles
    }
    # numpy 1.x pickles name numpy.core.multiarray, numpy 2.x numpy._core.multiarray.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}._reconstruct"] = multiarray._reconstruct
        allowed[f"{module}.scalar"] = multiarray.scalar
    # numpy >= 1.25 pickles a dtype's class too (numpy.dtypes.Float64DType ...): the numeric ones.
    for code in "?bhilqBHILQefdg":
        dtype_class = type(np.dtype(code))
        allowed[f"numpy.dtypes.{dtype_class.__name__}"] = dtype_class
    return allowed


PICKLE_GLOBALS: dict[str, object] = _allowed_globals()


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`PICKLE_GLOBALS`; any other class is refused."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        qualified = f"{module}.{name}"
        if qualified not in PICKLE_GLOBALS:
            raise V1ModelError(f"{self.source}: refused: it pickles {qualified}, which is not on the allow-list of nnU-Net v1 files")
        return PICKLE_GLOBALS[qualified]


def load_pickle(path: Path) -> Any:
    """A v1 ``.pkl`` file's content, through :class:`AllowListUnpickler`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise V1ModelError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        return AllowListUnpickler(io.BytesIO(data), str(path)).load()
    except V1ModelError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise V1ModelError(f"{path}: not a readable pickle ({type(exc).__name__}: {first_line(exc)})") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A v1 checkpoint (``model_final_checkpoint.model``) loaded with ``weights_only=True`` and
    the numpy globals of :data:`PICKLE_GLOBALS` allowed; its ``state_dict`` is what inference uses."""
    import torch

    safe = [(obj, qualified) for qualified, obj in PICKLE_GLOBALS.items()]
    try:
        with torch.serialization.safe_globals(safe):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise V1ModelError(f"{path}: refused: it pickles {_unsafe_globals(path, exc)}, which is not on the allow-list of nnU-Net v1 files") from None
    except Exception as exc:
        raise V1ModelError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise V1ModelError(f"{path}: not an nnU-Net v1 checkpoint (no 'state_dict')")
    return checkpoint


def _unsafe_globals(path: Path, exc: Exception) -> str:
    """The globals of a refused checkpoint outside the allow-list, read from its pickle opcodes
    (nothing is called), else as torch's message names them."""
    import torch

    try:
        names = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in PICKLE_GLOBALS]
    except Exception:
        names = []
    if not names:
        names = re.findall(r"(?:GLOBAL|but got <class ')\s*'?([\w.]+)", str(exc))[:3]
    return ", ".join(dict.fromkeys(names)) or "a global outside torch's weights-only set"


def is_v1_folder(folder: Path) -> bool:
    """A v1 trained-model folder has ``plans.pkl`` (a v2 one has ``plans.json``)."""
    return (Path(folder) / PLANS_FILE).is_file()


def read_channel_names(folder: Path) -> dict[str, str]:
    """The input channels a v1 folder's ``plans.pkl`` names (``modalities``: {0: "DWI", 1: "ADC"}),
    as nnU-Net v2's ``channel_names`` ({"0": "DWI", ...})."""
    path = Path(folder) / PLANS_FILE
    return channel_names_of(load_pickle(path), path)


def channel_names_of(plans: Any, source: Path | str) -> dict[str, str]:
    modalities = plans.get("modalities") if isinstance(plans, dict) else None
    if not isinstance(modalities, dict) or not modalities:
        raise V1ModelError(f"{source}: no 'modalities' (channel names) in the plans")
    return {str(k): str(v) for k, v in sorted(modalities.items(), key=lambda item: int(item[0]))}


@dataclass(frozen=True)
class FoldFiles:
    """What v1 inference reads of a folder: the trainer's plans and stage (from the first fold's
    ``.model.pkl``, as v1's ``restore_model`` takes them) and each fold's checkpoint path."""

    trainer: str
    stage: int
    plans: dict[str, Any]
    checkpoints: tuple[Path, ...]


def available_folds(folder: Path, checkpoint_name: str) -> tuple[int | str, ...]:
    """The folds whose ``checkpoint_name.model`` and ``.model.pkl`` exist (``all`` last)."""
    found = [
        p.name[len("fold_") :] if p.name.startswith("fold_") else p.name
        for p in Path(folder).iterdir()
        if (p.name.startswith("fold_") or p.name == "all")
        and (p / f"{checkpoint_name}.model").is_file()
        and (p / f"{checkpoint_name}.model.pkl").is_file()
    ]
    return tuple(sorted(int(f) for f in found if f.isdigit())) + (("all",) if "all" in found else ())


def pick_checkpoint_name(folder: Path, checkpoint_name: str | None) -> str:
    names = (checkpoint_name,) if checkpoint_name else CHECKPOINT_NAMES
    for name in names:
        if available_folds(folder, name):
            return name
    wanted = " or ".join(f"{n}.model (+ .model.pkl)" for n in names)
    raise V1ModelError(f"nnU-Net v1 model folder {str(folder)!r} has no fold_*/{wanted}")


def fold_dir(folder: Path, fold: int | str) -> Path:
    return Path(folder) / ("all" if fold == "all" else f"fold_{fold}")


def read_fold_files(folder: Path, folds: tuple[int | str, ...], checkpoint_name: str) -> FoldFiles:
    """The trainer, stage and plans of the first fold's ``.model.pkl``; the trainer must be one of
    :data:`TRAINERS` and the plans must name the same channels as ``plans.pkl``."""
    info_path = fold_dir(folder, folds[0]) / f"{checkpoint_name}.model.pkl"
    info = load_pickle(info_path)
    if not isinstance(info, dict) or not {"init", "name", "plans"} <= set(info):
        raise V1ModelError(f"{info_path}: not an nnU-Net v1 .model.pkl (expected 'init', 'name' and 'plans')")
    trainer = str(info["name"])
    if trainer not in TRAINERS:
        raise V1ModelError(f"{info_path}: trainer {trainer} is not supported (supported: {', '.join(TRAINERS)}, whose network is Generic_UNet as nnUNetTrainerV2 builds it)")
    init, plans = info["init"], info["plans"]
    stage = init[TRAINERS[trainer]] if isinstance(init, (tuple, list)) and len(init) > TRAINERS[trainer] else None
    if not isinstance(plans, dict) or not isinstance(plans.get("plans_per_stage"), dict):
        raise V1ModelError(f"{info_path}: no 'plans_per_stage' in its plans")
    if stage is None:  # as v1's process_plans: a single stage is taken
        if len(plans["plans_per_stage"]) != 1:
            raise V1ModelError(f"{info_path}: no stage given and the plans have {len(plans['plans_per_stage'])}")
        stage = next(iter(plans["plans_per_stage"]))
    if channel_names_of(plans, info_path) != read_channel_names(folder):
        raise V1ModelError(f"{info_path}: its plans name channels {channel_names_of(plans, info_path)}, plans.pkl {read_channel_names(folder)}")
    checkpoints = tuple(fold_dir(folder, fold) / f"{checkpoint_name}.model" for fold in folds)
    return FoldFiles(trainer=trainer, stage=int(stage), plans=plans, checkpoints=checkpoints)
