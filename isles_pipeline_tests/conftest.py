"""Shared fixtures: an isolated Hub client environment, the real ISLES'22 case, and a small
replica served by the local Hub server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from isles_devkit.processes import become_subreaper, live_descendants
from isles_pipeline.catalogue import CASE_IDS, DEFAULT_REPO_ID

ISLES22_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "isles22"
REPLICA_CASES = list(CASE_IDS[:3])


_SAVED_ENV: dict[str, str] = {}


def pytest_configure(config) -> None:
    """No token and a fresh HF_HOME, as on a new machine, set before any test module imports
    huggingface_hub (it reads HF_HOME once, at import); the client's other defaults (telemetry
    and Xet included) stay as a user has them."""
    _SAVED_ENV.update(os.environ)
    become_subreaper()
    # The processes the tests stop with Ctrl-C (`hub serve`, `dagster dev`) must get it as from a
    # terminal: a shell that starts pytest in the background (`pytest &`) makes SIGINT ignored,
    # and every child would inherit that (`dagster dev` then waits out its grace and is killed).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "GITHUB_TOKEN", "ISLES_DATA_DIR", "ISLES_HF_REPO", "ISLES_HF_REVISION"):
        os.environ.pop(key, None)
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="isles-tests-hf-home-")


def pytest_sessionfinish(session, exitstatus) -> None:
    """No test may leave a process behind: whatever still runs under this process now is named,
    killed, and fails the session."""
    leftovers = live_descendants(os.getpid())
    if leftovers:
        names = ", ".join(f"{pid} ({_command(pid)})" for pid in leftovers)
        session.config.get_terminal_writer().line(f"\nprocesses left behind by the tests, killed: {names}", red=True)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


def pytest_unconfigure(config) -> None:
    shutil.rmtree(os.environ.get("HF_HOME", ""), ignore_errors=True)
    os.environ.clear()
    os.environ.update(_SAVED_ENV)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Two cores shared with servers and child processes: torch with 2 threads is 10-20x slower here."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def isles22_dir() -> Path:
    """The real ISLES'22 case (read-only). ISLES22_DIR overrides where it is."""
    folder = Path(os.environ.get("ISLES22_DIR", ISLES22_DEFAULT)) / "sub-strokecase0009"
    if not folder.is_dir():
        pytest.skip(f"the real ISLES'22 case is not at {folder} (set ISLES22_DIR to the folder holding sub-strokecase0009)")
    return folder


@pytest.fixture(scope="session")
def replica_dir(tmp_path_factory) -> Path:
    """A replica of the first three cases on the tiny grid, with a 2 MB ctp column."""
    from isles_pipeline.hub.replica import build_replica

    out = tmp_path_factory.mktemp("replica")
    build_replica(out, REPLICA_CASES, grid="tiny", ctp_mb=2, seed=0)
    return out


@pytest.fixture()
def hub(replica_dir):
    """The local Hub server serving the replica as the real dataset repo id (fresh per test,
    faults allowed). A test fails if the client called a route the server does not know."""
    from isles_pipeline.hub.server import HubServer

    server = HubServer(host="127.0.0.1", port=0, faults=True)
    server.add_repo("dataset", DEFAULT_REPO_ID, replica_dir)
    with server:
        yield server
    assert_only_known_routes(server)


def assert_only_known_routes(server) -> None:
    unknown = sorted({f"{r.method} {r.path}" for r in server.stats.log if r.route_kind == "other"})
    assert not unknown, f"the client called routes the local Hub server does not implement: {unknown}"
