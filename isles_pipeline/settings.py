"""Every setting of the pipeline, read from the environment in this one module.

``read_settings()`` turns the variables of README's table into one typed, frozen :class:`Settings`
when the definitions are built (``definitions.build_defs``) or a command starts (``cli.py``),
never when a module is imported. Everything else is handed a ``Settings`` or the values it needs.
A bad value is refused there, in one line naming the variable and what it takes.

Three kinds of value are read when they are used rather than when the definitions are built,
still only here: the input budgets (:func:`input_limits`, checked by every process that decodes
untrusted bytes: the CLI, a run worker), the GitHub token (:func:`github_token`, a secret that
never enters a settings object, a run config or a log) and the environment handed to a child
process (:func:`child_environment`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

from .catalogue import DEFAULT_REPO_ID
from .segment.options import SEGMENTERS

DEFAULT_DATA_DIR = ".isles/data"
DEFAULT_BACKFILL_CRON = "0 2 * * *"
DEPLOYMENTS = ("local", "cluster")
# 512^3: above every real grid (ISLES'24 is about 512 x 512 x 80), far below what exhausts memory.
DEFAULT_MAX_VOXELS = 512**3
# The three images of a real case are about 50 MB; a shard needing 10x that is not a case.
DEFAULT_MAX_READ_MB = 512.0
DEFAULT_RETRY_WAIT_S = 15.0
POSTGRES_VARIABLES = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
# What a child process never needs of ours.
SECRETS = ("GITHUB_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class SettingsError(ValueError):
    """A variable whose value cannot be used; the message names it and what it takes."""


def _text(value: str) -> str:
    return value


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "on", "true", "yes"):
        return True
    if lowered in ("0", "off", "false", "no"):
        return False
    raise ValueError("expected on/off (1/0, true/false, yes/no)")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value.lower()

    return parse


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.lower()):
        raise ValueError("expected auto, cpu, cuda or cuda:N")
    return value.lower()


def _cron(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError("expected a cron expression of five fields, e.g. '0 2 * * *'")
    return value


def _positive(cast: Callable[[str], float | int]) -> Callable[[str], float | int]:
    def parse(value: str):
        try:
            number = cast(value)
        except ValueError:
            raise ValueError(f"expected a positive {'integer' if cast is int else 'number'}") from None
        if not number > 0:
            raise ValueError(f"expected a positive {'integer' if cast is int else 'number'}")
        return number

    return parse


@dataclass(frozen=True)
class Settings:
    """The pipeline's settings; each field's ``metadata`` names its variable (see README)."""

    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"variable": "ISLES_DATA_DIR", "parse": _text})
    hf_repo: str = field(default=DEFAULT_REPO_ID, metadata={"variable": "ISLES_HF_REPO", "parse": _text})
    hf_revision: str = field(default="main", metadata={"variable": "ISLES_HF_REVISION", "parse": _text})
    hf_endpoint: str | None = field(default=None, metadata={"variable": "HF_ENDPOINT", "parse": _text})
    models_file: str | None = field(default=None, metadata={"variable": "ISLES_MODELS", "parse": _text})
    segmenter: str = field(default="rules", metadata={"variable": "ISLES_SEGMENTER", "parse": _choice(*SEGMENTERS)})
    checkpoint: str | None = field(default=None, metadata={"variable": "ISLES_CHECKPOINT", "parse": _text})
    device: str = field(default="auto", metadata={"variable": "ISLES_DEVICE", "parse": _device})
    backfill_cron: str = field(default=DEFAULT_BACKFILL_CRON, metadata={"variable": "ISLES_BACKFILL_CRON", "parse": _cron})
    automation: bool = field(default=False, metadata={"variable": "ISLES_AUTOMATION", "parse": _flag})
    deployment: str = field(default="local", metadata={"variable": "ISLES_DEPLOYMENT", "parse": _choice(*DEPLOYMENTS)})
    # Set by Kubernetes in every pod: steps can then be pods of their own.
    on_kubernetes: bool = field(default=False, metadata={"variable": "KUBERNETES_SERVICE_HOST", "parse": bool})
    github_api_url: str | None = field(default=None, metadata={"variable": "GITHUB_API_URL", "parse": _text})
    max_voxels: int = field(default=DEFAULT_MAX_VOXELS, metadata={"variable": "ISLES_MAX_VOXELS", "parse": _positive(int)})
    max_read_mb: float = field(default=DEFAULT_MAX_READ_MB, metadata={"variable": "ISLES_MAX_READ_MB", "parse": _positive(float)})
    retry_wait_s: float = field(default=DEFAULT_RETRY_WAIT_S, metadata={"variable": "ISLES_RETRY_WAIT_S", "parse": _positive(float)})
    # The fields whose value came from a variable of the environment (for dg.EnvVar, see defs/resources.py).
    from_environment: frozenset[str] = field(default=frozenset(), compare=False)

    def with_values(self, **values) -> Settings:
        """These settings with some values given (by the CLI's flags, the demo): ``None`` leaves a
        value as it is; a given value no longer counts as read from the environment."""
        given = {name: value for name, value in values.items() if value is not None}
        return replace(self, **given, from_environment=self.from_environment - set(given))

    @property
    def max_read_bytes(self) -> int:
        return int(self.max_read_mb * 2**20)


def variable_of(name: str) -> str:
    """The environment variable of a settings field."""
    return next(f.metadata["variable"] for f in fields(Settings) if f.name == name)


def read_settings(environ: Mapping[str, str] | None = None, only: tuple[str, ...] | None = None) -> Settings:
    """The settings from the environment (``os.environ`` now, unless given): an unset or empty
    variable keeps the default. ``only``: read these fields, leave the others at their default."""
    environ = os.environ if environ is None else environ
    values, read = {}, set()
    for spec in fields(Settings):
        if only is not None and spec.name not in only:
            continue
        variable = spec.metadata.get("variable")
        text = environ.get(variable, "").strip() if variable else ""
        if not text:
            continue
        try:
            values[spec.name] = spec.metadata["parse"](text)
        except ValueError as exc:
            raise SettingsError(f"{variable}={text!r}: {exc}") from None
        read.add(spec.name)
    return Settings(**values, from_environment=frozenset(read))


@dataclass(frozen=True)
class InputLimits:
    """The budgets untrusted input is checked against before it is read or allocated."""

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_read_bytes: int = int(DEFAULT_MAX_READ_MB * 2**20)


def input_limits() -> InputLimits:
    """``ISLES_MAX_VOXELS`` and ``ISLES_MAX_READ_MB`` as this process has them now."""
    settings = read_settings(only=("max_voxels", "max_read_mb"))
    return InputLimits(settings.max_voxels, settings.max_read_bytes)


def retry_wait_s() -> float:
    """``ISLES_RETRY_WAIT_S`` as the run worker has it: the first wait before a step is retried."""
    return read_settings(only=("retry_wait_s",)).retry_wait_s


def github_token() -> str | None:
    """``GITHUB_TOKEN``, read at each request and never stored."""
    return os.environ.get("GITHUB_TOKEN") or None


def child_environment() -> dict[str, str]:
    """This process's environment minus the secrets a child process has no use for."""
    return {key: value for key, value in os.environ.items() if key not in SECRETS}


def postgres_configured() -> bool:
    """Every DAGSTER_PG_* variable that deploy/cluster/dagster.yaml reads is set."""
    return all(os.environ.get(key) for key in POSTGRES_VARIABLES)
