"""Resident memory of a process on Linux, and child processes whose own peak RSS is known.

- ``rss_mb()`` / ``peak_mb()``: this process's current (``VmRSS``) and peak (``VmHWM``) resident
  set, from ``/proc/self/status``.
- ``reset_peak()``: write ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0) so that ``VmHWM``
  restarts from the current RSS: after it, ``peak_mb()`` is the peak of what follows only.
- ``run_child(cmd)``: run a command and return its exit status, output and ``ru_maxrss`` of
  that one child (``os.wait4``). Caveat: Linux folds the RSS the child had between fork and
  exec (a copy of the parent's image) into ru_maxrss, so it is only an upper bound when the
  parent is big; a child that must report its own peak reads ``peak_mb()`` itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass

KB_PER_MB = 1024  # /proc and ru_maxrss report KiB; figures here are MiB ("MB")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} (not Linux?)")
    return int(match[1])


def rss_mb() -> float:
    return _status_kb("VmRSS") / KB_PER_MB


def peak_mb() -> float:
    return _status_kb("VmHWM") / KB_PER_MB


def reset_peak() -> bool:
    """Restart the peak-RSS counter at the current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return abs(peak_mb() - rss_mb()) < 1.0


@dataclass(frozen=True)
class ChildRun:
    returncode: int
    stdout: str
    stderr: str
    maxrss_mb: float  # ru_maxrss of the child: includes the parent's image it had before exec


def run_child(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> ChildRun:
    """Run ``cmd`` to completion (killed after ``timeout`` s); its peak RSS comes from ``wait4``,
    which reports that pid alone (``RUSAGE_CHILDREN`` would give the maximum over all children)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)  # Popen has not reaped it: we do
        finally:
            if timer:
                timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, out.read(), err.read(), usage.ru_maxrss / KB_PER_MB)
