"""Screenshot the Dagster UI's ``case_metrics`` asset page after a three-case backfill.

Starts the whole stack (replica behind the local Hub server, ``dagster dev``; see
``isles_devkit/dagster_dev.py``) with two registered models (``rules`` and
``rules:loose``), backfills case_inputs for the first three cases over GraphQL (the
``chain_automation`` then runs both models), and lets headless Chromium render the
asset's case x model partitions view with one (case, model)'s metadata and overlay picture; the
PNG goes to ``--out`` (default ``docs/ui-case-metrics.png``). Not part of CI.

    apt-get install -y chromium   # Debian's chromium, once
    python scripts/screenshot_ui.py [--out docs/ui-case-metrics.png] [--partition sub-stroke0001] [--model rules]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # isles_devkit, when run from a plain checkout

from isles_devkit.dagster_dev import DagsterDevStack, dagster_dev_stack, model_keys  # noqa: E402
from isles_pipeline.catalogue import CASE_IDS  # noqa: E402
from isles_pipeline.models import ModelSpec, write_registry  # noqa: E402

CASES = list(CASE_IDS[:3])
MODELS = [ModelSpec("rules"), ModelSpec("rules:loose", options={"dwi_factor": 1.15, "adc_high": 0.8})]
DEFAULT_OUT = REPO_ROOT / "docs" / "ui-case-metrics.png"
MAX_BYTES = 500_000
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=15000",
]


def find_chromium(explicit: str | None) -> str:
    """The chromium binary, or exit with how to install it."""
    for candidate in (explicit, "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("chromium not found: install Debian's chromium with `apt-get update && apt-get install -y chromium` (or pass --chromium PATH)")


def build_replica(work_dir: Path) -> Path:
    """A replica of the first three cases on the tiny grid."""
    from isles_pipeline.hub.replica import build_replica as build

    folder = work_dir / "replica"
    build(folder, CASES, grid="tiny", ctp_mb=2, seed=0)
    return folder


def backfill_cases(stack: DagsterDevStack) -> None:
    """Backfill the chain for CASES and print each case's Dice as the UI knows it."""
    backfill_id = stack.client.launch_asset_backfill(["case_inputs"], CASES, title="screenshot: first three cases")
    print(f"backfill {backfill_id}: {len(CASES)} cases, waiting ...", flush=True)
    backfill = stack.client.wait_for_backfill(backfill_id)
    print(f"backfill {backfill_id}: {backfill['status']} in {len(backfill['runs'])} run(s); waiting for the models ...", flush=True)
    keys = [key for model in MODELS for key in model_keys(CASES, model.name)]
    metrics = stack.client.wait_for_materialized("case_metrics", keys).metadata
    for key in keys:
        print(f"  {key}: dice {metrics[key]['dice']:.3f}")


