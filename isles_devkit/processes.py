"""Running the ``isles-pipeline`` command as a user does, measuring what it cost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float  # the child's own peak resident memory (VmHWM after exec)
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("isles-pipeline ")]


def cli_command() -> list[str]:
    exe = shutil.which("isles-pipeline") or str(Path(sys.executable).with_name("isles-pipeline"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "isles_pipeline.cli"]


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's fresh shell: the tests' own (HF_HOME, no token) plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ISLES_", "PYTEST"))}
    env.pop("HF_ENDPOINT", None)
    return {**env, **extra}


class _PeakWatcher(threading.Thread):
    """Polls a child's ``VmHWM`` (its high-water mark since exec) until the child ends.

    ``ru_maxrss`` from ``wait4`` would also count the copy of this (large) test process the child
    had between fork and exec. A high-water mark only grows, so polling misses at most what the
    child allocated in its last poll interval."""

    def __init__(self, pid: int, interval_s: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak_kb, self.running = pid, interval_s, 0, True

    def run(self) -> None:
        while self.running:
            try:
                with open(f"/proc/{self.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                return
            time.sleep(self.interval_s)


def run_measured(args: list[str], env: dict[str, str], timeout_s: float = 300, cwd: Path = REPO_ROOT) -> Finished:
    """Run ``isles-pipeline args`` to completion, watching its peak resident memory."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen([*cli_command(), *args], stdout=out, stderr=err, env=env, cwd=cwd, text=True)
        watcher = _PeakWatcher(child.pid)
        watcher.start()
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        finally:
            watcher.running = False
            watcher.join()
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return Finished(child.returncode, out.read(), err.read(), watcher.peak_kb / 1024, seconds)


def run_in_own_group(args: list[str], env: dict[str, str], timeout_s: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` to completion in a new session, so that whatever it starts (a library's worker
    pool, say) dies with it: on a timeout the whole process group is killed, not only the child."""
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=cwd)
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        stderr += f"\n(killed with its process group after {timeout_s:.0f} s)"
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # workers the child left behind
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(args, child.returncode, stdout, stderr)


def process_dirs() -> Iterator[Path]:
    return (entry for entry in Path("/proc").iterdir() if entry.name.isdigit())


def stat_fields(process_dir: Path) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces): state,
    ppid, pgrp, ...; OSError when the process ended while we looked."""
    return (process_dir / "stat").read_text().rsplit(")", 1)[1].split()


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are still running (zombies are dead: skipped)."""
    pids = []
    for entry in process_dirs():
        try:
            state, _ppid, group = stat_fields(entry)[:3]
        except OSError:
            continue
        if int(group) == pgid and state != "Z":
            pids.append(int(entry.name))
    return pids


def live_descendants(pid: int) -> list[int]:
    """Pids of the running (not zombie) descendants of ``pid``."""
    parents = {}
    for entry in process_dirs():
        try:
            state, ppid = stat_fields(entry)[:2]
        except OSError:
            continue
        if state != "Z":
            parents[int(entry.name)] = int(ppid)
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (Linux), so that a grandchild whose
    parent died is still found by :func:`live_descendants` instead of escaping to init."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
