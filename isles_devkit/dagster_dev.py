"""The whole stack, for end-to-end tests and scripts: a replica behind the local Hub server, a
fresh DAGSTER_HOME with the project's instance config, and ``dagster dev`` (webserver + daemon +
code server) on a free loopback port, with a small GraphQL client and a clean stop.

``dagster dev`` runs in its own process group (``start_new_session=True``): its children (the
webserver, the daemon, the code server, every run worker) share that group, so the stop signals
the whole group (SIGINT, then SIGKILL) and then checks that no process of the group is left.

Usage::

    with dagster_dev_stack(tmp_path / "stack", replica_dir) as stack:
        backfill_id = stack.client.launch_asset_backfill(["case_inputs"], case_ids)
        stack.client.wait_for_backfill(backfill_id)
        # the chain_automation sensor runs every registered model on the fetched cases
        stack.client.wait_for_materialized("case_metrics", model_keys(case_ids))
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isles_devkit.postgres import fresh_database
from isles_devkit.processes import live_processes_in_group, process_dirs, stat_fields
from isles_pipeline.catalogue import DEFAULT_REPO_ID
from isles_pipeline.demo import prepare_dagster_home
from isles_pipeline.settings import postgres_configured

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAIN_ASSETS = ("case_inputs", "case_prediction", "case_metrics")
MODEL_ASSETS = CHAIN_ASSETS[1:]


def model_keys(case_ids: Sequence[str], model: str = "rules") -> list[str]:
    """The (case, model) partition keys of the cases for one model."""
    return [f"{case_id}|{model}" for case_id in case_ids]
# Variables of the parent that must not leak into the stack: tokens, where things are, and (by
# prefix) every setting of the pipeline (ISLES_SEGMENTER, ISLES_DEVICE, ISLES_BACKFILL_CRON ...).
SCRUBBED_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN", "HF_ENDPOINT", "HF_HOME", "DAGSTER_HOME")
SCRUBBED_PREFIX = "ISLES_"
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS"}
BACKFILL_FAILED = {"FAILED", "COMPLETED_FAILED", "CANCELED"}


class StackError(RuntimeError):
    """The stack did not start, a GraphQL call failed, or a backfill did not succeed."""


# --------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _polls(timeout_s: float, interval_s: float) -> Iterator[None]:
    """Yield at once, then every ``interval_s`` seconds until ``timeout_s`` have passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        yield
        if time.monotonic() > deadline:
            return
        time.sleep(interval_s)


def live_processes_with_env(key: str, value: str) -> list[int]:
    """Pids of running processes whose environment has ``key=value``: the stack's processes
    carry its DAGSTER_HOME, also any that left the process group."""
    wanted, pids = f"{key}={value}".encode(), []
    for entry in process_dirs():
        if int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = stat_fields(entry)[0]
        except OSError:
            continue
        if wanted in environ.split(b"\0") and state != "Z":
            pids.append(int(entry.name))
    return pids


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    for _ in _polls(timeout_s, 0.2):
        if not live_processes_in_group(pgid):
            return True
    return False


def stop_process_group(process: subprocess.Popen, grace_s: float = 30.0) -> list[int]:
    """Stop the group led by ``process``: SIGINT (dagster dev's clean shutdown), then SIGKILL.

    Returns the pids still alive afterwards (empty when the group is gone).
    """
    pgid = process.pid  # the leader of its own session and group
    _signal_group(pgid, signal.SIGINT)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    if not _wait_group_gone(pgid, timeout_s=5.0):
        _signal_group(pgid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=10)
    _wait_group_gone(pgid, timeout_s=10.0)
    return live_processes_in_group(pgid)


