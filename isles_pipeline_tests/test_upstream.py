"""Watching apache/arrow#45214: the GitHub client and the sensor against a fake GitHub on
127.0.0.1, and the pyarrow probe (real child processes, real pyarrow) through Dagster."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from isles_pipeline.definitions import build_defs
from isles_pipeline.defs.upstream import (
    PROBE_ASSET,
    PROBE_CHECK,
    GitHubIssueResource,
    ProbeConfig,
    judge_agreement,
    pyarrow_hang_probe,
)
from isles_pipeline.settings import Settings
from isles_pipeline.upstream.github import (
    FetchFailure,
    IssueRef,
    IssueState,
    IssueWatcher,
    Unchanged,
)
from isles_pipeline.upstream.probe import (
    ProbeFileSpec,
    ProbeResult,
    installed_pyarrow_version,
    run_probe,
    run_snippet,
    write_probe_file,
)
from isles_pipeline_tests.github_server import FakeGitHub, Reply

ARROW = IssueRef("apache", "arrow", 45214)
T0 = "2025-01-10T09:00:00Z"  # the fake issue's initial updated_at
TOKEN = "ghp_TESTtokenThatMustNeverLeak0123456789"
PYARROW = pa.__version__
BROKEN = {"hang", "abort"}  # the issue's symptoms (upstream.md saw both on pyarrow 26.0.1)
PROBE_TIMEOUT_S = 4.0  # clean exits and aborts take < 1 s here; a hang costs this much
HANG_S = 60  # how long the fake GitHub hangs: a timeout must end a request well before


@pytest.fixture(autouse=True)
def _no_github_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from no token and no API URL; each sets what it needs."""
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_API_URL", raising=False)


@pytest.fixture
def github() -> FakeGitHub:
    with FakeGitHub() as server:
        yield server


def watcher(github: FakeGitHub, timeout_s: float = 2.0) -> IssueWatcher:
    return IssueWatcher(api_url=github.url, timeout_s=timeout_s)


DEFS = build_defs(Settings())
arrow_issue_sensor = DEFS.get_sensor_def("arrow_issue_sensor")


def tick(cursor: str | None, resource: GitHubIssueResource) -> dg.SensorExecutionData:
    """One sensor evaluation, with the context closed afterwards (dagster.md pitfall)."""
    with dg.build_sensor_context(cursor=cursor, resources={"github_issue": resource}) as ctx:
        return arrow_issue_sensor.evaluate_tick(ctx)


def probe_config_of(request: dg.RunRequest) -> dict:
    return request.run_config["ops"][PROBE_ASSET]["config"]


# --- GitHub client --------------------------------------------------------------------------


def test_open_issue_is_observed_with_its_etag_and_github_headers(github: FakeGitHub) -> None:
    outcome = watcher(github).fetch(ARROW)

    assert outcome == IssueState(
        state="open", state_reason=None, closed_at=None, updated_at=T0, etag=github.etag,
        title="[Python] ParquetFragment.to_batches() hangs forever",
    )
    seen = github.requests[-1]
    assert seen.path == "/repos/apache/arrow/issues/45214"
    assert seen.headers["accept"] == "application/vnd.github+json"
    assert seen.headers["user-agent"].startswith("isles-pipeline")
    assert "authorization" not in seen.headers  # no GITHUB_TOKEN, no header
    assert "if-none-match" not in seen.headers


def test_closed_issue_is_observed(github: FakeGitHub) -> None:
    github.set_issue(state="closed", state_reason="completed", closed_at="2026-03-01T10:00:00Z",
                     updated_at="2026-03-01T10:00:00Z")

    outcome = watcher(github).fetch(ARROW)

    assert isinstance(outcome, IssueState)
    assert (outcome.state, outcome.state_reason, outcome.closed_at) == (
        "closed", "completed", "2026-03-01T10:00:00Z")


def test_matching_etag_gets_304_unchanged(github: FakeGitHub) -> None:
    etag = github.etag

    assert watcher(github).fetch(ARROW, etag=etag) == Unchanged(etag=etag)
    assert github.requests[-1].headers["if-none-match"] == etag


