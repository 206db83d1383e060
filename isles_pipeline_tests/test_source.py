"""The case data path: the real HfFileSystem against the local Hub server, on replica shards."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from isles_devkit.processes import run_measured, user_env
from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID, IMAGE_COLUMNS, NEEDED_COLUMNS, REPLICA_KEY, shard_path
from isles_pipeline.hub import replica
from isles_pipeline.hub.phantom import make_case
from isles_pipeline.hub.server import HubServer
from isles_pipeline.inputs import fetch_case, read_manifest
from isles_pipeline.nifti import as_mask, voxel_volume_ml
from isles_pipeline.source import CaseDataError, ShardReader, ShardSource, column_chunk_bytes
from isles_pipeline.store import CaseStore

CASE = CASE_IDS[1]


def shard_cells(replica_dir: Path, case_id: str) -> dict[str, bytes]:
    table = pq.read_table(replica_dir / shard_path(case_id), columns=list(IMAGE_COLUMNS))
    return {column: table.column(column)[0].as_py()["bytes"] for column in IMAGE_COLUMNS}


def needed_chunk_bytes(path: Path) -> int:
    """Bytes of the needed columns' chunks, from the shard's own footer."""
    return column_chunk_bytes(pq.read_metadata(path), tuple(NEEDED_COLUMNS))


def reader_for(server: HubServer, revision: str = "main") -> ShardReader:
    return ShardReader(ShardSource(DEFAULT_REPO_ID, revision, server.url))


def test_read_case_returns_the_shards_original_bytes(hub, replica_dir):
    shard = reader_for(hub).read_case(CASE)
    expected = shard_cells(replica_dir, CASE)
    assert {c: hashlib.sha256(b).hexdigest() for c, b in shard.files.items()} == {
        c: hashlib.sha256(b).hexdigest() for c, b in expected.items()
    }
    assert shard.names["dwi"] == f"{CASE}_ses-02_space-ncct_dwi.nii.gz"
    assert shard.grid.shape == (48, 48, 16)
    phantom = make_case(CASE, grid="tiny")
    truth_ml = as_mask(phantom.lesion_mask).sum() * voxel_volume_ml(phantom.lesion_mask.header.get_best_affine())
    assert shard.lesion_ml == pytest.approx(truth_ml, rel=1e-12) and shard.lesion_ml > 0


def test_read_touches_only_the_needed_column_chunks_of_one_shard(hub, replica_dir):
    path = replica_dir / shard_path(CASE)
    shard = reader_for(hub).read_case(CASE)
    resolves = [r for r in hub.stats.log if r.route_kind == "resolve"]
    assert {r.path.rsplit("/", 1)[-1] for r in resolves} == {path.name}
    assert len(resolves) == shard.transfer.requests <= 4
    needed = needed_chunk_bytes(path)
    assert shard.transfer.bytes <= 1.05 * needed + 128 * 1024
    # the 2 MB ctp column is never fetched
    assert shard.transfer.bytes < path.stat().st_size / 4


def test_revision_is_resolved_to_a_commit_and_can_be_pinned(hub):
    commit = reader_for(hub).commit()
    assert len(commit) == 40 and int(commit, 16) >= 0
    pinned = reader_for(hub, revision=commit).read_case(CASE)
    assert pinned.identity.revision == commit


def test_unknown_revision_and_missing_shard_fail_clearly(hub):
    with pytest.raises(Exception, match="nope"):
        reader_for(hub, revision="nope").identify(CASE)
    with pytest.raises(CaseDataError, match=f"case {CASE_IDS[100]}: shard data/train-00100-of-00149.parquet not found"):
        reader_for(hub).identify(CASE_IDS[100])


# --- validation: each bad shard fails with the case and the cause ------------------------------


def bad_rows(case_id: str) -> dict[str, object]:
    good = replica.case_row(case_id, grid="tiny", ctp_mb=0.05)
    other = replica.case_row(CASE_IDS[0], grid="tiny", ctp_mb=0.05)
    truncated = dict(good["adc"], bytes=good["adc"]["bytes"][: len(good["adc"]["bytes"]) // 2])
    return {
        "two rows": [good, good],
        "wrong subject": [{**good, "subject_id": CASE_IDS[0]}],
        "null dwi": [{**good, "dwi": None}],
        "garbage dwi": [{**good, "dwi": replica.garbage_cell()}],
        "garbage gzip dwi": [{**good, "dwi": replica.garbage_cell(gzip_magic=True)}],
        "truncated adc": [{**good, "adc": truncated}],
        "cropped adc": [{**good, "adc": replica.cropped_cell(good["adc"])}],
        "shifted mask": [{**good, "lesion_mask": replica.shifted_cell(good["lesion_mask"])}],
        "4-D dwi": [{**good, "dwi": replica.four_d_cell(good["dwi"])}],
        "another case's images": [{**other, "subject_id": case_id}],
    }


EXPECTED_CAUSE = {
    "two rows": "shard has 2 rows, expected exactly 1",
    "wrong subject": f"shard holds subject_id '{CASE_IDS[0]}', expected '{CASE}'",
    "null dwi": "dwi is missing \\(null\\)",
    "garbage dwi": "dwi: not a NIfTI image",
    "garbage gzip dwi": "dwi: not a NIfTI image",
    "truncated adc": "adc: (truncated|corrupt)",
    "cropped adc": "adc shape \\(48, 48, 14\\) differs from dwi shape \\(48, 48, 16\\)",
    "shifted mask": "lesion_mask affine differs from dwi affine by 5",
    "4-D dwi": "dwi: shape \\(48, 48, 16, 2\\) is 4-D with 2 volumes",
}


@pytest.fixture(scope="module")
def bad_repo(tmp_path_factory) -> Path:
    """A repo whose shard for CASE is rewritten per test."""
    return tmp_path_factory.mktemp("bad_repo")


@pytest.mark.parametrize("kind", sorted(EXPECTED_CAUSE))
def test_bad_shard_fails_with_the_case_and_the_cause(kind, tmp_path):
    replica.write_rows(tmp_path / shard_path(CASE), bad_rows(CASE)[kind])
    with HubServer(faults=True) as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, tmp_path)
        store = CaseStore(tmp_path / "out")
        with pytest.raises(CaseDataError, match=f"^case {CASE}: {EXPECTED_CAUSE[kind]}") as caught:
            fetch_case(reader_for(server), store, CASE)
    assert caught.value.case_id == CASE
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_shard_without_a_needed_column_names_it(tmp_path):
    schema = replica.shard_schema()
    schema = schema.remove(schema.get_field_index("lesion_mask"))
    row = {k: v for k, v in replica.case_row(CASE, grid="tiny", ctp_mb=0.05).items() if k != "lesion_mask"}
    replica.write_shard(tmp_path / shard_path(CASE), row, schema=schema)
    with HubServer(faults=True) as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, tmp_path)
        with pytest.raises(CaseDataError, match=f"case {CASE}: shard lacks column\\(s\\) lesion_mask"):
            reader_for(server).read_case(CASE)


def test_not_a_parquet_file(tmp_path):
    target = tmp_path / shard_path(CASE)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"<html>gateway timeout</html>" * 1000)
    with HubServer(faults=True) as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, tmp_path)
        with pytest.raises(CaseDataError, match=f"case {CASE}: shard is not a readable parquet file"):
            reader_for(server).read_case(CASE)


# --- the store: atomic files, skip when unchanged, a bad shard never spoils good files -------


def test_fetch_writes_files_with_the_shards_sha256_and_a_manifest(hub, replica_dir, tmp_path):
    store = CaseStore(tmp_path)
    result = fetch_case(reader_for(hub), store, CASE)
    expected = {c: hashlib.sha256(b).hexdigest() for c, b in shard_cells(replica_dir, CASE).items()}
    on_disk = {c: hashlib.sha256((tmp_path / "cases" / CASE / f"{c}.nii.gz").read_bytes()).hexdigest() for c in IMAGE_COLUMNS}
    assert on_disk == expected
    assert {c: f.sha256 for c, f in read_manifest(store, CASE).files.items()} == expected
    assert result.manifest.shard_oid == hashlib.sha256((replica_dir / shard_path(CASE)).read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "cases" / CASE).iterdir()) == [
        "adc.nii.gz", "dwi.nii.gz", "lesion_mask.nii.gz", "source.json"
    ]


def test_a_replicas_shard_says_it_is_synthetic_and_the_case_records_it(hub, replica_dir, tmp_path):
    result = fetch_case(reader_for(hub), CaseStore(tmp_path), CASE)
    assert result.manifest.replica == {"synthetic": True, "grid": "tiny", "seed": 0}
    assert read_manifest(CaseStore(tmp_path), CASE).replica == result.manifest.replica
    assert result.summary()["replica"]["grid"] == "tiny"


@pytest.mark.parametrize(
    "note, recorded",
    [
        (None, None),  # the real dataset's shards carry no note
        ('{"synthetic": true, "grid": "tiny", "seed": 3}', {"synthetic": True, "grid": "tiny", "seed": 3}),
        ('{"grid": 7, "seed": "x", "token": "secret"}', {"synthetic": True}),  # off the allow-list: dropped
        ("not json", {"synthetic": True}),
    ],
)
def test_the_replica_note_is_read_from_the_footer_allow_listed(note, recorded, tmp_path):
    schema = replica.shard_schema()
    metadata = {k: v for k, v in schema.metadata.items() if k != REPLICA_KEY.encode()}
    schema = schema.with_metadata({**metadata, **({REPLICA_KEY: note} if note is not None else {})})
    replica.write_shard(tmp_path / shard_path(CASE), replica.case_row(CASE, grid="tiny", ctp_mb=0.05), schema=schema)
    with HubServer() as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, tmp_path)
        assert reader_for(server).read_case(CASE).replica == recorded


def test_unchanged_shard_with_intact_files_skips_the_download(hub, tmp_path):
    store = CaseStore(tmp_path)
    first = fetch_case(reader_for(hub), store, CASE)
    hub.reset_stats()
    second = fetch_case(reader_for(hub), store, CASE)
    assert (first.skipped, second.skipped) == (False, True)
    assert hub.stats.requests_by_route["resolve"] == 0
    # a damaged file is noticed and fetched again
    (tmp_path / "cases" / CASE / "adc.nii.gz").write_bytes(b"damaged")
    third = fetch_case(reader_for(hub), store, CASE)
    assert third.skipped is False and third.transfer.requests >= 2
    assert store.sha256(store.case_path(CASE, "adc.nii.gz")) == first.manifest.files["adc"].sha256


def test_a_bad_new_shard_leaves_the_previous_good_files_intact(tmp_path):
    repo, out = tmp_path / "repo", CaseStore(tmp_path / "out")
    good = replica.case_row(CASE, grid="tiny", ctp_mb=0.05)
    replica.write_shard(repo / shard_path(CASE), good)
    with HubServer(faults=True) as server:
        server.add_repo("dataset", DEFAULT_REPO_ID, repo)
        before = fetch_case(reader_for(server), out, CASE).manifest
        replica.write_shard(repo / shard_path(CASE), {**good, "adc": replica.cropped_cell(good["adc"])})
        with pytest.raises(CaseDataError, match="adc shape"):
            fetch_case(reader_for(server), out, CASE)
    assert read_manifest(out, CASE) == before
    assert all(out.sha256(out.case_path(CASE, f.name)) == f.sha256 for f in before.files.values())
    assert list(out.leftovers()) == []


def test_atomic_write_failure_leaves_no_partial_file(tmp_path):
    store = CaseStore(tmp_path)
    target = store.path("cases", CASE, "dwi.nii.gz")
    target.mkdir(parents=True)  # a directory where the file should go: the rename fails
    with pytest.raises(OSError):
        store.write_bytes(target, b"x" * 1000)
    assert list(store.leftovers()) == []
    assert target.is_dir()


def test_fetch_into_fsspec_memory_store(hub, replica_dir):
    store = CaseStore(f"memory://isles-test-{CASE}")
    fetch_case(reader_for(hub), store, CASE)
    expected = hashlib.sha256(shard_cells(replica_dir, CASE)["dwi"]).hexdigest()
    assert store.sha256(store.case_path(CASE, "dwi.nii.gz")) == expected


# --- transient Hub faults are ridden out ------------------------------------------------------


@pytest.mark.parametrize("route", ["repo_info", "tree", "resolve"])
def test_a_503_burst_on_each_route_is_ridden_out(hub, replica_dir, tmp_path, route):
    hub.faults.add(route, "status", times=2, status=503)
    result = fetch_case(reader_for(hub), CaseStore(tmp_path), CASE)
    statuses = [r.status for r in hub.stats.log if r.route_kind == route]
    assert statuses.count(503) == 2 and statuses[-1] in (200, 206)
    assert result.manifest.files["dwi"].sha256 == hashlib.sha256(shard_cells(replica_dir, CASE)["dwi"]).hexdigest()


def test_a_connection_reset_mid_body_is_ridden_out(hub, replica_dir, tmp_path):
    hub.faults.add("resolve", "reset", times=1, path_contains="parquet")
    result = fetch_case(reader_for(hub), CaseStore(tmp_path), CASE)
    assert result.manifest.files["adc"].sha256 == hashlib.sha256(shard_cells(replica_dir, CASE)["adc"]).hexdigest()
    assert len([r for r in hub.stats.log if r.route_kind == "resolve"]) == result.transfer.requests + 1


PRIVATE_REPO = "lab/isles24-private"


def hf_auth_login(token: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``hf auth login --token`` as a user runs it: it asks the Hub who the token is, then stores it."""
    hf = Path(sys.executable).with_name("hf")
    return subprocess.run([str(hf), "auth", "login", "--token", token], env=env, capture_output=True, text=True, timeout=120)


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_token_is_hf_token_else_the_stored_login_and_never_written(hub, replica_dir, tmp_path):
    """A private dataset repo, read by ``isles-pipeline fetch`` in fresh processes: a stored login
    (``hf auth login`` in a fresh HF_HOME) is sent as the Authorization header, ``HF_TOKEN`` comes
    before it, and the token appears in no output, log line or file the pipeline writes."""
    secret = "hf_PrivateLogin0123456789abcdef"
    hub.add_repo("dataset", PRIVATE_REPO, replica_dir, access="private", token=secret)
    hf_home = tmp_path / "hf-home"
    env = user_env(HF_HOME=str(hf_home), HF_ENDPOINT=hub.url, ISLES_HF_REPO=PRIVATE_REPO)

    not_logged_in = run_measured(["fetch", CASE, "--out", str(tmp_path / "a")], env)
    assert not_logged_in.returncode != 0
    assert "repo not found (or private: set HF_TOKEN or run `hf auth login`)" in not_logged_in.stderr
    assert not any(r.authenticated for r in hub.stats.log)

    login = hf_auth_login(secret, env)
    assert login.returncode == 0, login.stderr
    assert (hf_home / "token").read_text().strip() == secret  # where the client keeps it, not the pipeline
    hub.reset_stats()
    data = tmp_path / "data"
    done = run_measured(["fetch", CASE, "--out", str(data)], env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["files"]["dwi"]["sha256"] == hashlib.sha256(shard_cells(replica_dir, CASE)["dwi"]).hexdigest()
    assert hub.stats.log and all(r.authenticated for r in hub.stats.log)
    assert secret not in done.stdout + done.stderr
    assert files_holding(data, secret) == []

    overridden = run_measured(["fetch", CASE, "--out", str(tmp_path / "b")], {**env, "HF_TOKEN": "hf_NotTheLoginToken"})
    assert overridden.returncode != 0
    assert "access denied (HTTP 401)" in overridden.stderr  # HF_TOKEN was sent, not the stored login
    assert secret not in overridden.stdout + overridden.stderr


# --- why the column chunks are fetched by the reader, not by pyarrow's pre-buffering ------------


def shard_file(hub, case_id: str):
    from huggingface_hub import HfFileSystem

    from isles_pipeline.source import Transfer, _ShardFile

    fs = HfFileSystem(endpoint=hub.url, token=False, skip_instance_cache=True)
    remote = fs.open(f"datasets/{DEFAULT_REPO_ID}/{shard_path(case_id)}", "rb", cache_type="none")
    return _ShardFile(remote, Transfer(), 1 << 30, case_id)


def test_every_read_of_the_shard_happens_in_the_calling_thread(hub):
    import threading

    from isles_pipeline.source import _read_columns

    remote = shard_file(hub, CASE)
    table = _read_columns(CASE, remote, IMAGE_COLUMNS)
    assert table.column("subject_id")[0].as_py() == CASE
    assert remote.readers == {threading.get_ident()}
    assert remote._transfer.requests == 3  # footer, subject_id, then dwi + adc + lesion_mask in one


def test_pyarrows_pre_buffering_reads_a_python_file_on_its_own_threads(hub):
    """The reason for the above: with pre_buffer (pyarrow's default), Arrow's IO threads call
    into Python. If a pyarrow release stops doing so, this fails and the stock path can return."""
    import threading

    remote = shard_file(hub, CASE)
    pq.ParquetFile(remote).read(columns=list(NEEDED_COLUMNS), use_threads=False)
    assert remote.readers - {threading.get_ident()}
