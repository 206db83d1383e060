"""The README's command blocks, run as written in a fresh shell.

Each block is taken from README.md itself and run by ``bash -e`` in an empty folder (holding only
a copy of ``workspace.yaml``), with the environment of a new login: ``PATH`` with this venv's
``bin`` (the README's set-up activates it) and a fresh ``HOME``, so ``~/.cache/huggingface`` is
empty and no variable of the test session reaches the commands. The only edit is the port: the
README's ``8000`` (and ``dagster dev``'s default) become free ports, so that a busy port on the
machine cannot fail the test. Telemetry and every other client default stay as a user has them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from isles_devkit.dagster_dev import GraphQLClient, free_port, stop_process_group, wait_for_server
from isles_pipeline.store import sha256_hex

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
CASE = "sub-stroke0001"


def bash_blocks(markdown: str) -> list[str]:
    """The ```bash blocks of a markdown text, in order."""
    return re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)


def block_with(*needles: str) -> str:
    """The one README block that contains every needle."""
    found = [b for b in bash_blocks(README.read_text()) if all(n in b for n in needles)]
    assert len(found) == 1, f"expected one README block with {needles}, found {len(found)}"
    return found[0]


def with_ports(block: str, hub_port: int, ui_port: int | None = None) -> str:
    block = block.replace("--port 8000", f"--port {hub_port}").replace("127.0.0.1:8000", f"127.0.0.1:{hub_port}")
    if ui_port is not None:
        block = block.replace("dagster dev -w workspace.yaml", f"dagster dev -w workspace.yaml -p {ui_port}")
    return block


def fresh_shell_env(home: Path) -> dict[str, str]:
    return {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def run_block(block: str, cwd: Path, timeout_s: float, log: Path) -> subprocess.CompletedProcess:
    """Run a block in its own session and kill what it left in the background (``... &``)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-e", "-c", block], cwd=cwd, env=fresh_shell_env(cwd / "home"), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            process.wait(timeout=timeout_s)
        finally:
            stop_process_group(process, grace_s=10)
    return subprocess.CompletedProcess(block, process.returncode, log.read_text(errors="replace"))


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """An empty folder as a user's, after the README's "Run it" block (`isles-pipeline demo`)."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(REPO_ROOT / "workspace.yaml", folder / "workspace.yaml")
    (folder / "home").mkdir()
    block = block_with("isles-pipeline demo")
    done = run_block(block, folder, timeout_s=600, log=folder / "demo.log")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Traceback" not in done.stdout
    assert (folder / ".isles" / "data" / "report" / "metrics.csv").is_file()
    return folder


def test_the_demo_block_runs_in_a_fresh_shell(user_folder: Path) -> None:
    log = (user_folder / "demo.log").read_text()
    assert "- Scored: 8\n- Failed: 0\n" in log, log[-2000:]


def test_the_plain_shell_fetch_block_writes_the_shards_files(user_folder: Path) -> None:
    block = with_ports(block_with("hub serve", "isles-pipeline fetch"), free_port())
    done = run_block(block, user_folder, timeout_s=120, log=user_folder / "fetch.log")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Traceback" not in done.stdout
    summary = json.loads(done.stdout[done.stdout.index("{"): done.stdout.rindex("}") + 1])
    assert summary["case_id"] == CASE and summary["range_requests"] <= 4
    case_dir = user_folder / "data" / "cases" / CASE
    for column, record in summary["files"].items():
        assert sha256_hex((case_dir / record["name"]).read_bytes()) == record["sha256"], column
    # The shards' files are the demo's: the same bytes, fetched again from the served replica.
    demo_dir = user_folder / ".isles" / "data" / "cases" / CASE
    for record in summary["files"].values():
        assert (case_dir / record["name"]).read_bytes() == (demo_dir / record["name"]).read_bytes()


def readme_folders() -> set[str]:
    """The folders in the clone that the README's blocks write to (outputs, data dirs, DAGSTER_HOMEs)."""
    found = set()
    for block in bash_blocks(README.read_text()):
        found |= set(re.findall(r"--out (\w[\w./-]*)", block))
        found |= set(re.findall(r"(?:ISLES_DATA_DIR|DAGSTER_HOME)=\$PWD/([\w./-]+)", block))
        found |= set(re.findall(r"mkdir -p ([\w./-]+)", block))
    return found


def test_what_the_readme_writes_into_the_clone_is_ignored_by_git() -> None:
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    folders = readme_folders() | {".isles"}  # the demo's default --home
    assert {"data", "dagster_home", ".isles/data", ".isles/dagster_home"} <= folders
    for folder in sorted(folders):
        ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", f"{folder}/cases/x.nii.gz"])
        assert ignored.returncode == 0, f"{folder}/ is written by a README block but git does not ignore it"


def test_the_demo_prints_the_readmes_ui_block(user_folder: Path) -> None:
    """The lines the demo prints for the UI are the README's block, with the user's paths."""
    log = (user_folder / "demo.log").read_text()
    printed = log[log.index("Browse the runs"):].splitlines()[1:3]
    where = str(user_folder.resolve()) + "/"
    printed = [" ".join(line.replace(where, "").split()) for line in printed]
    readme = block_with("hub serve", "dagster dev").replace("\\\n", " ").replace("$PWD/", "")
    assert printed == [" ".join(line.split()) for line in readme.strip().splitlines()]


def test_a_case_materialises_in_dagster_dev_started_the_readmes_way(user_folder: Path) -> None:
    """A case not yet in the data folder, materialised from the UI's GraphQL API."""
    case_id = "sub-stroke0005"
    case_dir = user_folder / ".isles" / "data" / "cases" / case_id
    shutil.rmtree(case_dir)
    ui_port = free_port()
    block = with_ports(block_with("hub serve", "dagster dev"), free_port(), ui_port)
    log = user_folder / "dagster_dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-e", "-c", block], cwd=user_folder, env=fresh_shell_env(user_folder / "home"), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{ui_port}"
        wait_for_server(url, process, log)
        client = GraphQLClient(url)
        client.wait_for_locations()
        backfill = client.wait_for_backfill(client.launch_asset_backfill(["case_inputs"], [case_id]))
        assert backfill["status"] == "COMPLETED_SUCCESS", client.describe_failure(backfill)
        metadata = client.asset_partitions("case_inputs", [case_id]).metadata[case_id]
    finally:
        stop_process_group(process)
    text = log.read_text(errors="replace")
    assert "AttributeError" not in text and "Exceeded max_retries" not in text
    assert 0 < metadata["bytes_transferred"] < 0.2 * metadata["shard_bytes"]
    manifest = json.loads((case_dir / "source.json").read_text())
    for column, record in manifest["files"].items():
        assert metadata[f"sha256_{column}"] == record["sha256"] == sha256_hex((case_dir / record["name"]).read_bytes())
