"""CaseStore: atomic writes on a local disk, one PUT per file on object stores, and the temporary
files of crashed writes removed when the case is fetched next (local, memory:// and an S3 API
server: moto's server mode on 127.0.0.1, through s3fs, the client a lab uses)."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from upath import UPath

from isles_pipeline.inputs import fetch_case, read_manifest
from isles_pipeline.source import ShardReader, ShardSource
from isles_pipeline.store import LEFTOVER_MIN_AGE_S, TMP_MARK, CaseStore, sha256_hex

from .conftest import REPLICA_CASES

CASE = REPLICA_CASES[0]
DATA = b"lesion mask bytes" * 1000


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3 API server on 127.0.0.1 with one empty bucket, and the standard AWS_* variables a lab
    sets for MinIO or another S3 API."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency: pip install -c constraints.txt -e '.[dev]'")
    pytest.importorskip("s3fs", reason="s3fs is a dev dependency: pip install -c constraints.txt -e '.[dev]'")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("isles-bucket")
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def s3_operations(store: CaseStore) -> Counter:
    """Counts of the S3 operations the store's client sends (botocore's own event hook)."""
    calls: Counter = Counter()
    store.root.fs.s3.meta.events.register("before-call.s3", lambda model, **_: calls.update([model.name]))
    return calls


def test_a_local_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = CaseStore(tmp_path)
    target = store.case_path(CASE, "x.bin")
    store.write_bytes(target, b"old")
    assert store.write_bytes(target, DATA) == sha256_hex(DATA)
    assert Path(target.path).read_bytes() == DATA
    assert sorted(p.name for p in Path(tmp_path, "cases", CASE).iterdir()) == ["x.bin"]


def test_an_object_store_write_is_one_put_with_no_temporary_object(s3_endpoint) -> None:
    store = CaseStore("s3://isles-bucket/run1")
    calls = s3_operations(store)
    target = store.case_path(CASE, "x.bin")
    assert store.write_bytes(target, DATA) == sha256_hex(DATA)
    assert calls == Counter({"PutObject": 1})
    assert target.read_bytes() == DATA
    assert [p.name for p in store.case_path(CASE).iterdir()] == ["x.bin"]


def test_an_object_store_write_reaches_minio_style_endpoints_with_only_aws_variables(s3_endpoint) -> None:
    store = CaseStore("s3://isles-bucket/run2")
    store.write_text(store.path("report", "report.md"), "# report\n")
    assert store.sha256(store.path("report", "report.md")) == sha256_hex(b"# report\n")


def crash_leftover(store: CaseStore, case_id: str, name: str, age_s: float) -> UPath:
    """What a writer killed between its temporary write and its rename leaves: a temporary sibling."""
    path = store.case_path(case_id, f"{name}{TMP_MARK}0123abcd")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a file")
    if path.protocol in ("", "file", "local"):
        old = time.time() - age_s
        os.utime(path.path, (old, old))
    return path


@pytest.mark.parametrize("kind", ["local", "memory", "s3"])
def test_fetching_a_case_removes_what_crashed_writes_left_and_counts_it(kind, hub, tmp_path: Path, request) -> None:
    root = {"local": str(tmp_path / "data"), "memory": f"memory://leftovers-{tmp_path.name}", "s3": f"s3://isles-bucket/{tmp_path.name}"}[kind]
    if kind == "s3":
        request.getfixturevalue("s3_endpoint")
    store = CaseStore(root)
    reader = ShardReader(ShardSource(endpoint=hub.url))
    first = fetch_case(reader, store, CASE)
    assert first.leftovers_removed == 0
    dead = [crash_leftover(store, CASE, "dwi.nii.gz", age_s=LEFTOVER_MIN_AGE_S + 5), crash_leftover(store, CASE, "manifest.json", age_s=3600)]
    again = fetch_case(reader, store, CASE)
    assert (again.leftovers_removed, again.skipped) == (2, True)
    assert not any(p.exists() for p in dead)
    assert list(store.leftovers()) == []
    assert read_manifest(store, CASE) == first.manifest
    assert again.summary()["leftovers_removed"] == 2


def test_a_young_local_temporary_file_may_be_a_live_write_and_is_kept(tmp_path: Path) -> None:
    store = CaseStore(tmp_path)
    young = crash_leftover(store, CASE, "prediction.nii.gz", age_s=1)
    old = crash_leftover(store, CASE, "metrics.json", age_s=LEFTOVER_MIN_AGE_S + 1)
    other_case = crash_leftover(store, REPLICA_CASES[1], "metrics.json", age_s=3600)
    assert store.remove_leftovers(CASE) == 1
    assert (young.exists(), old.exists(), other_case.exists()) == (True, False, True)
