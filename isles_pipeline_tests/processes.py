"""Running the ``isles-pipeline`` command as a user does, measuring what it cost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
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