def test_stale_etag_gets_the_new_state(github: FakeGitHub) -> None:
    stale = github.etag
    github.set_issue(updated_at="2025-02-01T00:00:00Z")

    outcome = watcher(github).fetch(ARROW, etag=stale)

    assert isinstance(outcome, IssueState) and outcome.updated_at == "2025-02-01T00:00:00Z"
    assert outcome.etag == github.etag != stale


def test_403_with_exhausted_rate_limit_says_until_when(github: FakeGitHub) -> None:
    reset = int(time.time()) + 900
    github.enqueue(Reply.rate_limited_403(reset))

    outcome = watcher(github).fetch(ARROW)

    until = datetime.fromtimestamp(reset, timezone.utc)
    assert isinstance(outcome, FetchFailure)
    assert (outcome.kind, outcome.status, outcome.retry_at) == ("rate_limited", 403, until)
    assert f"rate limited until {until.isoformat(timespec='seconds')}" in outcome.message


def test_429_with_retry_after(github: FakeGitHub) -> None:
    github.enqueue(Reply.too_many_requests_429(retry_after_s=120))

    before = datetime.now(timezone.utc)
    outcome = watcher(github).fetch(ARROW)
    after = datetime.now(timezone.utc)

    assert isinstance(outcome, FetchFailure) and outcome.kind == "rate_limited"
    assert outcome.status == 429
    # 120 s after the answer came, whenever that was
    assert before + timedelta(seconds=120) <= outcome.retry_at <= after + timedelta(seconds=120)


def test_plain_403_is_not_a_rate_limit(github: FakeGitHub) -> None:
    github.enqueue(Reply.json_body({"message": "Resource not accessible"}, status=403))

    outcome = watcher(github).fetch(ARROW)

    assert isinstance(outcome, FetchFailure)
    assert (outcome.kind, outcome.status) == ("http_error", 403)


def test_500_is_a_server_error(github: FakeGitHub) -> None:
    github.enqueue(Reply.server_error(500))

    outcome = watcher(github).fetch(ARROW)

    assert isinstance(outcome, FetchFailure)
    assert (outcome.kind, outcome.status) == ("server_error", 500)


def test_hanging_server_times_out_within_the_bound(github: FakeGitHub) -> None:
    github.enqueue(Reply.hang(HANG_S))

    started = time.monotonic()
    outcome = watcher(github, timeout_s=0.5).fetch(ARROW)

    assert 0.5 <= time.monotonic() - started < HANG_S  # the timeout ended it, not the server
    assert isinstance(outcome, FetchFailure) and outcome.kind == "timeout"


def test_garbage_body_is_malformed_json(github: FakeGitHub) -> None:
    github.enqueue(Reply.garbage())

    outcome = watcher(github).fetch(ARROW)

    assert isinstance(outcome, FetchFailure) and outcome.kind == "malformed_json"


@pytest.mark.parametrize(
    "document, problem",
    [
        ([{"state": "open"}], "expected a JSON object"),
        ({"state": "merged", "updated_at": T0}, "'state' is 'merged'"),
        ({"state": "open"}, "'updated_at' missing"),
        ({"state": "closed", "updated_at": T0, "closed_at": 17}, "'closed_at' is not a string"),
    ],
)
def test_json_of_the_wrong_shape_is_named(github: FakeGitHub, document, problem: str) -> None:
    github.enqueue(Reply.json_body(document))

    outcome = watcher(github).fetch(ARROW)

    assert isinstance(outcome, FetchFailure) and outcome.kind == "unexpected_shape"
    assert problem in outcome.message


def test_unreachable_api_is_a_network_failure() -> None:
    with FakeGitHub() as gone:
        url = gone.url  # a port that was just listening and now refuses connections

    outcome = IssueWatcher(api_url=url, timeout_s=1).fetch(ARROW)

    assert isinstance(outcome, FetchFailure) and outcome.kind == "network"