def start_dagster_dev(port: int, env: dict[str, str], log_path: Path, repo_root: Path = REPO_ROOT) -> subprocess.Popen:
    """``dagster dev -w workspace.yaml`` in ``repo_root``, in a new session; output to ``log_path``."""
    # The venv's own dagster, also when the tests run as `.venv/bin/python -m pytest` unactivated.
    beside = Path(sys.executable).with_name("dagster")
    command = [str(beside) if beside.exists() else "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, cwd=repo_root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def log_tail(log_path: Path, chars: int = 4000) -> str:
    """The end of a log file, for error messages."""
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_for_server(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 180.0) -> dict:
    """Poll ``GET {url}/server_info`` until it answers; fail early if ``dagster dev`` exits."""
    for _ in _polls(timeout_s, 1.0):
        if process.poll() is not None:
            raise StackError(f"dagster dev exited with {process.returncode}:\n{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass  # not serving yet
    raise StackError(f"dagster dev did not answer {url}/server_info within {timeout_s:.0f} s:\n{log_tail(log_path)}")


# --------------------------------------------------------------------------------------------
# GraphQL

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""

BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions
      error { message stack }
      runs { runId status tags { key value } }
    }
    ... on Error { message }
  }
}"""

RUN_FAILURES = """
query RunFailures($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { eventConnection(limit: 5000) { events {
      __typename
      ... on ExecutionStepFailureEvent { stepKey error { message causes { message } } }
      ... on ExecutionStepUpForRetryEvent { stepKey error { message causes { message } } }
      ... on RunFailureEvent { message }
    } } }
  }
}"""

ASSET_PARTITIONS = """
query AssetPartitions($key: AssetKeyInput!, $partitions: [String!]) {
  assetNodes(assetKeys: [$key]) {
    partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    assetMaterializations(partitions: $partitions) {
      partition runId timestamp
      metadataEntries {
        label
        ... on FloatMetadataEntry { floatValue }
        ... on IntMetadataEntry { intValue }
        ... on TextMetadataEntry { text }
      }
    }
  }
}"""

RUN_ASSETS = """
query RunAssets($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId status startTime endTime
      assetSelection { path }
      assetMaterializations { assetKey { path } partition }
      tags { key value }
    }
  }
}"""

RUNS = """
query ($filter: RunsFilter!) { runsOrError(filter: $filter) {
  ... on Runs { results { runId pipelineName status startTime endTime tags { key value } } } } }
"""

SENSOR_TICKS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
  sensors { name sensorState { ticks(limit: 50) { status skipReason runIds timestamp } } } } } } }
"""

