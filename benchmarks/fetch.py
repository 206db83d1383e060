"""Bytes, requests, seconds and memory to fetch one case's DWI, ADC and lesion mask from its shard.

    python benchmarks/fetch.py [--cases 2] [--grid real] [--ctp-mb 300] [--repeats 3]
                               [--work .isles/bench] [--methods ...] [--write-docs]

Builds (or reuses, under ``--work``) a synthetic replica of the ISLES'24 repo whose shards carry
a ``--ctp-mb`` MB CT perfusion column, serves it with :class:`HubServer` on 127.0.0.1, and reads
each case with every method, each run in its own child process (so that peak RSS is that
method's alone), ``--repeats`` times, interleaved (repeat > case > method) so that noise from
other processes on the machine spreads over all methods alike:

- ``read_case``: this project's ``ShardReader.read_case`` (footer, the needed chunks fetched in
  the calling thread, pyarrow decoding without pre-buffering, validation);
- ``fetch_case``: this project's ``fetch_case`` into a temporary store (what the asset does);
- ``ParquetFile(pre_buffer)``: stock ``pq.ParquetFile(fs.open(path, cache_type="none")).read(columns)``,
  pyarrow's pre-buffering coalescing the same chunks on its IO threads;
- ``hf_hub_download``: download the whole shard (what ``datasets`` does), then read the 4
  columns from the local file;
- ``pq.read_table``: ``pq.read_table(path, filesystem=HfFileSystem(...), columns=[...])``.

Bytes and requests come from the server's counters (body bytes; metadata = repo info, tree,
paths-info, HEAD; data = GET resolve). Memory: each child imports everything first, then resets
its peak-RSS counter (``/proc/self/clear_refs``), so "RSS growth" = peak during the method
minus the RSS after imports; "peak RSS" is the child's maximum since exec (its own ``VmHWM``).
Prints the markdown table and PASS/FAIL per target; ``--write-docs`` also writes them into the
section "## Fetching one case" of docs/benchmarks.md. Exits 1 if a target fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _rss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("read_case", "fetch_case", "ParquetFile(pre_buffer)", "hf_hub_download", "pq.read_table")
OURS = ("read_case", "fetch_case")
MB = 2**20
FOOTER_ALLOWANCE = 128 * 1024
BYTES_FACTOR = 1.05
MAX_DATA_REQUESTS = 4
RSS_FACTOR = 2.0
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Fetching one case"
CHILD_TIMEOUT_S = 600


# ------------------------------------------------------------------ child: one method, one case


def _child(method: str, endpoint: str, repo_id: str, case_id: str, result_path: str) -> None:
    """Import everything, reset the peak-RSS counter, run ``method`` once, write a JSON result."""
    import pyarrow.parquet as pq
    from huggingface_hub import HfFileSystem, hf_hub_download

    from isles_pipeline.catalogue import IMAGE_COLUMNS, NEEDED_COLUMNS, shard_path
    from isles_pipeline.inputs import fetch_case
    from isles_pipeline.source import ShardReader, ShardSource
    from isles_pipeline.store import CaseStore

    def image_bytes(table) -> int:  # what the seed's demo did with the table: the 3 files' bytes
        files = {c: table.column(c)[0].as_py()["bytes"] for c in IMAGE_COLUMNS}
        assert table.column("subject_id")[0].as_py() == case_id
        return sum(len(b) for b in files.values())

    scratch = Path(tempfile.mkdtemp(prefix="fetch-bench-"))
    stages = _watch_stages(baseline_mb=_rss.rss_mb()) if method == "read_case:stages" else None
    baseline_mb = _rss.rss_mb()
    import_peak_mb = _rss.peak_mb()  # this process's peak since exec (imports)
    reset_ok = _rss.reset_peak()
    transfer = None
    started = time.perf_counter()
    if method in OURS or method == "read_case:stages":
        reader = ShardReader(ShardSource(repo_id=repo_id, endpoint=endpoint))
        if method != "fetch_case":
            shard = reader.read_case(case_id)
            files_bytes, transfer = sum(len(b) for b in shard.files.values()), shard.transfer
        else:
            result = fetch_case(reader, CaseStore(scratch / "store"), case_id, force=True)
            files_bytes, transfer = sum(f.size for f in result.manifest.files.values()), result.transfer
    elif method == "hf_hub_download":
        local = hf_hub_download(repo_id, shard_path(case_id), repo_type="dataset", endpoint=endpoint, cache_dir=scratch / "hub")
        files_bytes = image_bytes(pq.read_table(local, columns=list(NEEDED_COLUMNS)))
    elif method == "ParquetFile(pre_buffer)":  # the stock path: pyarrow coalesces on its IO threads
        fs = HfFileSystem(endpoint=endpoint, skip_instance_cache=True)
        with fs.open(f"datasets/{repo_id}/{shard_path(case_id)}", "rb", cache_type="none") as remote:
            files_bytes = image_bytes(pq.ParquetFile(remote).read(columns=list(NEEDED_COLUMNS), use_threads=False))
    elif method == "pq.read_table":
        fs = HfFileSystem(endpoint=endpoint, skip_instance_cache=True)
        table = pq.read_table(f"datasets/{repo_id}/{shard_path(case_id)}", filesystem=fs, columns=list(NEEDED_COLUMNS))
        files_bytes = image_bytes(table)
    else:
        raise SystemExit(f"unknown method {method!r}")
    seconds = time.perf_counter() - started
    peak_during_mb = _rss.peak_mb()
    shutil.rmtree(scratch, ignore_errors=True)
    Path(result_path).write_text(json.dumps({
        "seconds": seconds, "baseline_mb": baseline_mb, "peak_during_mb": peak_during_mb,
        "peak_mb": max(import_peak_mb, peak_during_mb),
        "reset_ok": reset_ok, "files_bytes": files_bytes, "stages": stages,
        "transfer": None if transfer is None else {"requests": transfer.requests, "bytes": transfer.bytes, "seconds": transfer.seconds},
    }))


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B"


def _watch_stages(baseline_mb: float) -> list:
    """Record RSS and peak RSS (over ``baseline_mb``) after each step of ``ShardReader.read_case``
    by wrapping the source module's helpers; returns the list the records are appended to."""
    import gc

    import pyarrow as pa

    from isles_pipeline import source

    records: list = []
    pool = pa.default_memory_pool()

    def mark(stage: str) -> None:
        records.append({"stage": stage, "rss": _rss.rss_mb() - baseline_mb, "peak": _rss.peak_mb() - baseline_mb,
                        "arrow_now": pool.bytes_allocated() / MB, "arrow_max": pool.max_memory() / MB})

    def wrap(owner, name, before=None, after=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if before:
                before(*args)
            result = original(*args, **kwargs)
            if after:
                after(*args)
            return result
        setattr(owner, name, wrapper)

    wrap(source._ShardFile, "fetch", after=lambda _self, start, end: mark(f"fetched range of {_size(end - start)}"))
    wrap(source, "_read_columns", after=lambda *_: mark(f"pyarrow table decoded ({pool.backend_name} pool)"))
    wrap(source, "_image_bytes", after=lambda *_: mark("cells copied to Python bytes (.as_py)"))
    wrap(source, "_validate_images", before=lambda *_: (gc.collect(), mark("table and fetched ranges released")),
         after=lambda *_: mark("read_case done"))
    wrap(source.nifti, "scan", after=lambda _data, _verdict, what="": mark(f"{what}: stream inflated on its budget (streamed)"))
    wrap(source.nifti, "mask_from_bytes", after=lambda _data, what="": mark(f"{what}: decoded slab by slab, binary rule"))
    return records


# ------------------------------------------------------------------ parent: replica, server, runs


def ensure_replica(work: Path, cases: int, grid: str, ctp_mb: float, rebuild: bool) -> tuple[Path, dict]:
    """The replica folder for these settings, built once and reused while its manifest matches."""
    from isles_pipeline.hub.replica import build_replica, load_manifest, parse_case_selection

    folder = work / f"replica-{grid}-ctp{ctp_mb:g}-{cases}cases"
    case_ids = parse_case_selection(cases, None)
    try:
        manifest = load_manifest(folder)
        fresh = (manifest["case_ids"] == case_ids and manifest["grid"]["name"] == grid
                 and float(manifest["ctp_mb"]) == float(ctp_mb) and manifest["seed"] == 0
                 and all((folder / c["shard"]).stat().st_size == c["bytes"] for c in manifest["cases"].values()))
    except (FileNotFoundError, KeyError, ValueError):
        fresh = False
    if rebuild or not fresh:
        if folder.exists():
            shutil.rmtree(folder)
        print(f"building replica {folder} ({cases} cases, {grid} grid, ctp {ctp_mb:g} MB) ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        manifest = build_replica(folder, case_ids, grid=grid, ctp_mb=ctp_mb, seed=0)
        print(f"built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return folder, manifest


def shard_facts(path: Path) -> dict:
    """From the shard's footer: bytes of the needed column chunks, footer size, planned ranges;
    from its cells: the decoded sizes of the three volumes (stored dtype and float32)."""
    import struct

    import pyarrow.parquet as pq

    from isles_pipeline import nifti
    from isles_pipeline.catalogue import IMAGE_COLUMNS, NEEDED_COLUMNS
    from isles_pipeline.source import column_spans

    pf = pq.ParquetFile(path)
    metadata = pf.metadata
    chunks = 0
    for rg in range(metadata.num_row_groups):
        group = metadata.row_group(rg)
        for i in range(group.num_columns):
            column = group.column(i)
            if column.path_in_schema.split(".")[0] in NEEDED_COLUMNS:
                chunks += column.total_compressed_size
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        (meta_len,) = struct.unpack("<I", f.read(4))
    ranges = column_spans(metadata, NEEDED_COLUMNS)
    table = pf.read(columns=list(IMAGE_COLUMNS))
    volumes = {}
    for column in IMAGE_COLUMNS:
        data = table.column(column)[0].as_py()["bytes"]
        verdict = nifti.admit_header(data, column)
        volumes[column] = {"shape": list(verdict.shape), "dtype": str(verdict.dtype),
                           "stored_bytes": verdict.voxels * verdict.dtype.itemsize, "float32_bytes": verdict.voxels * 4,
                           "file_bytes": len(data)}
    return {
        "shard_bytes": path.stat().st_size,
        "chunk_bytes": chunks,
        "footer_bytes": meta_len + 8,
        "needed_bytes": chunks + meta_len + 8,
        "planned_ranges": len(ranges),
        "planned_bytes": sum(e - s for s, e in ranges),
        "volumes": volumes,
        "decoded_stored": sum(v["stored_bytes"] for v in volumes.values()),
        "decoded_float32": sum(v["float32_bytes"] for v in volumes.values()),
        "files_bytes": sum(v["file_bytes"] for v in volumes.values()),
    }


def classify(log) -> dict:
    """Split the server's request log: metadata (repo info, tree, paths-info, HEAD, other) vs
    data (GET resolve, with or without Range), with body bytes of each."""
    meta = [r for r in log if not (r.route_kind == "resolve" and r.method == "GET")]
    data = [r for r in log if r.route_kind == "resolve" and r.method == "GET"]
    return {
        "meta_requests": len(meta),
        "meta_counts": dict(Counter(f"{r.method} {r.route_kind}" for r in meta)),
        "data_requests": len(data),
        "ranged_requests": sum(r.range is not None for r in data),
        "data_bytes": sum(r.bytes_sent for r in data),
        "total_bytes": sum(r.bytes_sent for r in log),
        "errors": [f"{r.method} {r.path} {r.status}" for r in log if r.status >= 400],
    }


def run_once(server, method: str, repo_id: str, case_id: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="fetch-bench-home-") as home:
        result_path = Path(home) / "result.json"
        env = {**os.environ, "HF_HOME": home, "PYTHONPATH": str(ROOT)}
        env.pop("HF_TOKEN", None)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, server.url, repo_id, case_id, str(result_path)]
        server.reset_stats()
        child = _rss.run_child(cmd, env=env, timeout=CHILD_TIMEOUT_S)
        stats = server.stats
        if child.returncode != 0:
            raise RuntimeError(f"{method} on {case_id} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        result = json.loads(result_path.read_text())
    result.update(classify(stats.log))
    result["wait4_maxrss_mb"] = child.maxrss_mb  # upper bound only: see _rss.run_child
    result["growth_mb"] = result["peak_during_mb"] - result["baseline_mb"]
    result["read_seconds"] = result["transfer"]["seconds"] if result["transfer"] else result["seconds"]
    return result


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(runs: dict, facts: dict, methods: list[str], case_ids: list[str]) -> tuple[list[str], list[str], bool]:
    """Markdown table lines, target lines, and whether every target passed."""
    lines = [
        "| method | case | seconds | of which fetch + parquet decode | metadata requests | data requests (ranged) "
        "| bytes transferred (MB) | / needed | peak RSS (MB) | RSS growth (MB) | growth / decoded (stored dtypes) | growth / decoded (float32) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case_id in case_ids:
        f = facts[case_id]
        for method in methods:
            rs = runs[(method, case_id)]
            total = median(rs, "total_bytes")
            lines.append(
                f"| {method} | {case_id} | {median(rs, 'seconds'):.2f} | {median(rs, 'read_seconds'):.2f} | {median(rs, 'meta_requests'):g} "
                f"| {median(rs, 'data_requests'):g} ({median(rs, 'ranged_requests'):g}) | {total / MB:.1f} "
                f"| {total / f['needed_bytes']:.3f} | {median(rs, 'peak_mb'):.0f} | {median(rs, 'growth_mb'):.0f} "
                f"| {median(rs, 'growth_mb') * MB / f['decoded_stored']:.2f} | {median(rs, 'growth_mb') * MB / f['decoded_float32']:.2f} |"
            )
    targets, ok = [], True
    for method in [m for m in methods if m in OURS]:
        for case_id in case_ids:
            f, rs = facts[case_id], runs[(method, case_id)]
            limit = BYTES_FACTOR * f["chunk_bytes"] + FOOTER_ALLOWANCE
            worst_bytes = max(r["total_bytes"] for r in rs)
            worst_requests = max(r["data_requests"] for r in rs)
            worst_growth = max(r["growth_mb"] for r in rs) * MB
            checks = [
                (f"bytes {worst_bytes / MB:.2f} MB <= 1.05 x chunks + 128 KiB = {limit / MB:.2f} MB", worst_bytes <= limit),
                (f"data requests after metadata {worst_requests} <= {MAX_DATA_REQUESTS}", worst_requests <= MAX_DATA_REQUESTS),
                (f"RSS growth {worst_growth / MB:.0f} MB < 2 x decoded (stored dtypes) = {RSS_FACTOR * f['decoded_stored'] / MB:.0f} MB",
                 worst_growth < RSS_FACTOR * f["decoded_stored"]),
            ]
            for text, passed in checks:
                ok &= passed
                targets.append(f"- {'PASS' if passed else 'FAIL'} `{method}` {case_id}: {text} (worst of {len(rs)} runs)")
    return lines, targets, ok


def facts_lines(facts: dict, case_ids: list[str]) -> list[str]:
    lines = [
        "| case | shard (MB) | needed chunks (MB) | footer (KB) | needed = chunks + footer (MB) | planned ranges | .nii.gz files (MB) | decoded, stored dtypes (MB) | decoded as float32 (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case_id in case_ids:
        f = facts[case_id]
        dtypes = ", ".join(f"{c} {v['dtype']}" for c, v in f["volumes"].items())
        lines.append(
            f"| {case_id} | {f['shard_bytes'] / MB:.1f} | {f['chunk_bytes'] / MB:.2f} | {f['footer_bytes'] / 1024:.1f} "
            f"| {f['needed_bytes'] / MB:.2f} | {f['planned_ranges']} ({f['planned_bytes'] / MB:.2f} MB) "
            f"| {f['files_bytes'] / MB:.1f} | {f['decoded_stored'] / MB:.0f} ({dtypes}) | {f['decoded_float32'] / MB:.0f} |"
        )
    return lines


def write_docs(section: str) -> None:
    """Replace (or append) this benchmark's section of docs/benchmarks.md; others are kept."""
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    text = DOCS.read_text() if DOCS.exists() else (
        "# Benchmarks\n\nEvery figure here comes from a script in `benchmarks/`, run with the command given.\n"
    )
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section.rstrip("\n") + "\n" + ("" if end < 0 else "\n" + text[end + 1:])
    DOCS.write_text(text.rstrip("\n") + "\n")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import huggingface_hub
    import pyarrow
    return (f"{os.cpu_count()}-core {cpu}, Linux {platform.release()}, Python {platform.python_version()}, "
            f"huggingface_hub {huggingface_hub.__version__}, pyarrow {pyarrow.__version__}; "
            f"HubServer on 127.0.0.1 (loopback: no latency, no bandwidth limit)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2, help="first N cases of the catalogue (default 2)")
    parser.add_argument("--grid", default="real", choices=["tiny", "demo", "real"])
    parser.add_argument("--ctp-mb", type=float, default=300.0, help="size of each shard's ctp column (default 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(".isles/bench"), help="replica cache folder")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the replica even if it matches")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--write-docs", action="store_true", help=f"write the results into {DOCS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    command = "python benchmarks/fetch.py " + shlex.join(argv)

    from isles_pipeline.catalogue import DEFAULT_REPO_ID
    from isles_pipeline.hub.server import HubServer

    folder, manifest = ensure_replica(args.work, args.cases, args.grid, args.ctp_mb, args.rebuild)
    case_ids = list(manifest["case_ids"])
    facts = {c: shard_facts(folder / manifest["cases"][c]["shard"]) for c in case_ids}
    runs: dict[tuple[str, str], list[dict]] = {(m, c): [] for m in args.methods for c in case_ids}
    with HubServer() as server:
        repo = server.app.add_repo("dataset", DEFAULT_REPO_ID, folder)
        snapshot = repo.snapshot()
        for case_id in case_ids:  # hash each shard now, not inside the first timed read
            snapshot.file_entry(manifest["cases"][case_id]["shard"])
        for repeat in range(args.repeats):
            for case_id in case_ids:
                for method in args.methods:
                    result = run_once(server, method, DEFAULT_REPO_ID, case_id)
                    if result["errors"]:
                        raise RuntimeError(f"{method} {case_id}: server answered errors {result['errors']}")
                    runs[(method, case_id)].append(result)
                    print(f"[{repeat + 1}/{args.repeats}] {case_id} {method}: {result['seconds']:.2f} s, "
                          f"{result['total_bytes'] / MB:.1f} MB in {result['meta_requests']}+{result['data_requests']} requests, "
                          f"growth {result['growth_mb']:.0f} MB, peak {result['peak_mb']:.0f} MB", file=sys.stderr, flush=True)

        stages = run_once(server, "read_case:stages", DEFAULT_REPO_ID, case_ids[0])["stages"]

    table, targets, ok = summarise(runs, facts, args.methods, case_ids)
    by_stage = {r["stage"]: r for r in stages}
    released = next((r for r in stages if r["stage"].startswith("table and fetched")), None)
    masked = next((r for r in stages if r["stage"].startswith("mask:")), None)
    before_mask = stages[stages.index(masked) - 1] if masked and stages.index(masked) > 0 else None
    diagnosis = []
    if released and masked and before_mask:
        diagnosis = [
            f"pyarrow's pool peaked at {stages[-1]['arrow_max']:.0f} MB to decode {facts[case_ids[0]]['planned_bytes'] / MB:.1f} MB of column chunks; "
            f"after the table and the fetched ranges are released, RSS stays {released['rss']:.0f} MB over the baseline "
            f"(the pool holds {released['arrow_now']:.0f} MB but keeps its freed pages); thresholding the mask raised the peak "
            f"from {before_mask['peak']:.0f} to {masked['peak']:.0f} MB.", "",
        ]
    del by_stage
    stage_lines = [
        f"Where `read_case`'s memory goes ({case_ids[0]}, one extra run; MB over the RSS after imports):", "",
        "| step | RSS after it | peak so far | pyarrow pool now | pyarrow pool peak |", "|---|---|---|---|---|",
        *(f"| {r['stage']} | {r['rss']:.0f} | {r['peak']:.0f} | {r['arrow_now']:.0f} | {r['arrow_max']:.0f} |" for r in stages),
    ]
    meta_by_method = {}
    for (method, _case), rs in runs.items():
        meta_by_method.setdefault(method, ", ".join(f"{n} {k}" for k, n in sorted(rs[0]["meta_counts"].items())))
    reset_ok = all(r["reset_ok"] for rs in runs.values() for r in rs)
    transfer_agrees = all(r["transfer"] is None or r["transfer"]["bytes"] == r["data_bytes"] and r["transfer"]["requests"] == r["data_requests"]
                          for rs in runs.values() for r in rs)
    first = facts[case_ids[0]]
    notes = [
        f"- Replica: {len(case_ids)} cases on the `{args.grid}` grid ({' x '.join(map(str, first['volumes']['dwi']['shape']))}), "
        f"ctp {args.ctp_mb:g} MB per shard; {args.repeats} runs per method and case, each in a fresh child process, medians shown.",
        "- Bytes: body bytes the server sent for the whole read (metadata included); needed = the byte sizes of the "
        "`subject_id`, `dwi`, `adc`, `lesion_mask` column chunks plus the footer, from the shard's footer.",
        "- Metadata requests per run: " + "; ".join(f"`{m}` {k}" for m, k in meta_by_method.items())
        + ". Data requests are GET `resolve` (ranged when a Range header was sent). Each run is a fresh process with a fresh "
        "reader: a reader that reads several cases makes the metadata requests once (later cases: data requests only).",
        "- Peak RSS: the child's own maximum since exec (`VmHWM` read before the reset and at the end; imports included). RSS growth: peak during the "
        f"method minus the RSS after imports (peak counter reset via /proc/self/clear_refs: {'ok' if reset_ok else 'NOT available, growth is approximate'}). "
        "The RSS target is checked against the three volumes' decoded size in their stored dtypes (what the files decode to; "
        "the stricter choice); the float32 ratio is shown too (the dtype the segmenters use).",
        "- Seconds: the whole call in the child (imports excluded). \"of which fetch + parquet decode\": the reader's "
        "`Transfer.seconds` (footer, ranges, pyarrow) for `read_case`/`fetch_case`, before header/gzip validation, mask decode "
        "and writing; the whole call for the others. Loopback has no latency: on the real Hub each request adds a round trip.",
        "- `hf_hub_download` and `pq.read_table` end with the three files' bytes in memory (as the seed's demo did); "
        "`read_case` also checks every header and gzip stream and decodes the mask; `fetch_case` also writes the files.",
        f"- The reader's own `Transfer` counters {'agree' if transfer_agrees else 'DISAGREE'} with the server's.",
    ]
    section = "\n".join([
        SECTION, "",
        f"Command: `{command.strip()}`", "",
        f"Machine: {machine()}.", "",
        *facts_lines(facts, case_ids), "",
        *table, "",
        "Targets (this project's read):", "",
        *targets, "",
        *stage_lines, "",
        *diagnosis,
        *notes, "",
    ])
    print(section)
    if args.write_docs:
        write_docs(section)
        print(f"wrote {DOCS}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
