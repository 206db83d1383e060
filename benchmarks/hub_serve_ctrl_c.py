"""How often ``hub serve`` fails to stop cleanly on Ctrl-C, with CPU hogs beside it.

    python benchmarks/hub_serve_ctrl_c.py [--runs 200] [--hogs 3]

Each run starts ``serve_forever`` in a fresh Python process (faulthandler on), waits for its URL
line, reads one file from it, sends SIGINT and waits up to 30 s. Counts clean exits (status 0),
other statuses (-2: the KeyboardInterrupt escaped, with a traceback) and hangs (the stacks of a
hung child are printed). The children get SIGINT as from a terminal, also when this script runs
as a background job.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = (
    "import faulthandler, signal, sys; faulthandler.enable(); signal.signal(signal.SIGINT, signal.default_int_handler);"
    "from pathlib import Path; from isles_pipeline.hub.server import serve_forever;"
    "serve_forever(Path(sys.argv[1]), repo_id='bench/ctrl-c', port=0)"
)


def one_run(root: Path) -> str:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = re.search(r"(http://\S+)", child.stdout.readline())[1]
    with urllib.request.urlopen(f"{url}/datasets/bench/ctrl-c/resolve/main/README.md", timeout=60) as response:
        response.read()
    child.send_signal(signal.SIGINT)
    try:
        status = child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGABRT)
        child.wait()
        print(child.stderr.read()[-4000:], file=sys.stderr)
        return "hang"
    return "exit 0" if status == 0 else f"exit {status}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--hogs", type=int, default=3, help="busy-looping processes beside the runs")
    args = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "README.md").write_text("hello\n")
            outcomes = collections.Counter(one_run(Path(folder)) for _ in range(args.runs))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"| outcome | runs of {args.runs}, {args.hogs} CPU hogs beside |\n|---|---|")
    for outcome, count in sorted(outcomes.items()):
        print(f"| {outcome} | {count} |")


if __name__ == "__main__":
    main()