LOCATION_STATUS = """
query { workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


@dataclass
class AssetPartitions:
    """What the UI knows of a partitioned asset: counts, and metadata by partition."""

    stats: dict[str, int]
    metadata: dict[str, dict[str, Any]]
    runs: dict[str, dict[str, str]] = field(default_factory=dict)  # partition -> {"runId": ...} of the latest


def _entry_value(entry: dict[str, Any]) -> Any:
    for field_name in ("floatValue", "intValue", "text"):
        if field_name in entry:
            return entry[field_name]
    return None


class GraphQLClient:
    """POSTs queries to ``{url}/graphql`` with urllib; raises :class:`StackError` on any error."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.endpoint = f"{url}/graphql"
        self.timeout_s = timeout_s

    def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of the answer."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.endpoint, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise StackError(f"GraphQL HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from exc
        if answer.get("errors"):
            raise StackError(f"GraphQL errors: {json.dumps(answer['errors'])[:2000]}")
        return answer["data"]

    def location_states(self) -> dict[str, str]:
        """Each code location's state: LOADING, LOADED, or the error that stopped it loading."""
        entries = self.execute(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
        return {entry["name"]: _location_state(entry) for entry in entries}

    def wait_for_locations(self, timeout_s: float = 120.0) -> None:
        """Wait until every code location is loaded; raise with the load error of a broken one."""
        for _ in _polls(timeout_s, 1.0):
            states = self.location_states()
            broken = {name: state for name, state in states.items() if state not in ("LOADING", "LOADED")}
            if broken:
                raise StackError(f"code location failed to load: {broken}")
            if states and all(state == "LOADED" for state in states.values()):
                return
        raise StackError(f"code locations not loaded after {timeout_s:.0f} s: {states}")

    def launch_asset_backfill(self, asset_names: Sequence[str], partition_names: Sequence[str], title: str | None = None) -> str:
        """Launch a backfill of ``partition_names`` of the assets (as from the asset graph, so
        that backfill policies apply); return its id."""
        params = {
            "assetSelection": [{"path": [name]} for name in asset_names],
            "partitionNames": list(partition_names),
            "title": title,
        }
        result = self.execute(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise StackError(f"launchPartitionBackfill: {result['__typename']}: {result.get('message')}")
        return result["backfillId"]

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        """The backfill's status, error and runs."""
        result = self.execute(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise StackError(f"partitionBackfillOrError: {result['__typename']}: {result.get('message')}")
        return result

    def asset_partitions(self, asset_name: str, partitions: Sequence[str]) -> AssetPartitions:
        """The asset's partition counts, and the metadata of the latest materialisation of each partition."""
        nodes = self.execute(ASSET_PARTITIONS, {"key": {"path": [asset_name]}, "partitions": list(partitions)})["assetNodes"]
        if len(nodes) != 1:
            raise StackError(f"expected one asset node {asset_name!r}, got {len(nodes)}")
        latest: dict[str, dict[str, Any]] = {}
        runs: dict[str, dict[str, str]] = {}
        for event in sorted(nodes[0]["assetMaterializations"], key=lambda e: int(e["timestamp"])):
            latest[event["partition"]] = {entry["label"]: _entry_value(entry) for entry in event["metadataEntries"]}
            runs[event["partition"]] = {"runId": event["runId"]}
        return AssetPartitions(stats=nodes[0]["partitionStats"], metadata=latest, runs=runs)

    def run_assets(self, run_id: str) -> dict[str, Any]:
        """A run's status, tags, selected assets and the (asset, partition) pairs it materialised."""
        run = self.execute(RUN_ASSETS, {"runId": run_id})["runOrError"]
        if run["__typename"] != "Run":
            raise StackError(f"run {run_id}: {run['__typename']}")
        return {
            "status": run["status"],
            "startTime": run["startTime"],
            "endTime": run["endTime"],
            "tags": {tag["key"]: tag["value"] for tag in run["tags"]},
            "assets": sorted("/".join(key["path"]) for key in run["assetSelection"] or []),
            "materialized": sorted(("/".join(e["assetKey"]["path"]), e["partition"]) for e in run["assetMaterializations"]),
        }

    def runs(self, job_name: str | None = None, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The runs of a job and/or with these tags: id, job, status, start and end times, tags."""
        run_filter: dict[str, Any] = {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
        if job_name:
            run_filter["pipelineName"] = job_name
        runs = self.execute(RUNS, {"filter": run_filter})["runsOrError"]["results"]
        return [{**run, "tags": {tag["key"]: tag["value"] for tag in run["tags"]}} for run in runs]

    def sensor_ticks(self, sensor_name: str) -> list[dict[str, Any]]:
        """The sensor's latest ticks (status, skip reason, run ids), newest first."""
        nodes = self.execute(SENSOR_TICKS)["repositoriesOrError"]["nodes"]
        return [tick for node in nodes for sensor in node["sensors"] if sensor["name"] == sensor_name
                for tick in sensor["sensorState"]["ticks"]]

    def run_failures(self, run_id: str) -> list[str]:
        """The step failures of a run (those retried included: "max retries exceeded" alone hides
        the cause), each with its error and causes, then the run failure; duplicates once."""
        result = self.execute(RUN_FAILURES, {"runId": run_id})["runOrError"]
        if result["__typename"] != "Run":
            return [f"run {run_id}: {result['__typename']}"]
        failures: list[str] = []
        for event in result["eventConnection"]["events"]:
            if event["__typename"] in ("ExecutionStepFailureEvent", "ExecutionStepUpForRetryEvent"):
                line = f"step {event['stepKey']}: {_error_text(event['error'])}"
            elif event["__typename"] == "RunFailureEvent":
                line = f"run: {event['message']}"
            else:
                continue
            if line not in failures:
                failures.append(line)
        return failures

    def describe_failure(self, backfill: dict[str, Any]) -> str:
        """The backfill's own error and the failures of its failed runs."""
        lines = []
        if backfill.get("error"):
            lines.append(f"{backfill['error']['message']}\n{''.join(backfill['error'].get('stack') or [])}")
        for run in backfill.get("runs", []):
            lines.append(f"run {run['runId']}: {run['status']}")
            if run["status"] == "FAILURE":
                lines += [f"  {failure}" for failure in self.run_failures(run["runId"])]
        return "\n".join(lines) or "no error text and no runs"

    def wait_for_materialized(self, asset_name: str, partitions: Sequence[str], timeout_s: float = 300.0, poll_s: float = 3.0) -> AssetPartitions:
        """Poll until every one of ``partitions`` of the asset is materialised (runs that sensors
        launch); raise if one fails or time runs out."""
        for _ in _polls(timeout_s, poll_s):
            found = self.asset_partitions(asset_name, partitions)
            if set(partitions) <= set(found.metadata):
                return found
            if found.stats and found.stats.get("numFailed"):
                raise StackError(f"{asset_name}: {found.stats['numFailed']} partition(s) failed")
        raise StackError(f"{asset_name}: {sorted(set(partitions) - set(found.metadata))} not materialised after {timeout_s:.0f} s")

    def wait_for_run(self, run_id: str, timeout_s: float = 120.0, poll_s: float = 2.0) -> dict[str, Any]:
        """Poll until the run has ended (its materialisations show before it does); return ``run_assets``."""
        for _ in _polls(timeout_s, poll_s):
            run = self.run_assets(run_id)
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                return run
        raise StackError(f"run {run_id} still {run['status']} after {timeout_s:.0f} s")

    def wait_for_backfill(self, backfill_id: str, timeout_s: float = 420.0, poll_s: float = 2.0) -> dict[str, Any]:
        """Poll until the backfill completes; raise with its error text if it fails or times out."""
        for _ in _polls(timeout_s, poll_s):
            backfill = self.backfill(backfill_id)
            if backfill["status"] in BACKFILL_DONE:
                return backfill
            if backfill["status"] in BACKFILL_FAILED:
                raise StackError(f"backfill {backfill_id} ended {backfill['status']}: {self.describe_failure(backfill)}")
        raise StackError(f"backfill {backfill_id} still {backfill['status']} after {timeout_s:.0f} s; runs: {backfill['runs']}")


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "(no error)"
    return " <- caused by: ".join(e["message"].strip() for e in [error, *error.get("causes", [])])


def _location_state(entry: dict[str, Any]) -> str:
    loaded = entry["locationOrLoadError"]
    if loaded and loaded["__typename"] == "PythonError":
        return loaded["message"]
    return entry["loadStatus"]


# --------------------------------------------------------------------------------------------
# The stack


@dataclass
class DagsterDevStack:
    """A running stack: where it serves, where its files are, and a client for it."""

    url: str
    hub_url: str
    data_dir: Path
    dagster_home: Path
    log_path: Path
    process: subprocess.Popen
    client: GraphQLClient

    @property
    def pgid(self) -> int:
        """The process group of ``dagster dev`` and all its children."""
        return self.process.pid

    def metrics_on_disk(self, case_id: str, model: str = "rules") -> dict[str, Any]:
        """The (case, model)'s ``metrics.json`` as the pipeline wrote it."""
        return json.loads((self.data_dir / "cases" / case_id / "models" / model.replace(":", "_") / "metrics.json").read_text())


def hide_first_visit_modal(dagster_home: Path) -> None:
    """Turn off the UI's "Join the Dagster community" modal (``nux``) in this instance only:
    it would cover the page in screenshots of a fresh DAGSTER_HOME."""
    config = dagster_home / "dagster.yaml"
    text = config.read_text()
    if "\nnux:" not in f"\n{text}":
        config.write_text(text.rstrip("\n") + "\nnux:\n  enabled: false\n")


def stack_env(work_dir: Path, hub_url: str, data_dir: Path, dagster_home: Path, segmenter: str | None,
              models_file: Path | None = None) -> dict[str, str]:
    """The child environment: the parent's minus tokens and pipeline settings, pointed at the local Hub."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV and not k.startswith(SCRUBBED_PREFIX)}
    env.update(
        HF_HOME=str(work_dir / "hf_home"),
        HF_ENDPOINT=hub_url,
        ISLES_HF_REPO=DEFAULT_REPO_ID,
        ISLES_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(dagster_home),
        PYTHONUNBUFFERED="1",
    )
    if segmenter:
        env["ISLES_SEGMENTER"] = segmenter
    if models_file:
        env["ISLES_MODELS"] = str(models_file)
    return env


@contextmanager
def dagster_dev_stack(
    work_dir: Path,
    replica_dir: Path,
    *,
    segmenter: str | None = None,
    models_file: Path | None = None,
    repo_root: Path = REPO_ROOT,
    startup_timeout_s: float = 180.0,
    stop_grace_s: float = 30.0,
    deployment: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[DagsterDevStack]:
    """Serve ``replica_dir`` on a local Hub and run ``dagster dev`` against it; files go to ``work_dir``.

    ``repo_root`` is where ``workspace.yaml`` is (and where the code location is imported from);
    ``models_file`` is the model registry (ISLES_MODELS; default: the built-in ``rules``).

    The instance is ``deploy/<deployment>/dagster.yaml``: by default ``cluster`` (PostgreSQL, a
    fresh database on the server DAGSTER_PG_* name) where those are set, else ``local`` (SQLite).

    Everything is stopped on exit, also when the body raises; a process of the group that
    survives the stop is an error (the test would otherwise leak it).
    """
    deployment = deployment or ("cluster" if postgres_configured() else "local")
    with ExitStack() as stack:
        instance_env = {"DAGSTER_PG_DB": stack.enter_context(fresh_database())} if deployment == "cluster" else {}
        instance_env.update(extra_env or {})
        yield stack.enter_context(
            _dagster_dev_stack(work_dir, replica_dir, segmenter, models_file, repo_root, startup_timeout_s, stop_grace_s, deployment, instance_env)
        )


@contextmanager
def _dagster_dev_stack(
    work_dir: Path,
    replica_dir: Path,
    segmenter: str | None,
    models_file: Path | None,
    repo_root: Path,
    startup_timeout_s: float,
    stop_grace_s: float,
    deployment: str,
    instance_env: dict[str, str],
) -> Iterator[DagsterDevStack]:
    from isles_pipeline.hub.server import HubServer

    work_dir.mkdir(parents=True, exist_ok=True)
    dagster_home = prepare_dagster_home(work_dir / "dagster_home", deployment)
    hide_first_visit_modal(dagster_home)
    data_dir = work_dir / "data"
    log_path = work_dir / "dagster_dev.log"
    hub = HubServer(host="127.0.0.1", port=0)
    hub.add_repo("dataset", DEFAULT_REPO_ID, replica_dir)
    with hub:
        env = {**stack_env(work_dir, hub.url, data_dir, dagster_home, segmenter, models_file), **instance_env}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_dagster_dev(port, env, log_path, repo_root)
        try:
            wait_for_server(url, process, log_path, startup_timeout_s)
            client = GraphQLClient(url)
            client.wait_for_locations()
            yield DagsterDevStack(url, hub.url, data_dir, dagster_home, log_path, process, client)
        finally:
            survivors = stop_process_group(process, grace_s=stop_grace_s)
        if survivors:
            raise StackError(f"processes of dagster dev's group {process.pid} survived the stop: {survivors}")