def test_token_from_env_is_sent_as_bearer_and_never_shown(
    github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    client = build_defs().resources["github_issue"].watcher()
    github.enqueue(Reply.json_body({"message": "Bad credentials"}, status=401))

    failure = client.fetch(ARROW)

    assert github.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
    assert isinstance(failure, FetchFailure) and "GITHUB_TOKEN" in failure.message
    assert TOKEN not in repr(client) and TOKEN not in repr(failure)


def test_redirects_are_not_followed_so_the_token_stays_home(github: FakeGitHub) -> None:
    with FakeGitHub() as elsewhere:
        github.enqueue(Reply(301, {"Location": elsewhere.url + elsewhere.issue_path}))

        outcome = IssueWatcher(api_url=github.url, token=TOKEN).fetch(ARROW)

        assert isinstance(outcome, FetchFailure) and outcome.kind == "http_error"
        assert "moved" in outcome.message and outcome.status == 301
        assert elsewhere.requests == []


# --- sensor ----------------------------------------------------------------------------------


def test_sensor_definition_is_off_by_default_and_hourly() -> None:
    assert arrow_issue_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert arrow_issue_sensor.minimum_interval_seconds == 3600
    assert arrow_issue_sensor.job_name == "pyarrow_probe_job"


def test_sensor_cursor_over_a_sequence_of_ticks(github: FakeGitHub) -> None:
    resource = GitHubIssueResource(api_url=github.url, timeout_s=2)
    job = DEFS.resolve_job_def("pyarrow_probe_job")

    # 1. First tick: unconditional request, one probe run for the open issue.
    first = tick(None, resource)
    assert "if-none-match" not in github.requests[-1].headers
    [request] = first.run_requests
    open_key = f"arrow-45214:open:{T0}:pyarrow-{PYARROW}"
    assert request.run_key == open_key
    assert probe_config_of(request)["issue_state"] == "open"
    assert request.tags["isles/upstream_issue_state"] == "open"
    assert dg.validate_run_config(job, request.run_config)  # the config fits the probe asset
    assert json.loads(first.cursor) == {
        "state": "open", "state_reason": None, "closed_at": None, "updated_at": T0,
        "etag": github.etag, "pyarrow_version": PYARROW,
    }

    # 2. Nothing changed: conditional request, 304, skip, cursor as it was.
    second = tick(first.cursor, resource)
    assert github.requests[-1].headers["if-none-match"] == json.loads(first.cursor)["etag"]
    assert second.run_requests == []
    assert second.skip_message == (
        f"apache/arrow#45214: issue open, not modified (304) since {T0}; "
        f"pyarrow {PYARROW} already probed")
    assert second.cursor == first.cursor

    # 3. A new comment: 200, same state, skip; the cursor follows updated_at and the ETag.
    github.set_issue(updated_at="2025-06-01T00:00:00Z", comments=4)
    third = tick(second.cursor, resource)
    assert third.run_requests == []
    assert "issue open, state unchanged since 2025-06-01T00:00:00Z" in third.skip_message
    assert json.loads(third.cursor)["updated_at"] == "2025-06-01T00:00:00Z"
    assert json.loads(third.cursor)["etag"] == github.etag

    # 4. Closed upstream: a new run request with a different run key.
    github.set_issue(state="closed", state_reason="completed",
                     closed_at="2026-03-01T10:00:00Z", updated_at="2026-03-01T10:00:00Z")
    fourth = tick(third.cursor, resource)
    [closed_request] = fourth.run_requests
    assert closed_request.run_key == f"arrow-45214:closed:2026-03-01T10:00:00Z:pyarrow-{PYARROW}"
    assert closed_request.run_key != open_key
    assert probe_config_of(closed_request)["issue_state"] == "closed"
    assert probe_config_of(closed_request)["issue_closed_at"] == "2026-03-01T10:00:00Z"
    assert json.loads(fourth.cursor)["state"] == "closed"

    # 5. Same closed state again: skip.
    assert tick(fourth.cursor, resource).run_requests == []


def test_sensor_probes_again_when_pyarrow_changes(github: FakeGitHub) -> None:
    resource = GitHubIssueResource(api_url=github.url, timeout_s=2)
    older = json.dumps({"state": "open", "state_reason": None, "closed_at": None,
                        "updated_at": T0, "etag": github.etag, "pyarrow_version": "25.0.0"})

    result = tick(older, resource)

    assert github.requests[-1].headers["if-none-match"] == github.etag  # issue itself: 304
    [request] = result.run_requests
    assert request.run_key == f"arrow-45214:open:{T0}:pyarrow-{PYARROW}"
    assert request.tags["isles/upstream_reason"] == f"pyarrow 25.0.0 -> {PYARROW}"
    assert json.loads(result.cursor)["pyarrow_version"] == PYARROW


def test_unreadable_cursor_counts_as_a_first_tick(github: FakeGitHub) -> None:
    result = tick("{not json", GitHubIssueResource(api_url=github.url, timeout_s=2))

    assert "if-none-match" not in github.requests[-1].headers
    assert [r.run_key for r in result.run_requests] == [f"arrow-45214:open:{T0}:pyarrow-{PYARROW}"]
    assert json.loads(result.cursor)["etag"] == github.etag


@pytest.mark.parametrize(
    "reply, cause",
    [
        (Reply.rate_limited_403(2_000_000_000),
         "(rate_limited): rate limited until 2033-05-18T03:33:20+00:00 (HTTP 403)"),
        (Reply.too_many_requests_429(60), "(rate_limited): rate limited until"),
        (Reply.server_error(500), "(server_error): GitHub answered 500"),
        (Reply.server_error(503), "(server_error): GitHub answered 503"),
        (Reply.garbage(), "(malformed_json): body is not JSON"),
        (Reply.json_body({"message": "hi"}), "(unexpected_shape): 'state' is None"),
        (Reply.hang(HANG_S), "(timeout): no answer from"),
    ],
    ids=["403-rate-limit", "429", "500", "503", "garbage", "wrong-shape", "hang"],
)
def test_sensor_skips_with_the_cause_and_keeps_the_cursor(
    github: FakeGitHub, reply: Reply, cause: str
) -> None:
    # A timeout that only the hanging reply reaches, however busy the machine.
    resource = GitHubIssueResource(api_url=github.url, timeout_s=5)
    cursor = tick(None, resource).cursor
    github.set_issue(state="closed", closed_at="2026-03-01T10:00:00Z")  # a change it cannot see
    github.enqueue(reply)

    started = time.monotonic()
    result = tick(cursor, resource)

    assert time.monotonic() - started < HANG_S  # a tick never waits out a hanging GitHub
    assert result.run_requests == []
    assert result.skip_message.startswith("apache/arrow#45214: GitHub check failed ")
    assert cause in result.skip_message
    assert result.cursor == cursor


def test_sensor_skips_when_github_is_unreachable() -> None:
    with FakeGitHub() as gone:
        url = gone.url

    result = tick(None, GitHubIssueResource(api_url=url, timeout_s=1))

    assert result.run_requests == []
    assert "(network): cannot reach" in result.skip_message
    assert result.cursor is None


def test_sensor_token_is_bearer_and_in_no_output(
    github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    resource = build_defs().resources["github_issue"]  # API URL from the environment

    run = tick(None, resource)
    skip = tick(run.cursor, resource)
    github.enqueue(Reply.rate_limited_403(2_000_000_000))
    failed = tick(run.cursor, resource)

    assert [r.headers["authorization"] for r in github.requests] == [f"Bearer {TOKEN}"] * 3
    [request] = run.run_requests
    outputs = [run.cursor, skip.skip_message, skip.cursor, failed.skip_message,
               json.dumps(request.run_config), json.dumps(request.tags), repr(resource)]
    assert all(TOKEN not in text for text in outputs)


# --- probe -----------------------------------------------------------------------------------


def test_probe_file_has_the_reproduction_shape(tmp_path: Path) -> None:
    spec = ProbeFileSpec(rows=30, row_group_rows=10, payload_bytes=1000)

    metadata = pq.ParquetFile(write_probe_file(tmp_path / "p.parquet", spec)).metadata

    assert (metadata.num_rows, metadata.num_row_groups) == (30, 3)
    schema = metadata.schema.to_arrow_schema()
    assert schema.field("payload").type == pa.binary()
    assert pa.types.is_struct(schema.field("meta").type)


@pytest.mark.parametrize(
    "code, outcome",
    [
        ("print('fine')", "clean"),
        ("import os; os.abort()", "abort"),
        ("import sys; sys.exit(3)", "error"),
    ],
)
def test_child_runner_classifies_how_a_child_ends(code: str, outcome: str) -> None:
    result = run_snippet(code, [], timeout_s=120)

    assert result.outcome == outcome


def test_child_runner_kills_a_hung_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time\n"
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
            "time.sleep(60)\n")

    result = run_snippet(hang, [], timeout_s=1.5)

    assert result.outcome == "hang" and 1.5 <= result.seconds < 60  # killed, not waited out
    assert _gone(int(pid_file.read_text()))  # the whole group went, not only the child


def test_child_does_not_inherit_the_github_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)

    result = run_snippet("import os, sys; sys.exit(7 if 'GITHUB_TOKEN' in os.environ else 0)",
                         [], timeout_s=120)

    assert result.outcome == "clean"


