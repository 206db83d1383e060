"""Hostile and odd inputs, and Hub faults, through ``isles-pipeline fetch`` as a user runs it.

Every crafted shard (``hostile.py``) is fetched by the real command in a child process: a refused
one exits 2 with one line naming the case and the cause, leaves no file behind and stays under
the memory budget; an odd but valid one is fetched with the shard's exact bytes. Each Hub fault
ends in one clear line, retried by one layer only (the client's), or not at all when retrying
cannot help.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from isles_devkit.processes import Finished, run_measured, user_env
from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID, IMAGE_COLUMNS, shard_path
from isles_pipeline.hub.server import HubServer
from isles_pipeline.store import TMP_MARK

from .conftest import assert_only_known_routes
from .hostile import KINDS, NONFINITE_DWI, write_kind

MEMORY_BUDGET_MB = 1536
CLIENT_RETRIES = 5  # huggingface_hub's own, for range reads and tree listings
CASE = CASE_IDS[0]


@pytest.fixture(scope="module")
def hostile_repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("hostile_repo")
    return repo, {crafted.kind: write_kind(repo, index, crafted) for index, crafted in enumerate(KINDS)}


@pytest.fixture(scope="module")
def hostile_hub(hostile_repo):
    with HubServer() as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, hostile_repo[0])
        yield server
    assert_only_known_routes(server)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def fetch(case_id: str, out: Path, timeout_s: float = 180, **env: str) -> Finished:
    return run_measured(["fetch", case_id, "--out", str(out)], user_env(**env), timeout_s=timeout_s)


def assert_one_line_error(done: Finished, case_id: str, cause: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    (line,) = done.error_lines
    assert re.fullmatch(f"isles-pipeline fetch: error: case {case_id}: ({cause}).*", line), line
    return line


def retry_notices(done: Finished) -> int:
    return sum(line.startswith("Retrying in") for line in done.stderr.splitlines())


def test_at_least_30_refused_and_5_accepted_kinds():
    refused, accepted = sum(k.refused for k in KINDS), sum(not k.refused for k in KINDS)
    assert refused >= 30 and accepted >= 5, (refused, accepted)
    assert len({k.kind for k in KINDS}) == len(KINDS)


@pytest.mark.parametrize("crafted", KINDS, ids=lambda k: k.kind)
def test_crafted_shard(crafted, hostile_repo, hostile_hub, tmp_path):
    repo, case_ids = hostile_repo
    case_id, out = case_ids[crafted.kind], tmp_path / "data"
    done = fetch(case_id, out, HF_ENDPOINT=hostile_hub.url)
    assert done.peak_rss_mb < MEMORY_BUDGET_MB, done.peak_rss_mb
    if crafted.refused:
        assert_one_line_error(done, case_id, crafted.cause)
        assert done.stderr.strip().splitlines() == done.error_lines  # nothing else: no warning, no traceback
        assert files_under(out) == []
        return
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    table = pq.read_table(repo / shard_path(case_id), columns=list(IMAGE_COLUMNS))
    cells = {c: table.column(c)[0].as_py()["bytes"] for c in IMAGE_COLUMNS}
    assert {c: f["sha256"] for c, f in summary["files"].items()} == {c: hashlib.sha256(b).hexdigest() for c, b in cells.items()}
    assert [p for p in files_under(out) if TMP_MARK in p.name] == []
    if crafted.kind == "NaN and inf voxels in DWI":
        assert summary["nonfinite_voxels"] == {"dwi": NONFINITE_DWI, "adc": 0}


# --- faults of the Hub ----------------------------------------------------------------------


@pytest.fixture()
def faulty_hub(replica_dir):
    with HubServer(faults=True) as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, replica_dir)
        yield server


def resolves(server: HubServer) -> int:
    return server.stats.requests_by_route["resolve"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_hub_not_running(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    done = fetch(CASE, tmp_path / "data", HF_ENDPOINT=endpoint)
    line = assert_one_line_error(done, CASE, "cannot connect")
    assert endpoint in line and files_under(tmp_path / "data") == []


def test_unresolvable_host_fails_at_once_without_retries(tmp_path):
    done = fetch(CASE, tmp_path / "data", HF_ENDPOINT="http://isles-hub.invalid")
    assert_one_line_error(done, CASE, "cannot resolve the host 'isles-hub.invalid'")
    assert retry_notices(done) == 0 and "transient fault" not in done.stderr


def test_hub_that_dies_mid_case_fails_it_after_the_clients_retries(faulty_hub, tmp_path):
    faulty_hub.faults.add("resolve", "delay", times=1, seconds=2.0)

    def kill_when_the_shard_is_read():  # the first range read is held on the server: stop it then
        deadline = time.monotonic() + 60
        while faulty_hub.faults.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        faulty_hub.stop()

    killer = threading.Thread(target=kill_when_the_shard_is_read)
    killer.start()
    done = fetch(CASE, tmp_path / "data", HF_ENDPOINT=faulty_hub.url)
    killer.join()
    assert_one_line_error(done, CASE, "cannot connect|the connection failed mid-transfer")
    assert retry_notices(done) == CLIENT_RETRIES  # one layer, the client's: a bounded wait, not a hang
    assert files_under(tmp_path / "data") == []


def test_persistent_503_is_retried_by_the_client_only(faulty_hub, tmp_path):
    faulty_hub.faults.add("resolve", "status", times=50, status=503)
    done = fetch(CASE, tmp_path / "data", HF_ENDPOINT=faulty_hub.url)
    assert_one_line_error(done, CASE, "HTTP 503 from the Hub")
    assert resolves(faulty_hub) == 1 + CLIENT_RETRIES


def test_resets_mid_body_that_never_stop(faulty_hub, tmp_path):
    faulty_hub.faults.add("resolve", "reset", times=50, path_contains="parquet")
    done = fetch(CASE, tmp_path / "data", HF_ENDPOINT=faulty_hub.url)
    assert_one_line_error(done, CASE, "the connection failed mid-transfer")
    assert resolves(faulty_hub) == 1 + CLIENT_RETRIES


def test_a_stalled_hub_times_out(faulty_hub, tmp_path):
    faulty_hub.faults.add("resolve", "delay", times=50, seconds=30)
    # HF_HUB_DOWNLOAD_TIMEOUT is huggingface_hub's own setting for range reads (default 10 s)
    done = fetch(CASE, tmp_path / "data", HF_ENDPOINT=faulty_hub.url, HF_HUB_DOWNLOAD_TIMEOUT="1")
    assert_one_line_error(done, CASE, "no answer in time")
    (left,) = faulty_hub.faults.pending()  # stalled requests never finish, so count the faults they took
    assert 50 - left["times"] == 1 + CLIENT_RETRIES


def test_unknown_revision_and_denied_access_are_not_retried(faulty_hub, tmp_path):
    done = fetch(CASE, tmp_path / "a", HF_ENDPOINT=faulty_hub.url, ISLES_HF_REVISION="v9")
    assert_one_line_error(done, CASE, f"dataset {DEFAULT_REPO_ID}@v9: revision not found")
    faulty_hub.reset_stats()
    faulty_hub.faults.add("repo_info", "status", times=5, status=401)
    done = fetch(CASE, tmp_path / "b", HF_ENDPOINT=faulty_hub.url)
    assert_one_line_error(done, CASE, "access denied \\(HTTP 401\\): set HF_TOKEN")
    assert faulty_hub.stats.requests_by_route["repo_info"] == 1


def test_data_folder_that_cannot_be_written(hub, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    done = fetch(CASE, blocker / "data", HF_ENDPOINT=hub.url)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.error_lines
    assert "Not a directory" in line and str(blocker) in line, line
    assert [p for p in tmp_path.rglob("*") if TMP_MARK in p.name] == []


def test_a_503_burst_is_ridden_out_and_counted(faulty_hub, tmp_path):
    faulty_hub.faults.add("resolve", "status", times=2, status=503)
    done = fetch(CASE, tmp_path / "data", HF_ENDPOINT=faulty_hub.url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["retries"] == 2 == retry_notices(done)