def take_screenshot(chromium: str, url: str, out: Path, profile_dir: Path, timeout_s: float = 120.0, window: str | None = None) -> None:
    """Render ``url`` headless into ``out``; chromium runs in its own process group, stopped on timeout."""
    flags = [f if not (window and f.startswith("--window-size=")) else f"--window-size={window}" for f in CHROMIUM_FLAGS]
    command = [chromium, *flags, f"--user-data-dir={profile_dir}", f"--screenshot={out}", url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise SystemExit(f"chromium did not finish within {timeout_s:.0f} s") from None
    if process.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed ({process.returncode}):\n{output.decode(errors='replace')[-3000:]}")


def screenshot_after_click(chromium: str, url: str, out: Path, profile_dir: Path, click_text: str, window: str = "1600,1200",
                           timeout_s: float = 120.0) -> None:
    """Open ``url`` in headless chromium, click the first element whose text is ``click_text`` (e.g. the
    partition's "[Show Markdown]" of the overlay), and write a screenshot: over the DevTools protocol."""
    import base64
    import json
    import time
    import urllib.request

    from websockets.sync.client import connect

    port = _free_port()
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith(("--window-size=", "--virtual-time-budget="))]
    command = [chromium, *flags, f"--window-size={window}", f"--user-data-dir={profile_dir}", f"--remote-debugging-port={port}",
               "about:blank"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as answer:
                    target = next(t for t in json.load(answer) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise SystemExit("chromium's DevTools endpoint did not come up") from None
                time.sleep(0.5)
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            ids = iter(range(1, 1_000_000))

            def call(method: str, **params):
                message_id = next(ids)
                ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
                while True:
                    reply = json.loads(ws.recv(timeout=timeout_s))
                    if reply.get("id") == message_id:
                        return reply.get("result", {})

            call("Page.enable")
            call("Page.navigate", url=url)
            # the innermost element with the text: its wrappers have the same text but no click handler
            text = json.dumps(click_text)
            script = (f"(() => {{ const t = {text}; const el = [...document.querySelectorAll('*')].find(e => e.textContent.trim() === t"
                      " && ![...e.children].some(c => c.textContent.trim() === t)); if (el) { el.scrollIntoView(); el.click(); return true; }"
                      " return false; })()")
            clicked = False
            while not clicked and time.monotonic() < deadline:
                time.sleep(1.0)
                clicked = call("Runtime.evaluate", expression=script, returnByValue=True).get("result", {}).get("value", False)
            if not clicked:
                raise SystemExit(f"no element with the text {click_text!r} on {url}")
            time.sleep(3.0)  # the dialog and its image render
            out.write_bytes(base64.b64decode(call("Page.captureScreenshot", format="png")["data"]))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shrink_if_large(path: Path, max_bytes: int = MAX_BYTES) -> None:
    """Re-encode the PNG with a palette when it is over ``max_bytes``."""
    if path.stat().st_size <= max_bytes:
        return
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=256).save(path, optimize=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the PNG goes (default: %(default)s)")
    parser.add_argument("--partition", default=CASES[0], choices=CASES, help="the case whose metadata the page shows")
    parser.add_argument("--model", default=MODELS[0].name, choices=[m.name for m in MODELS], help="the model of that partition")
    parser.add_argument("--overlay-out", type=Path, default=None,
                        help="also a shot of the same page with the partition's overlay opened (its [Show Markdown])")
    parser.add_argument("--chromium", help="chromium binary (default: /usr/bin/chromium)")
    parser.add_argument("--repo-root", type=Path, default=REPO_ROOT, help="the checkout whose workspace.yaml dagster dev serves")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (replica, DAGSTER_HOME, dagster dev log)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chromium = find_chromium(args.chromium)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="isles-screenshot-"))
    # Also for this process's Hub server and replica builder.
    os.environ.update(HF_HOME=str(work_dir / "hf_home"))
    try:
        replica = build_replica(work_dir)
        models_file = write_registry(work_dir / "models.yaml", MODELS)
        with dagster_dev_stack(work_dir / "stack", replica, models_file=models_file, repo_root=args.repo_root.resolve()) as stack:
            print(f"dagster dev: {stack.url} (log {stack.log_path})", flush=True)
            backfill_cases(stack)
            partition = urllib.parse.quote(f"{args.partition}|{args.model}", safe="")
            url = f"{stack.url}/assets/case_metrics?view=partitions&partition={partition}"
            print(f"screenshot of {url} ...", flush=True)
            take_screenshot(chromium, url, out, work_dir / "chromium-profile")
            if args.overlay_out:
                args.overlay_out.parent.mkdir(parents=True, exist_ok=True)
                screenshot_after_click(chromium, url, args.overlay_out.resolve(), work_dir / "chromium-cdp", "[Show Markdown]")
        shrink_if_large(out)
        if args.overlay_out:
            shrink_if_large(args.overlay_out.resolve())
    finally:
        if args.keep:
            print(f"work folder kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
