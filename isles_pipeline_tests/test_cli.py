"""The ``isles-pipeline`` command as a user runs it: real subprocesses, real files, real servers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID, shard_path
from isles_pipeline.defs.cases import case_inputs
from isles_pipeline.hub.server import HubServer
from isles_pipeline.metrics import HEADLINE_KEYS, score_files
from isles_pipeline_tests.chain import resources_for

REPO_ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = shutil.which("isles-pipeline")
    command = [exe] if exe else [sys.executable, "-m", "isles_pipeline.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=os.environ.copy())


def isles22_file(folder: Path, kind: str) -> Path:
    return folder / f"sub-strokecase0009_ses-0001_{kind}.nii.gz"


def test_score_prints_the_official_numbers_as_json(isles22_dir):
    mask = isles22_file(isles22_dir, "msk")
    done = cli("score", "--pred", str(mask), "--gt", str(mask))
    assert done.returncode == 0, done.stderr
    numbers = json.loads(done.stdout)
    assert list(numbers)[:7] == list(HEADLINE_KEYS) == ["dice", "avd_ml", "lesion_count_diff", "f1_isles22", "f1_isles24", "gt_ml", "pred_ml"]
    assert (numbers["dice"], numbers["avd_ml"], numbers["f1_isles22"], numbers["f1_isles24"]) == (1.0, 0.0, 1.0, 1.0)


def test_segment_on_the_real_isles22_case_reaches_dice_040(isles22_dir, tmp_path):
    out = tmp_path / "pred.nii.gz"
    done = cli(
        "segment", "--dwi", str(isles22_file(isles22_dir, "dwi")), "--adc", str(isles22_file(isles22_dir, "adc")),
        "--out", str(out), "--device", "cpu",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["segmenter"], summary["device"]) == ("rules", "cpu")
    assert summary["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert score_files(out, isles22_file(isles22_dir, "msk")).dice >= 0.40


def test_fetch_prints_a_summary_and_writes_the_shards_bytes(hub, replica_dir, tmp_path):
    case_id = CASE_IDS[0]
    done = cli("fetch", case_id, "--out", str(tmp_path), "--endpoint", hub.url)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    cell = pq.read_table(replica_dir / shard_path(case_id), columns=["adc"]).column("adc")[0].as_py()["bytes"]
    assert summary["files"]["adc"]["sha256"] == hashlib.sha256(cell).hexdigest()
    assert summary["range_requests"] <= 4 and summary["skipped_download"] is False
    assert (tmp_path / "cases" / case_id / "adc.nii.gz").read_bytes() == cell


def test_fetch_of_an_unknown_case_says_what_is_wrong(tmp_path):
    done = cli("fetch", "sub-stroke9999", "--out", str(tmp_path), "--endpoint", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert "unknown ISLES'24 case id 'sub-stroke9999'" in done.stderr
    assert "Traceback" not in done.stderr


def test_replica_build_writes_the_real_layout(tmp_path):
    done = cli("replica", "build", str(tmp_path / "rep"), "--case", CASE_IDS[5], "--case", CASE_IDS[148], "--grid", "tiny", "--ctp-mb", "0.1")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "rep" / "data").iterdir()) == [
        "train-00005-of-00149.parquet", "train-00148-of-00149.parquet"
    ]


def test_demo_runs_the_whole_chain_offline_and_prints_the_report(tmp_path):
    done = cli("demo", "--cases", "2", "--grid", "tiny", "--ctp-mb", "0.1", "--home", str(tmp_path / "isles"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[2/2] sub-stroke0002: fetched" in done.stdout
    assert "- Scored: 2" in done.stdout and "- Failed: 0" in done.stdout
    report = tmp_path / "isles" / "data" / "report"
    assert sorted(p.name for p in report.iterdir()) == ["metrics.csv", "metrics.parquet", "rules", "summary.md"]
    assert sorted(p.name for p in (report / "rules").iterdir()) == [
        "dice_per_case.png", "metrics.csv", "metrics.parquet", "summary.md", "volume_pred_vs_true.png"
    ]
    assert "## Leaderboard: 1 models, ranked on the 2 cases every model has scored or failed" in done.stdout
    assert (tmp_path / "isles" / "data" / "cases" / "sub-stroke0002" / "models" / "rules" / "overlay.png").exists()
    assert (tmp_path / "isles" / "dagster_home" / "dagster.yaml").exists()
    # the runs are in the persistent instance that `dagster dev` will show
    assert any((tmp_path / "isles" / "dagster_home" / "storage").iterdir())


@pytest.mark.timeout(900)
def test_a_demo_keeps_the_results_of_its_own_replica_names_them_and_starts_clean_on_another(tmp_path):
    home = tmp_path / "isles"
    args = ("demo", "--cases", "1", "--grid", "tiny", "--ctp-mb", "0.1", "--home", str(home))
    first = cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"state: a new demo home, {home}" in first.stdout and "replica: building 1 synthetic cases" in first.stdout
    assert "### Dice by model" not in first.stdout and "### Bland-Altman" not in first.stdout  # their images are files here
    # a case outside the demo's, materialised by hand in its instance in between: not in the replica, so it fails
    failed_by_hand = CASE_IDS[8]
    with HubServer() as server, dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        server.add_repo("dataset", DEFAULT_REPO_ID, home / "replica")
        resources = resources_for(server.url, home / "data", home / "models.yaml")
        assert not dg.materialize([case_inputs], instance=instance, resources=resources, partition_key=failed_by_hand,
                                  raise_on_error=False).success

    second = cli(*args)  # the same replica: its results are kept, and what the report counts beyond this run is named
    assert second.returncode == 0, second.stdout + second.stderr
    assert "replica: reusing" in second.stdout and "state: keeping the results of earlier runs on this replica" in second.stdout
    # the case's shard was unchanged and its files intact: nothing was downloaded
    assert "fetched 0.0 MB in 0 requests" in second.stdout
    assert (f"state: the report and the leaderboard also count 1 case(s) of earlier runs kept in {home}, not of this run: "
            f"{failed_by_hand} (failed).") in second.stdout
    assert f"- Expected cases: 2: {CASE_IDS[0]}, {failed_by_hand} (" in second.stdout and "- Failed: 1" in second.stdout

    third = cli(*args[:2], "2", *args[3:])  # another replica (2 cases): the earlier results are removed first
    assert third.returncode == 0, third.stdout + third.stderr
    assert (f"state: the earlier runs in {home} were on another replica (1 cases, grid tiny, ctp 0.1 MB): removed data, "
            "dagster_home, models.yaml, so this run (2 cases, grid tiny, ctp 0.1 MB) starts clean") in third.stdout
    assert f"- Expected cases: 2: {CASE_IDS[0]}, {CASE_IDS[1]} (" in third.stdout and "- Scored: 2\n- Failed: 0\n" in third.stdout
    assert "also count" not in third.stdout and "**Synthetic data.**" in third.stdout
    assert "(synthetic replica, grid tiny): 2 scored" in third.stdout
    assert "## Leaderboard: 1 models, ranked on the 2 cases every model has scored or failed" in third.stdout


def test_a_demo_never_removes_results_it_did_not_make(tmp_path):
    (tmp_path / "data" / "cases").mkdir(parents=True)
    done = cli("demo", "--cases", "1", "--grid", "tiny", "--home", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip() == (
        f"isles-pipeline demo: error: {tmp_path} holds data but no demo replica ({tmp_path / 'replica' / 'replica.json'}): "
        "not a demo's folder, so nothing is removed; pass another --home, or remove them yourself")
    assert (tmp_path / "data" / "cases").is_dir() and not (tmp_path / "replica").exists()


# --- options are checked before any work, and errors are one line ------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["segment", "--dwi", "d.nii.gz", "--adc", "a.nii.gz", "--out", "p.nii.gz", "--segmenter", "rulez"],
         "argument --segmenter: unknown segmenter 'rulez': expected one of rules, network"),
        (["segment", "--dwi", "d.nii.gz", "--adc", "a.nii.gz", "--out", "p.nii.gz", "--device", "gpu"],
         "argument --device: unknown device 'gpu': expected auto, cpu, cuda or cuda:N"),
        (["demo", "--segmenter", "unet"], "argument --segmenter: unknown segmenter 'unet'"),
        (["demo", "--cases", "500"], "argument --cases: --cases must be a number from 1 to 149, got '500'"),
        (["hub", "serve", ".", "--port", "99999"], "argument --port: port '99999' is not a TCP port (0-65535)"),
    ],
)
def test_a_mistyped_option_is_one_line_before_any_work(args, message, tmp_path):
    done = cli(*args)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert message in line and line.endswith("--help)"), line


def test_missing_input_files_are_named_together_in_one_line(isles22_dir, tmp_path):
    pred, gt = tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz"
    done = cli("score", "--pred", str(pred), "--gt", str(gt))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"isles-pipeline score: error: no such file: --pred {pred}; --gt {gt} "
                                        "(give the path of an existing .nii or .nii.gz file for each)"]
    done = cli("score", "--pred", str(isles22_file(isles22_dir, "msk")), "--gt", str(gt))
    assert done.stderr.splitlines() == [f"isles-pipeline score: error: no such file: --gt {gt} "
                                        "(give the path of an existing .nii or .nii.gz file for it)"]
    done = cli("segment", "--dwi", str(isles22_file(isles22_dir, "dwi")), "--adc", str(tmp_path / "adc.nii"),
               "--image", f"tmax={tmp_path / 'tmax.nii'}", "--out", str(pred))
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"isles-pipeline segment: error: no such file: --adc {tmp_path / 'adc.nii'}; --image tmax {tmp_path / 'tmax.nii'} "
        "(give the path of an existing .nii or .nii.gz file for each)"]
    assert not pred.exists()


def test_an_unknown_case_id_gets_the_nearest_valid_ids(tmp_path):
    done = cli("fetch", "sub-stroke0125", "--out", str(tmp_path), "--endpoint", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert done.stderr.strip() == ("isles-pipeline fetch: error: unknown ISLES'24 case id 'sub-stroke0125'; "
                                   "the nearest valid ids are sub-stroke0119 and sub-stroke0133")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(isles22_dir, tmp_path):
    done = cli("segment", "--dwi", str(isles22_file(isles22_dir, "dwi")), "--adc", str(isles22_file(isles22_dir, "adc")),
               "--out", str(tmp_path / "p.nii.gz"), "--device", "cuda")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "isles-pipeline segment: error: device 'cuda' was requested but CUDA is not available on this machine; use 'auto' or 'cpu'"
    ]