def assert_outcome_matches_the_child(result: ProbeResult) -> None:
    """The probe's verdict is what its child process did, whatever this pyarrow does: a fixed
    release ("clean") passes as well as a broken one, a wrong label does not."""
    assert result.outcome != "error", result  # the reproduction itself could not run
    if result.outcome == "abort":
        assert result.returncode == -6 and "Fatal Python error" in result.stderr_tail, result
    elif result.outcome == "hang":
        assert result.seconds >= PROBE_TIMEOUT_S, result
    else:
        assert result.returncode == 0 and result.seconds < PROBE_TIMEOUT_S, result


def test_probe_reports_what_the_installed_pyarrow_does(tmp_path: Path) -> None:
    result = run_probe(timeout_s=PROBE_TIMEOUT_S, workdir=tmp_path)

    assert result.pyarrow_version == PYARROW == installed_pyarrow_version()
    assert_outcome_matches_the_child(result)
    assert list(tmp_path.iterdir()) == []  # the 40 MB file is cleaned up


def _probe(outcome: str) -> ProbeResult:
    return ProbeResult(PYARROW, outcome, 1.0, 0 if outcome == "clean" else -6, "")


@pytest.mark.parametrize(
    "state, reason, outcome, passed, says",
    [
        ("closed", "completed", "hang", False, "upstream says fixed but installed pyarrow"),
        ("closed", "completed", "abort", False, "still aborts"),
        ("closed", "completed", "clean", True, "agree"),
        ("closed", "not_planned", "hang", True, "agree"),
        ("open", None, "clean", False, "the streaming workaround can be revisited"),
        ("open", None, "hang", True, "issue open and pyarrow"),
        ("open", None, "error", False, "could not run the reproduction"),
        ("unknown", None, "abort", True, "run by hand"),
    ],
)
def test_agreement_between_issue_and_probe(state, reason, outcome, passed, says) -> None:
    verdict = judge_agreement(state, reason, _probe(outcome))

    assert verdict.passed is passed
    assert says in verdict.description


