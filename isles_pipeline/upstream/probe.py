"""Probe the installed pyarrow for the streaming hang (apache/arrow#45214) in a child process.

The reproduction (``REPRO_SNIPPET``) leaves a ``pyarrow.dataset`` fragment's ``to_batches()``
generator partly consumed when the interpreter exits; affected versions then hang or abort. It
runs only in a child interpreter in its own session, killed as a whole process group on timeout:
never in this process.

Measured with pyarrow 26.0.1 on the project machine: the outcome depends on the file. Files under
~32 MiB, or with a single row group, exit cleanly; 200 rows x 200 KB in row groups of 100 (~40 MB,
the default here) hung or aborted in 15 of 15 runs, as did upstream.md's 500 rows (~100 MB), while
row groups of 50 rows let 5 of 15 runs exit cleanly.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..settings import child_environment

Outcome = Literal["hang", "abort", "clean", "error"]

SIGABRT_SHELL_STATUS = 128 + signal.SIGABRT  # 134: how a shell reports an abort
STDERR_TAIL_CHARS = 2000
REPRO_SNIPPET = """\
import sys
import pyarrow.dataset

path = sys.argv[1]

def batches():
    f = open(path, "rb")
    frag = pyarrow.dataset.ParquetFileFormat().make_fragment(f)
    yield from frag.to_batches(batch_size=10, batch_readahead=0, fragment_readahead=0)

g = batches()
next(g)
# Interpreter exit with the generator still suspended: affected pyarrow hangs or aborts here.
"""


@dataclass(frozen=True)
class ProbeFileSpec:
    """Shape of the parquet file the probe writes: unique binary payloads and a nested struct."""

    rows: int = 200
    row_group_rows: int = 100
    payload_bytes: int = 200_000


@dataclass(frozen=True)
class ChildResult:
    """How a child interpreter ended."""

    outcome: Outcome
    seconds: float
    returncode: int | None
    stderr_tail: str


@dataclass(frozen=True)
class ProbeResult:
    """The probe of the installed pyarrow: its version, then the child's ``ChildResult`` fields."""

    pyarrow_version: str
    outcome: Outcome
    seconds: float
    returncode: int | None
    stderr_tail: str


def installed_pyarrow_version() -> str:
    """The installed pyarrow distribution's version, without importing pyarrow."""
    try:
        return importlib.metadata.version("pyarrow")
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def write_probe_file(path: Path, spec: ProbeFileSpec = ProbeFileSpec()) -> Path:
    """Write the reproduction's parquet file: id, a unique binary payload, a nested struct."""
    import pyarrow as pa  # plain parquet writing is safe; only dataset fragments are not
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array(range(spec.rows), pa.int64()),
            "payload": pa.array([os.urandom(spec.payload_bytes) for _ in range(spec.rows)],
                                pa.binary()),
            "meta": pa.array([_nested_row(i) for i in range(spec.rows)]),
        }
    )
    pq.write_table(table, path, row_group_size=spec.row_group_rows)
    return path


def _nested_row(i: int) -> dict:
    return {"index": i, "detail": {"label": f"row-{i}", "window": [i, i + 1]}}


def classify(returncode: int | None, timed_out: bool) -> Outcome:
    """Map how a child ended to an outcome: timeout=hang, SIGABRT or any signal=abort."""
    if timed_out:
        return "hang"
    if returncode == 0:
        return "clean"
    if returncode is not None and (returncode < 0 or returncode == SIGABRT_SHELL_STATUS):
        return "abort"
    return "error"


def run_snippet(
    code: str, args: list[str], timeout_s: float, cwd: Path | None = None
) -> ChildResult:
    """Run ``python -c code args...`` in a new session; on timeout kill its whole process group."""
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = False
    try:
        _, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(child.pid)
        stderr = _collect_after_kill(child)
    return ChildResult(
        outcome=classify(child.returncode, timed_out),
        seconds=round(time.monotonic() - started, 3),
        returncode=child.returncode,
        stderr_tail=stderr.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:],
    )


def run_probe(
    timeout_s: float = 20.0,
    workdir: Path | str | None = None,
    spec: ProbeFileSpec = ProbeFileSpec(),
) -> ProbeResult:
    """Write the probe file (in a temporary folder under ``workdir``) and run the reproduction."""
    with tempfile.TemporaryDirectory(prefix="pyarrow-probe-", dir=workdir) as folder:
        path = write_probe_file(Path(folder) / "probe.parquet", spec)
        child = run_snippet(REPRO_SNIPPET, [str(path)], timeout_s, cwd=Path(folder))
    return ProbeResult(pyarrow_version=installed_pyarrow_version(), **asdict(child))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # ended between the timeout and the kill


def _collect_after_kill(child: subprocess.Popen) -> bytes:
    """Reap the killed child; bounded, in case a grandchild still holds the stderr pipe."""
    try:
        _, stderr = child.communicate(timeout=5)
        return stderr or b""
    except subprocess.TimeoutExpired:
        if child.stderr:
            child.stderr.close()
        child.wait()
        return b""
