"""Settings every huggingface_hub client of the pipeline shares (dataset reads, checkpoint downloads)."""

from __future__ import annotations

import os


def hub_token_setting() -> bool | None:
    """What to pass as ``token=`` to huggingface_hub.

    ``None`` when ``HF_TOKEN`` is set: the client reads it itself, so the value never passes
    through the pipeline nor lands in an fs's ``storage_options``. ``False`` otherwise, so that no
    token file (``$HF_HOME/token``) is sent behind the user's back: ``HF_TOKEN`` is the only source.
    """
    return None if os.environ.get("HF_TOKEN") else False