def _materialize(run_config: dg.RunConfig | None = None) -> dg.ExecuteInProcessResult:
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize([pyarrow_hang_probe], run_config=run_config, instance=instance)


def test_probe_asset_judges_the_outcome_against_a_closed_issue() -> None:
    config = ProbeConfig(issue_state="closed", issue_state_reason="completed",
                         issue_updated_at="2026-03-01T10:00:00Z", timeout_s=PROBE_TIMEOUT_S)

    result = _materialize(dg.RunConfig(ops={PROBE_ASSET: config}))

    assert result.success
    [materialization] = result.asset_materializations_for_node(PROBE_ASSET)
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["outcome"] in {"hang", "abort", "clean"}
    assert metadata["pyarrow_version"] == PYARROW
    assert metadata["issue_state"] == "closed"
    assert metadata["seconds"] > 0
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == PROBE_CHECK
    still_broken = metadata["outcome"] in BROKEN
    assert (check.passed, check.severity) == (not still_broken, dg.AssetCheckSeverity.WARN)
    expected = "upstream says fixed but installed pyarrow" if still_broken else "issue closed and pyarrow"
    assert check.description.startswith(expected), check.description


def test_probe_asset_run_by_hand_records_unknown_issue_state() -> None:
    result = _materialize(dg.RunConfig(ops={PROBE_ASSET: ProbeConfig(timeout_s=PROBE_TIMEOUT_S)}))

    [materialization] = result.asset_materializations_for_node(PROBE_ASSET)
    assert materialization.metadata["issue_state"].value == "unknown"
    [check] = result.get_asset_check_evaluations()
    assert check.passed and "run by hand" in check.description


def _gone(pid: int, within_s: float = 60.0) -> bool:
    """Whether ``pid`` is dead (absent or a zombie awaiting its reaper)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False
