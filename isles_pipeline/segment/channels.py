"""Which shard image columns a segmenter reads, so that ``case_inputs`` fetches only those."""

from __future__ import annotations

# The MRI pair every built-in segmenter reads.
MRI_COLUMNS = ("dwi", "adc")


def input_columns_for(name: str, checkpoint: str | None = None) -> tuple[str, ...]:
    """The image columns (shard column names) that segmenter ``name`` with ``checkpoint`` reads."""
    return MRI_COLUMNS
