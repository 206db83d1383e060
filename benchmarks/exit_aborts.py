"""How often a process that reads a shard and then exits at once aborts, by reader.

    python benchmarks/exit_aborts.py [--runs 100]

Each run is a fresh Python process that reads one replica case's needed columns over
``HfFileSystem`` from the local Hub server, then exits with status 2 straight away (what
``isles-pipeline fetch`` does when a case's data is bad). Readers, interleaved run by run:

- ``stock``: ``pq.ParquetFile(fs.open(path, cache_type="none")).read(columns)``, pyarrow's default
  pre-buffering (its IO threads call into the Python file object);
- ``ours``: ``ShardReader.read_case`` (the needed chunks fetched in the calling thread, pyarrow
  decoding from memory with ``pre_buffer=False``).

An abort shows as exit status -6 (SIGABRT: "terminate called without an active exception").
Prints a markdown table of exit statuses per reader.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = {
    "stock": (
        "import sys, pyarrow.parquet as pq; from huggingface_hub import HfFileSystem\n"
        "fs = HfFileSystem(endpoint=sys.argv[1], skip_instance_cache=True)\n"
        "with fs.open(f'datasets/{sys.argv[2]}/{sys.argv[3]}', 'rb', cache_type='none') as f:\n"
        "    pq.ParquetFile(f).read(columns=['subject_id', 'dwi', 'adc', 'lesion_mask'], use_threads=False)\n"
        "sys.exit(2)\n"
    ),
    "ours": (
        "import sys; from isles_pipeline.source import ShardReader, ShardSource\n"
        "ShardReader(ShardSource(sys.argv[2], 'main', sys.argv[1])).read_case(sys.argv[4])\n"
        "sys.exit(2)\n"
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID, shard_path
    from isles_pipeline.hub.replica import build_replica
    from isles_pipeline.hub.server import HubServer

    case_id = CASE_IDS[0]
    with tempfile.TemporaryDirectory() as folder:
        build_replica(Path(folder), [case_id], grid="tiny", ctp_mb=2, seed=0)
        statuses: dict[str, collections.Counter] = {name: collections.Counter() for name in CHILD}
        with HubServer() as server:
            server.add_repo("dataset", DEFAULT_REPO_ID, Path(folder))
            for _ in range(args.runs):
                for name, code in CHILD.items():
                    done = subprocess.run([sys.executable, "-c", code, server.url, DEFAULT_REPO_ID, shard_path(case_id), case_id],
                                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
                    statuses[name][done.returncode] += 1
    print("| reader | runs | exit 2 (clean) | aborted (-6) | other |\n|---|---|---|---|---|")
    for name, counts in statuses.items():
        other = sum(n for code, n in counts.items() if code not in (2, -6))
        print(f"| {name} | {args.runs} | {counts[2]} | {counts[-6]} | {other} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
