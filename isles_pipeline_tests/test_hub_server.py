"""The local Hub server, driven by the real huggingface_hub client and by raw urllib requests."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from hypothesis import given
from hypothesis import strategies as st

from isles_pipeline.hub.server import (
    AGENT_HARNESSES,
    MAX_BODY_BYTES,
    AdminClient,
    HubServer,
    RangeNotSatisfiable,
    parse_byte_range,
)

from .conftest import assert_only_known_routes

DATASET = "org/tiny-ds"
MODEL = "org/tiny-model"
SHARD = "data/train-00000-of-00001.parquet"
BLOB = "data/sub/blob.bin"  # 2000 bytes: below the LFS threshold, not parquet -> plain git blob
HELLO_BLOB_SHA1 = "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of b"hello\n"
BLOB_BYTES = bytes(i % 251 for i in range(2000))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def table() -> pa.Table:
    return pa.table({"case": [f"sub-{i:04d}" for i in range(300)], "value": [float(i) / 7 for i in range(300)]})


@pytest.fixture
def dataset_dir(tmp_path: Path, table: pa.Table) -> Path:
    root = tmp_path / "dataset"
    (root / "data" / "sub").mkdir(parents=True)
    pq.write_table(table, root / SHARD)
    (root / BLOB).write_bytes(BLOB_BYTES)
    (root / "README.md").write_bytes(b"hello\n")
    return root


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    root.mkdir()
    (root / "weights.bin").write_bytes(bytes(range(256)) * 8192 + b"tail")  # 2 MiB + 4: an LFS file
    (root / "config.json").write_bytes(b'{"channels": 2}\n')
    return root


@pytest.fixture
def server(dataset_dir: Path, model_dir: Path):
    with HubServer(faults=True) as hub:
        hub.add_repo("dataset", DATASET, dataset_dir)
        hub.add_repo("model", MODEL, model_dir)
        yield hub
    assert_only_known_routes(hub)


@pytest.fixture
def fs(server: HubServer) -> HfFileSystem:
    return HfFileSystem(endpoint=server.url, skip_instance_cache=True)


def http_get(url: str, headers: dict[str, str] | None = None, method: str = "GET", data: bytes | None = None):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def shard_url(server: HubServer, revision: str = "main", path: str = SHARD) -> str:
    return f"{server.url}/datasets/{DATASET}/resolve/{revision}/{path}"


# ---------------------------------------------------------------------------------- HfFileSystem


def test_ls_lists_files_and_directories(fs: HfFileSystem, dataset_dir: Path) -> None:
    top = fs.ls(f"datasets/{DATASET}", detail=True)
    assert {(e["name"], e["type"]) for e in top} == {
        (f"datasets/{DATASET}/data", "directory"),
        (f"datasets/{DATASET}/README.md", "file"),
    }
    data = fs.ls(f"datasets/{DATASET}/data", detail=False)
    assert sorted(data) == [f"datasets/{DATASET}/data/sub", f"datasets/{DATASET}/{SHARD}"]
    assert fs.ls(f"datasets/{DATASET}/data/sub", detail=False) == [f"datasets/{DATASET}/{BLOB}"]
    assert sorted(fs.find(f"datasets/{DATASET}")) == sorted(
        f"datasets/{DATASET}/{p}" for p in ("README.md", BLOB, SHARD)
    )


def test_info_reports_size_and_hub_hashes(fs: HfFileSystem, dataset_dir: Path) -> None:
    shard_bytes = (dataset_dir / SHARD).read_bytes()
    info = fs.info(f"datasets/{DATASET}/{SHARD}")
    assert info["size"] == len(shard_bytes)
    assert info["lfs"].sha256 == sha256_hex(shard_bytes)
    assert info["lfs"].size == len(shard_bytes)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256_hex(shard_bytes)}\nsize {len(shard_bytes)}\n"
    assert info["lfs"].pointer_size == len(pointer)
    assert info["blob_id"] == hashlib.sha1(f"blob {len(pointer)}\0{pointer}".encode()).hexdigest()
    assert info["xet_hash"] is None

    readme = fs.info(f"datasets/{DATASET}/README.md")
    assert (readme["size"], readme["blob_id"], readme["lfs"]) == (6, HELLO_BLOB_SHA1, None)


def test_open_reads_exact_byte_ranges(fs: HfFileSystem, dataset_dir: Path) -> None:
    shard_bytes = (dataset_dir / SHARD).read_bytes()
    with fs.open(f"datasets/{DATASET}/{SHARD}", "rb", cache_type="none") as f:
        f.seek(10)
        assert f.read(10) == shard_bytes[10:20]
        f.seek(len(shard_bytes) - 8)
        assert f.read() == shard_bytes[-8:]
        assert shard_bytes[-4:] == b"PAR1"
    with fs.open(f"datasets/{DATASET}/{SHARD}", "rb") as f:
        assert sha256_hex(f.read()) == sha256_hex(shard_bytes)
    assert fs.cat(f"datasets/{DATASET}/{BLOB}") == BLOB_BYTES


def test_parquet_reads_back_through_uncached_handle(fs: HfFileSystem, table: pa.Table) -> None:
    with fs.open(f"datasets/{DATASET}/{SHARD}", "rb", cache_type="none") as f:
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_rows == 300
        assert parquet.read().equals(table)
        assert parquet.read(columns=["case"]).column("case").to_pylist()[299] == "sub-0299"


def test_commit_sha_revision_works_and_is_deterministic(
    server: HubServer, fs: HfFileSystem, dataset_dir: Path
) -> None:
    sha = fs._api.dataset_info(DATASET).sha  # repo info as the client parses it
    assert re.fullmatch(r"[0-9a-f]{40}", sha)
    assert fs.cat(f"datasets/{DATASET}@{sha}/README.md") == b"hello\n"
    status, headers, _ = http_get(shard_url(server, revision=sha), method="HEAD")
    assert (status, headers["X-Repo-Commit"]) == (200, sha)

    with HubServer() as other:  # same folder, another server: same commit
        other.add_repo("dataset", DATASET, dataset_dir)
        assert HfFileSystem(endpoint=other.url, skip_instance_cache=True)._api.dataset_info(DATASET).sha == sha

    (dataset_dir / "README.md").write_bytes(b"hello again\n")
    new_sha = HfFileSystem(endpoint=server.url, skip_instance_cache=True)._api.dataset_info(DATASET).sha
    assert new_sha != sha
    status, headers, _ = http_get(f"{server.url}/api/datasets/{DATASET}/revision/{sha}")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")


def test_unknown_repo_revision_and_file_raise_not_found(server: HubServer, fs: HfFileSystem) -> None:
    with pytest.raises(FileNotFoundError) as unknown_repo:
        fs.ls("datasets/org/no-such-repo")
    assert isinstance(unknown_repo.value.__cause__, RepositoryNotFoundError)
    with pytest.raises(FileNotFoundError) as unknown_revision:
        fs.ls(f"datasets/{DATASET}@v9")
    assert isinstance(unknown_revision.value.__cause__, RevisionNotFoundError)
    with pytest.raises(FileNotFoundError):
        fs.info(f"datasets/{DATASET}/data/missing.parquet")
    with pytest.raises(FileNotFoundError):
        fs.ls(f"datasets/{DATASET}/no-such-dir")
    with pytest.raises(FileNotFoundError):
        fs.ls(f"{DATASET}")  # a dataset is not a model repo


def test_not_found_answers_carry_hub_error_codes(server: HubServer) -> None:
    cases = {
        "/api/datasets/org/nope": "RepoNotFound",
        f"/api/datasets/{DATASET}/revision/v9": "RevisionNotFound",
        f"/api/datasets/{DATASET}/tree/main/no-such-dir": "EntryNotFound",
        f"/api/datasets/{DATASET}/tree/main/README.md": "EntryNotFound",  # a file is not a tree
        f"/datasets/{DATASET}/resolve/main/missing.bin": "EntryNotFound",
        f"/datasets/{DATASET}/resolve/v9/README.md": "RevisionNotFound",
        f"/{MODEL}/resolve/main/{SHARD}": "EntryNotFound",
        "/org/nope/resolve/main/x.bin": "RepoNotFound",
    }
    for path, code in cases.items():
        status, headers, _ = http_get(server.url + path)
        assert (path, status, headers["X-Error-Code"]) == (path, 404, code)


def test_hf_hub_download_model_file(server: HubServer, model_dir: Path, tmp_path: Path) -> None:
    expected = (model_dir / "weights.bin").read_bytes()
    cached = hf_hub_download(MODEL, "weights.bin", endpoint=server.url, cache_dir=tmp_path / "cache")
    assert sha256_hex(Path(cached).read_bytes()) == sha256_hex(expected)
    local = hf_hub_download(MODEL, "config.json", endpoint=server.url, local_dir=tmp_path / "local")
    assert Path(local).read_bytes() == b'{"channels": 2}\n'
    model_fs = HfFileSystem(endpoint=server.url, skip_instance_cache=True)
    assert sorted(model_fs.ls(MODEL, detail=False)) == [f"{MODEL}/config.json", f"{MODEL}/weights.bin"]
    methods = [(r.method, r.path, r.status) for r in server.stats.log if r.route_kind == "resolve"]
    assert ("HEAD", f"/{MODEL}/resolve/main/weights.bin", 200) in methods
    assert ("GET", f"/{MODEL}/resolve/main/weights.bin", 200) in methods


def test_hf_hub_download_errors(server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "weights.bin", endpoint=server.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(MODEL, "weights.bin", revision="v9", endpoint=server.url, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(MODEL, "missing.bin", endpoint=server.url, cache_dir=tmp_path)


def test_snapshot_download_with_allow_patterns(server: HubServer, model_dir: Path, tmp_path: Path) -> None:
    """What the model downloads use: repo info, one recursive tree listing, then only the files asked for."""
    commit = HfApi(endpoint=server.url).model_info(MODEL).sha
    folder = Path(snapshot_download(MODEL, revision=commit, allow_patterns=["*.json"], endpoint=server.url, cache_dir=tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    assert (folder / "config.json").read_bytes() == (model_dir / "config.json").read_bytes()
    assert not any("weights.bin" in r.path for r in server.stats.log if r.route_kind == "resolve")
    assert server.stats.requests_by_route["tree"] == 1


TOKEN = "hf_LocalHubToken0123456789"


@pytest.mark.parametrize("access", ["private", "gated"])
def test_private_and_gated_repos_need_their_token(model_dir: Path, tmp_path: Path, access: str) -> None:
    with HubServer() as hub:
        hub.add_repo("model", MODEL, model_dir, access=access, token=TOKEN)
        download = dict(endpoint=hub.url, cache_dir=tmp_path / "cache")
        api = HfApi(endpoint=hub.url)
        if access == "private":  # as the Hub does: no sign that it exists
            with pytest.raises(RepositoryNotFoundError):
                api.model_info(MODEL, token=False)
            with pytest.raises(RepositoryNotFoundError):
                hf_hub_download(MODEL, "config.json", token=False, **download)
        else:  # its card and file list are public, its files are not
            assert api.model_info(MODEL, token=False).gated == "manual"
            with pytest.raises(GatedRepoError):
                hf_hub_download(MODEL, "config.json", token=False, **download)
        with pytest.raises(HfHubHTTPError, match="401") as refused:  # a token the Hub does not know
            hf_hub_download(MODEL, "config.json", token="hf_unknown", **download)
        assert not isinstance(refused.value, RepositoryNotFoundError)
        assert Path(hf_hub_download(MODEL, "config.json", token=TOKEN, **download)).read_bytes() == b'{"channels": 2}\n'
        assert api.whoami(token=TOKEN)["auth"]["accessToken"]["displayName"] == "local-hub"
        with pytest.raises(HfHubHTTPError, match="Invalid user token"):
            api.whoami(token="hf_unknown")
        assert [r.authenticated for r in hub.stats.log if r.route_kind == "whoami"] == [True, True]
        with pytest.raises(ValueError, match="needs a token"):
            hub.add_repo("model", "org/other", model_dir, access=access)
    assert_only_known_routes(hub)


def test_paths_info_form_and_json_bodies(server: HubServer) -> None:
    url = f"{server.url}/api/datasets/{DATASET}/paths-info/main"
    status, _, body = http_get(url, method="POST", data=b"paths=README.md&paths=data&paths=nope&expand=true")
    entries = json.loads(body)
    assert status == 200
    assert [(e["path"], e["type"]) for e in entries] == [("README.md", "file"), ("data", "directory")]
    assert entries[0]["oid"] == HELLO_BLOB_SHA1 and "lastCommit" in entries[0]
    status, _, body = http_get(url, method="POST", data=b'{"paths": ["README.md"]}')
    assert json.loads(body) == [{"type": "file", "oid": HELLO_BLOB_SHA1, "size": 6, "path": "README.md"}]


# ---------------------------------------------------------------------------------- raw HTTP


def test_range_requests_are_exact(server: HubServer, dataset_dir: Path) -> None:
    data = (dataset_dir / SHARD).read_bytes()
    size = len(data)
    expected = {
        "bytes=10-19": (10, 19),
        "bytes=-5": (size - 5, size - 1),
        "bytes=5-": (5, size - 1),
        f"bytes={size - 3}-{size + 100}": (size - 3, size - 1),  # past the end is cut to the end
        f"bytes=-{size + 10}": (0, size - 1),
    }
    for header, (first, last) in expected.items():
        status, headers, body = http_get(shard_url(server), {"Range": header})
        assert status == 206, header
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert int(headers["Content-Length"]) == last - first + 1
        assert body == data[first : last + 1]
    for header in (f"bytes={size}-", "bytes=20-10", "bytes=-0", "bytes=0-1,5-6", "items=0-1"):
        status, headers, body = http_get(shard_url(server), {"Range": header})
        assert (header, status, headers["Content-Range"]) == (header, 416, f"bytes */{size}")


def test_resolve_headers_and_head(server: HubServer, dataset_dir: Path) -> None:
    data = (dataset_dir / SHARD).read_bytes()
    commit = HfFileSystem(endpoint=server.url, skip_instance_cache=True)._api.dataset_info(DATASET).sha
    status, headers, body = http_get(shard_url(server), method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["ETag"] == headers["X-Linked-Etag"] == f'"{sha256_hex(data)}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(data))
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["X-Repo-Commit"] == commit
    status, headers, body = http_get(f"{server.url}/datasets/{DATASET}/resolve/main/README.md")
    assert (status, body, headers["ETag"]) == (200, b"hello\n", f'"{HELLO_BLOB_SHA1}"')
    quoted_path = f"{server.url}/datasets/{DATASET}/resolve/main/data%2Fsub%2Fblob.bin"
    assert http_get(quoted_path)[2] == BLOB_BYTES


def test_agent_harnesses_and_unknown_routes(server: HubServer) -> None:
    status, _, body = http_get(f"{server.url}/api/agent-harnesses")
    assert (status, json.loads(body)) == (200, AGENT_HARNESSES) == (200, {"standardEnvVars": [], "harnesses": {}})
    assert http_get(f"{server.url}/no/such/route")[0] == 404
    assert http_get(shard_url(server), method="POST")[0] == 405
    assert [r.path for r in server.stats.log if r.route_kind == "other"] == ["/no/such/route"]
    server.reset_stats()  # the fixture fails a test whose client called an unknown route


@given(size=st.integers(0, 300), first=st.integers(0, 400), span=st.integers(-3, 400))
def test_parse_byte_range_matches_python_slicing(size: int, first: int, span: int) -> None:
    data = bytes(size)
    last = first + span
    try:
        lo, hi = parse_byte_range(f"bytes={first}-{last}", size)
    except RangeNotSatisfiable:
        assert first >= size or last < first
    else:
        assert first < size and last >= first
        assert (lo, hi + 1) == (first, min(last + 1, size))
        assert len(data[lo : hi + 1]) == min(last + 1, size) - first


# ---------------------------------------------------------------------------------- accounting


def test_stats_count_one_range_read_exactly(server: HubServer, fs: HfFileSystem) -> None:
    with fs.open(f"datasets/{DATASET}/{SHARD}", "rb", cache_type="none") as f:
        server.reset_stats()
        f.seek(200)
        assert len(f.read(100)) == 100
    stats = server.stats
    assert stats.total_requests == 1
    assert stats.requests_by_route == {"repo_info": 0, "tree": 0, "paths_info": 0, "resolve": 1, "agent_harnesses": 0, "whoami": 0, "other": 0}
    assert (stats.range_requests, stats.bytes_sent) == (1, 100)
    (record,) = stats.log
    assert (record.method, record.route_kind, record.range, record.status, record.bytes_sent) == (
        "GET",
        "resolve",
        "bytes=200-299",
        206,
        100,
    )
    assert record.path == f"/datasets/{DATASET}/resolve/main/{SHARD}"


def test_stats_are_exact_under_concurrent_readers(server: HubServer, dataset_dir: Path) -> None:
    data = (dataset_dir / SHARD).read_bytes()
    failures: list[str] = []

    def read_slices(offset: int) -> None:
        for start in range(offset, offset + 40, 4):
            body = http_get(shard_url(server), {"Range": f"bytes={start}-{start + 9}"})[2]
            if body != data[start : start + 10]:
                failures.append(f"bad bytes at {start}")

    server.reset_stats()
    threads = [threading.Thread(target=read_slices, args=(40 * i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = server.stats
    assert failures == []
    assert (stats.total_requests, stats.range_requests, stats.bytes_sent) == (80, 80, 800)


def test_file_bodies_are_streamed_not_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with open(folder / "big.bin", "wb") as f:
        for _ in range(48):
            f.write(chunk)
    with HubServer() as hub:
        hub.add_repo("model", "org/big", folder)
        http_get(f"{hub.url}/org/big/resolve/main/big.bin", method="HEAD")  # hash before measuring
        tracemalloc.start()
        try:
            with urllib.request.urlopen(f"{hub.url}/org/big/resolve/main/big.bin", timeout=60) as response:
                digest = hashlib.sha256()
                for piece in iter(lambda: response.read(1 << 20), b""):
                    digest.update(piece)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert digest.hexdigest() == hashlib.sha256(chunk * 48).hexdigest()
    assert peak < 12 * (1 << 20), f"peak {peak} bytes for a 48 MiB file"


# ---------------------------------------------------------------------------------- faults


def test_503_burst_on_resolve_is_ridden_out_by_client_retries(
    server: HubServer, fs: HfFileSystem, dataset_dir: Path
) -> None:
    data = (dataset_dir / SHARD).read_bytes()
    with fs.open(f"datasets/{DATASET}/{SHARD}", "rb", cache_type="none") as f:
        server.reset_stats()
        server.faults.add("resolve", "status", times=2, status=503)
        f.seek(64)
        assert f.read(64) == data[64:128]
    statuses = [(r.route_kind, r.status, r.range) for r in server.stats.log]
    assert statuses == [("resolve", 503, "bytes=64-127")] * 2 + [("resolve", 206, "bytes=64-127")]
    assert server.faults.pending() == []


def test_reset_mid_body_is_an_error_for_a_plain_client(server: HubServer) -> None:
    server.faults.add("resolve", "reset", times=1, after_bytes=1000)
    url = f"{server.url}/{MODEL}/resolve/main/weights.bin"
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
    record = server.stats.log[-1]
    assert (record.status, record.bytes_sent) == (200, 1000)
    status, _, body = http_get(url)  # the fault is spent: the next answer is whole
    assert (status, len(body)) == (200, 256 * 8192 + 4)


def test_reset_mid_body_is_retried_by_hf_file_system(
    server: HubServer, fs: HfFileSystem, dataset_dir: Path
) -> None:
    data = (dataset_dir / SHARD).read_bytes()
    with fs.open(f"datasets/{DATASET}/{SHARD}", "rb", cache_type="none") as f:
        server.reset_stats()
        server.faults.add("resolve", "reset", times=1, after_bytes=10)
        assert f.read(500) == data[:500]
    assert [(r.status, r.bytes_sent) for r in server.stats.log] == [(206, 10), (206, 500)]


def _wait_until_idle(hub: HubServer) -> None:
    """Until every handler has finished (and printed whatever it prints)."""
    deadline = time.monotonic() + 60
    while hub._connections and time.monotonic() < deadline:
        time.sleep(0.02)


def test_dropped_connections_are_quiet_but_real_errors_are_not(
    server: HubServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.faults.add("resolve", "reset", times=1, after_bytes=10)
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        with urllib.request.urlopen(f"{server.url}/{MODEL}/resolve/main/weights.bin", timeout=60) as response:
            response.read()
    idle = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=60)
    idle.request("GET", f"/api/datasets/{DATASET}")
    idle.getresponse().read()
    idle.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    idle.close()  # the client resets its idle keep-alive connection
    _wait_until_idle(server)
    assert "Traceback" not in capsys.readouterr().err

    def broken_answer(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.app, "answer", broken_answer)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        urllib.request.urlopen(f"{server.url}/api/datasets/{DATASET}", timeout=60)
    _wait_until_idle(server)
    assert "RuntimeError: boom" in capsys.readouterr().err


def test_delay_fault_and_any_route_and_path_filter(server: HubServer) -> None:
    server.faults.add("any", "delay", times=1, seconds=0.6, path_contains="README")
    started = time.monotonic()
    status, _, _ = http_get(f"{server.url}/datasets/{DATASET}/resolve/main/README.md")
    assert status == 200 and time.monotonic() - started >= 0.6
    assert server.faults.pending() == []

    server.faults.add("any", "status", times=1, status=429, retry_after=3, path_contains="blob.bin")
    assert http_get(f"{server.url}/datasets/{DATASET}/resolve/main/README.md")[0] == 200  # filtered out
    status, headers, _ = http_get(f"{server.url}/datasets/{DATASET}/resolve/main/{BLOB}")
    assert (status, headers["Retry-After"]) == (429, "3")


def test_invalid_faults_are_refused(server: HubServer) -> None:
    with pytest.raises(ValueError):
        server.faults.add("resolv", "status")
    with pytest.raises(ValueError):
        server.faults.add("resolve", "explode")
    with pytest.raises(ValueError):
        server.faults.add("resolve", "status", times=0)


def test_admin_endpoints_steer_the_server(server: HubServer) -> None:
    admin = AdminClient(server.url)
    pending = admin.add_fault("repo_info", "status", times=2, status=500)
    assert [(f["route_kind"], f["kind"], f["times"], f["status"]) for f in pending] == [("repo_info", "status", 2, 500)]
    assert http_get(f"{server.url}/api/datasets/{DATASET}")[0] == 500
    stats = admin.stats()
    assert stats["requests_by_route"]["repo_info"] == 1 and stats["total_requests"] == 1
    assert stats["log"][0]["status"] == 500
    admin.reset()
    assert admin.stats()["total_requests"] == 0
    assert server.faults.pending() == []
    assert http_get(f"{server.url}/api/datasets/{DATASET}")[0] == 200
    status, _, body = http_get(f"{server.url}/_admin/faults", method="POST", data=b'{"route_kind": "nope", "kind": "x"}')
    assert status == 400 and b"route_kind" in body


# ---------------------------------------------------------------------------------- lifecycle


def test_binds_loopback_unless_told_and_refuses_what_is_not_an_ipv4_address() -> None:
    assert HubServer().host == "127.0.0.1"
    assert HubServer(host="0.0.0.0").host == "0.0.0.0"  # a LAN mirror, asked for explicitly
    for host in ("example.org", "::1", "300.1.1.1"):
        with pytest.raises(ValueError, match="must be an IPv4 address"):
            HubServer(host=host)
    with pytest.raises(ValueError, match="port 70000 is not a TCP port"):
        HubServer(port=70000)


def test_stop_closes_keep_alive_connections(dataset_dir: Path) -> None:
    hub = HubServer().add_repo("dataset", DATASET, dataset_dir).start()
    connection = http.client.HTTPConnection("127.0.0.1", int(hub.url.rsplit(":", 1)[1]), timeout=5)
    connection.request("GET", f"/api/datasets/{DATASET}")
    assert connection.getresponse().read()[:1] == b"{"
    hub.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        connection.request("GET", f"/api/datasets/{DATASET}")
        connection.getresponse().read()
    hub.stop()  # idempotent


def test_serve_forever_prints_url_and_stops_on_ctrl_c(dataset_dir: Path) -> None:
    script = (
        "import sys; from pathlib import Path;"
        "from isles_pipeline.hub.server import serve_forever;"
        "serve_forever(Path(sys.argv[1]), repo_id=sys.argv[2], port=0)"
    )
    repo_root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", script, str(dataset_dir), DATASET],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        match = re.fullmatch(rf"Serving {DATASET} from {re.escape(str(dataset_dir))} at (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        assert http_get(f"{match[1]}/datasets/{DATASET}/resolve/main/README.md")[2] == b"hello\n"
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=120) == 0  # a hang guard, not a speed bound
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack into the report
            child.wait()


def test_digests_outlive_the_process_through_the_journal(tmp_path: Path) -> None:
    """A restarted server reads digests from its journal instead of hashing the files again."""
    from isles_pipeline.hub.repo import DigestCache, file_sha256

    data = tmp_path / "repo" / "data" / "x.parquet"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"a" * 4096)
    journal = tmp_path / "repo" / ".cache" / "digests.jsonl"
    first = file_sha256(data, DigestCache(journal))
    assert first == hashlib.sha256(b"a" * 4096).hexdigest()
    # same size and mtime, other bytes: only a digest read from the journal still says "a"*4096
    stat = data.stat()
    data.write_bytes(b"b" * 4096)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(data, DigestCache(journal)) == first
    assert file_sha256(data, DigestCache()) == hashlib.sha256(b"b" * 4096).hexdigest()


# ---------------------------------------------------------------------------------- hardening


def test_links_out_of_the_root_are_not_served_and_loops_do_not_break_it(dataset_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the repo")
    (dataset_dir / "data" / "leak.txt").symlink_to(secret)
    (dataset_dir / "data" / "outside").symlink_to(tmp_path, target_is_directory=True)
    (dataset_dir / "data" / "loop").symlink_to(dataset_dir / "data", target_is_directory=True)
    (dataset_dir / "copy.bin").symlink_to(dataset_dir / BLOB)  # inside the root: served
    with HubServer() as hub:
        hub.add_repo("dataset", DATASET, dataset_dir)
        assert http_get(shard_url(hub, path="data/leak.txt"))[0] == 404
        assert http_get(shard_url(hub, path="data/outside/secret.txt"))[0] == 404
        assert http_get(shard_url(hub, path="copy.bin"))[2] == BLOB_BYTES
        listing = HfFileSystem(endpoint=hub.url, skip_instance_cache=True).find(f"datasets/{DATASET}")
    assert sorted(p.split(f"{DATASET}/", 1)[1] for p in listing) == ["README.md", "copy.bin", BLOB, SHARD]


def test_a_busy_or_bad_port_is_one_line_naming_the_port(dataset_dir: Path) -> None:
    with HubServer() as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(OSError, match=f"^cannot listen on 127.0.0.1:{port}: Address already in use .*choose --port"):
            HubServer(port=port).start()
    from isles_pipeline.cli import main

    with pytest.raises(SystemExit):
        main(["hub", "serve", str(dataset_dir), "--port", "99999"])


@pytest.mark.parametrize("declared", [str(MAX_BODY_BYTES + 1), "-5"])
def test_request_bodies_are_capped(server: HubServer, declared: str) -> None:
    """Refused on the declared length, before any of the body is read (the body is not even sent:
    a client still sending when the 413 and the close come would see a broken pipe instead)."""
    connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=60)
    connection.putrequest("POST", f"/api/datasets/{DATASET}/paths-info/main")
    connection.putheader("Content-Length", declared)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and b"limited" in response.read()


def test_fault_injection_is_off_unless_enabled(dataset_dir: Path) -> None:
    with HubServer() as hub:
        hub.add_repo("dataset", DATASET, dataset_dir)
        with pytest.raises(RuntimeError, match="fault injection is off"):
            hub.faults.add("resolve", "status", status=503)
        status, _, _ = http_get(f"{hub.url}/_admin/faults", method="POST", data=b'{"route_kind": "resolve", "kind": "status", "status": 503}')
        assert status == 404
        assert http_get(shard_url(hub))[0] == 200


def test_the_real_client_with_telemetry_on_calls_only_known_routes(server: HubServer, tmp_path: Path) -> None:
    """A fresh process, with the environment a user has (telemetry on, Xet on, an AI agent's
    variables if any): the client asks for /api/agent-harnesses and gets the shape it expects."""
    script = (
        "import sys; from huggingface_hub import HfFileSystem, hf_hub_download;"
        "fs = HfFileSystem(endpoint=sys.argv[1], skip_instance_cache=True);"
        f"print(len(fs.cat_file('datasets/{DATASET}/{BLOB}')));"
        f"print(open(hf_hub_download('{MODEL}', 'config.json', endpoint=sys.argv[1], cache_dir=sys.argv[2])).read())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_DISABLE")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), AI_AGENT="some-agent", HF_ENDPOINT=server.url)  # the registry comes from HF_ENDPOINT
    done = subprocess.run([sys.executable, "-c", script, server.url, str(tmp_path / "cache")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2000", '{"channels":', '2}']
    assert server.stats.requests_by_route["agent_harnesses"] >= 1
