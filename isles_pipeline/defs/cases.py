"""``case_inputs``: one case's images, fetched once from its shard into the store: the columns some
registered model reads, and the lesion mask (``ModelRegistry.input_columns``)."""


import dagster as dg

from ..inputs import FetchResult, fetch_case
from .batching import CaseOutcome, run_cases
from .partitions import case_backfill_policy, case_partitions
from .resources import CaseStoreResource, ModelRegistryResource, ShardSourceResource


def fetch_metadata(result: FetchResult) -> dict:
    summary = result.summary()
    files = summary["files"]
    return {
        "revision": summary["revision"],
        "shard": summary["shard"],
        # also the data version (a run of several cases records it as data_version, per case)
        "shard_oid": summary["shard_oid"],
        "shard_bytes": dg.MetadataValue.int(summary["shard_bytes"]),
        "skipped_download": dg.MetadataValue.bool(result.skipped),
        "leftovers_removed": dg.MetadataValue.int(result.leftovers_removed),
        "bytes_transferred": dg.MetadataValue.int(summary["bytes_transferred"]),
        "range_requests": dg.MetadataValue.int(summary["range_requests"]),
        "retries": dg.MetadataValue.int(summary["retries"]),
        "seconds": dg.MetadataValue.float(summary["seconds"]),
        "shape": str(tuple(summary["shape"])),
        "voxel_size_mm": str(tuple(summary["voxel_size_mm"])),
        "lesion_ml": dg.MetadataValue.float(float(summary["lesion_ml"])),
        # a replica's shards say that they are synthetic (and their grid); the real dataset's do not
        "synthetic": dg.MetadataValue.bool(summary["replica"] is not None),
        **({"replica": dg.MetadataValue.json(summary["replica"])} if summary["replica"] else {}),
        **{f"sha256_{column}": f["sha256"] for column, f in files.items()},
        **{f"nonfinite_{column}": dg.MetadataValue.int(n) for column, n in summary["nonfinite_voxels"].items()},
    }


@dg.asset(
    partitions_def=case_partitions,
    backfill_policy=case_backfill_policy,
    group_name="cases",
    kinds={"parquet", "nifti"},
    description="The case's DWI, ADC and lesion mask as .nii.gz files (the shard's original bytes), "
    "read from its one parquet shard: only the needed columns, over HfFileSystem.",
)
def case_inputs(
    context: dg.AssetExecutionContext,
    shard_source: ShardSourceResource,
    case_store: CaseStoreResource,
    models: ModelRegistryResource,
) -> dg.MaterializeResult:
    reader, store = shard_source.reader(), case_store.store()
    columns = models.registry().input_columns()
    context.log.info(f"columns for the registered models: {', '.join(columns)}")

    def fetch(case_id: str) -> CaseOutcome:
        result = fetch_case(reader, store, case_id, columns=columns)
        verb = "unchanged, download skipped" if result.skipped else f"{result.transfer.bytes:,} bytes in {result.transfer.requests} range requests"
        if result.leftovers_removed:
            verb += f"; {result.leftovers_removed} temporary file(s) of crashed writes removed"
        context.log.info(f"case {case_id}: {verb}")
        return CaseOutcome(metadata=fetch_metadata(result), data_version=result.manifest.shard_oid)

    return run_cases(context, store, fetch)
