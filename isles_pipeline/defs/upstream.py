"""Watch apache/arrow#45214 and probe the installed pyarrow when the issue or pyarrow changes.

- ``GitHubIssueResource`` (key ``github_issue``): which issue, where the API is, how long to wait.
- ``arrow_issue_sensor`` (:func:`build_arrow_issue_sensor`): hourly at most, STOPPED unless
  ``ISLES_AUTOMATION=on`` so it does not poll GitHub until a user turns it on. Its cursor is the last observed issue state and the pyarrow version probed;
  a change of issue state/closed_at or of pyarrow (first tick included) requests one
  ``pyarrow_probe_job`` run, with the issue state in the run config. GitHub trouble is a skip
  that names the cause, with the cursor kept.
- ``pyarrow_hang_probe`` (group ``upstream``): runs the reproduction in a child process and
  records the outcome; its check ``probe_agrees_with_issue`` warns when the issue and the probe
  disagree.
"""

# No `from __future__ import annotations`: Dagster reads the asset's config annotation at
# definition time and cannot resolve it from a string.
import json
from dataclasses import asdict, dataclass

import dagster as dg

from ..settings import github_token
from ..upstream.github import (
    DEFAULT_API_URL,
    DEFAULT_TIMEOUT_S,
    FetchFailure,
    FetchOutcome,
    IssueRef,
    IssueState,
    IssueWatcher,
    Unchanged,
)
from ..upstream.probe import (
    ProbeFileSpec,
    ProbeResult,
    installed_pyarrow_version,
    run_probe,
)

PROBE_ASSET = "pyarrow_hang_probe"
PROBE_CHECK = "probe_agrees_with_issue"
PROBE_JOB = "pyarrow_probe_job"
RESOURCE_KEY = "github_issue"
WATCH_INTERVAL_S = 3600
UNKNOWN = "unknown"
TAG_PREFIX = "isles/upstream"


class GitHubIssueResource(dg.ConfigurableResource):
    """The GitHub issue to watch. The token is read from ``GITHUB_TOKEN`` at call time, never
    stored in config; ``api_url`` is ``GITHUB_API_URL`` (settings), else api.github.com."""

    api_url: str | None = None
    owner: str = "apache"
    repo: str = "arrow"
    number: int = 45214
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def ref(self) -> IssueRef:
        """The watched issue."""
        return IssueRef(self.owner, self.repo, self.number)

    def watcher(self) -> IssueWatcher:
        """A client built from config, with the token as the environment has it now."""
        return IssueWatcher(api_url=self.api_url or DEFAULT_API_URL, timeout_s=self.timeout_s, token=github_token())

    def fetch(self, etag: str | None = None) -> FetchOutcome:
        """The issue's state, ``Unchanged`` for a matching ``etag``, or a ``FetchFailure``."""
        return self.watcher().fetch(self.ref, etag)


@dataclass(frozen=True)
class WatchCursor:
    """What the sensor last saw: the issue and the pyarrow version it was probed with."""

    state: str
    state_reason: str | None
    closed_at: str | None
    updated_at: str
    etag: str | None
    pyarrow_version: str

    def to_json(self) -> str:
        """Stable JSON for the sensor cursor."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "WatchCursor | None":
        """The cursor, or ``None`` when absent or unreadable (treated as a first tick)."""
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def same_issue_state(self, issue: IssueState) -> bool:
        """Whether the issue's state (not just its comments) is what was probed."""
        return (self.state, self.closed_at) == (issue.state, issue.closed_at)


class ProbeConfig(dg.Config):
    """Run config of the probe; the sensor fills in the issue fields, a hand run leaves them."""

    issue_state: str = UNKNOWN
    issue_state_reason: str | None = None
    issue_closed_at: str | None = None
    issue_updated_at: str | None = None
    timeout_s: float = 20.0
    rows: int = ProbeFileSpec().rows


def observe(previous: WatchCursor | None, outcome: FetchOutcome) -> IssueState | FetchFailure:
    """The issue as it stands: a 304 means the cursor's view is still current."""
    if isinstance(outcome, (IssueState, FetchFailure)):
        return outcome
    if previous is None:  # we sent no If-None-Match, so a 304 makes no sense
        return FetchFailure("unexpected_shape", "304 Not Modified to an unconditional request")
    return IssueState(
        state=previous.state,
        state_reason=previous.state_reason,
        closed_at=previous.closed_at,
        updated_at=previous.updated_at,
        etag=outcome.etag or previous.etag,
        title="",
    )


def probe_reason(
    previous: WatchCursor | None, issue: IssueState, pyarrow_version: str
) -> str | None:
    """Why a probe is due, or ``None`` when the state and pyarrow were already probed."""
    if previous is None:
        return "first observation"
    if not previous.same_issue_state(issue):
        return (f"issue {previous.state} (closed_at {previous.closed_at}) -> {issue.state} "
                f"(closed_at {issue.closed_at})")
    if previous.pyarrow_version != pyarrow_version:
        return f"pyarrow {previous.pyarrow_version} -> {pyarrow_version}"
    return None


def run_key(ref: IssueRef, issue: IssueState, pyarrow_version: str) -> str:
    """E.g. ``arrow-45214:open:2025-01-10T12:00:00Z:pyarrow-26.0.1``."""
    return f"{ref.key}:{issue.state}:{issue.updated_at}:pyarrow-{pyarrow_version}"


def probe_run_request(
    ref: IssueRef, issue: IssueState, pyarrow_version: str, reason: str
) -> dg.RunRequest:
    """One probe run carrying the seen issue state in its config and tags."""
    config = ProbeConfig(
        issue_state=issue.state,
        issue_state_reason=issue.state_reason,
        issue_closed_at=issue.closed_at,
        issue_updated_at=issue.updated_at,
    )
    return dg.RunRequest(
        run_key=run_key(ref, issue, pyarrow_version),
        run_config=dg.RunConfig(ops={PROBE_ASSET: config}),
        tags={
            f"{TAG_PREFIX}_issue": ref.label,
            f"{TAG_PREFIX}_issue_state": issue.state,
            f"{TAG_PREFIX}_pyarrow_version": pyarrow_version,
            f"{TAG_PREFIX}_reason": reason,
        },
    )


def decide_tick(
    ref: IssueRef, previous: WatchCursor | None, outcome: FetchOutcome, pyarrow_version: str
) -> dg.SensorResult:
    """The whole sensor decision, free of I/O: run request, skip, or skip on failure."""
    issue = observe(previous, outcome)
    if isinstance(issue, FetchFailure):
        # No cursor in the result: Dagster keeps the stored one as it is.
        return dg.SensorResult(
            skip_reason=f"{ref.label}: GitHub check failed ({issue.kind}): {issue.message}; "
                        "cursor kept"
        )
    cursor = WatchCursor(issue.state, issue.state_reason, issue.closed_at, issue.updated_at,
                         issue.etag, pyarrow_version).to_json()
    reason = probe_reason(previous, issue, pyarrow_version)
    if reason is not None:
        return dg.SensorResult(
            run_requests=[probe_run_request(ref, issue, pyarrow_version, reason)], cursor=cursor
        )
    how = "not modified (304)" if isinstance(outcome, Unchanged) else "state unchanged"
    return dg.SensorResult(
        skip_reason=f"{ref.label}: issue {issue.state}, {how} since {issue.updated_at}; "
                    f"pyarrow {pyarrow_version} already probed",
        cursor=cursor,
    )


@dataclass(frozen=True)
class Verdict:
    """Whether the issue and the probe tell the same story."""

    passed: bool
    description: str


def judge_agreement(
    issue_state: str, issue_state_reason: str | None, probe: ProbeResult
) -> Verdict:
    """Compare what upstream says with what the installed pyarrow does."""
    says_fixed = issue_state == "closed" and issue_state_reason != "not_planned"
    broken = probe.outcome in ("hang", "abort")
    version = f"pyarrow {probe.pyarrow_version}"
    if probe.outcome == "error":
        # Not in the brief's list, but a probe that cannot run proves nothing either way.
        return Verdict(False, f"the probe could not run the reproduction on {version} "
                              f"(exit {probe.returncode}); see stderr_tail")
    if says_fixed and broken:
        return Verdict(False, f"upstream says fixed but installed {version} still "
                              f"{'hangs' if probe.outcome == 'hang' else 'aborts'}")
    if issue_state == "open" and not broken:
        return Verdict(False, f"{version} exits cleanly while the issue is open: "
                              "the streaming workaround can be revisited")
    if issue_state == UNKNOWN:
        return Verdict(True, f"no issue state given (run by hand); {version}: {probe.outcome}")
    return Verdict(True, f"issue {issue_state} and {version} ({probe.outcome}) agree")


def probe_metadata(probe: ProbeResult, config: ProbeConfig) -> dict[str, dg.MetadataValue]:
    """What the materialization records."""
    return {
        "pyarrow_version": dg.MetadataValue.text(probe.pyarrow_version),
        "outcome": dg.MetadataValue.text(probe.outcome),
        "seconds": dg.MetadataValue.float(probe.seconds),
        "returncode": dg.MetadataValue.text(str(probe.returncode)),
        "issue_state": dg.MetadataValue.text(config.issue_state),
        "issue_updated_at": dg.MetadataValue.text(config.issue_updated_at or UNKNOWN),
        "stderr_tail": dg.MetadataValue.text(probe.stderr_tail[-500:]),
    }


@dg.asset(
    name=PROBE_ASSET,
    group_name="upstream",
    kinds={"python"},
    description="Whether the installed pyarrow still hangs on apache/arrow#45214's pattern "
                "(run in a child process with a timeout).",
    check_specs=[
        dg.AssetCheckSpec(
            PROBE_CHECK,
            asset=PROBE_ASSET,
            description="Warns when the issue state and the probe outcome disagree.",
        )
    ],
)
def pyarrow_hang_probe(
    context: dg.AssetExecutionContext, config: ProbeConfig
) -> dg.MaterializeResult:
    """Run the probe, record its outcome, and judge it against the issue state seen."""
    probe = run_probe(timeout_s=config.timeout_s, spec=ProbeFileSpec(rows=config.rows))
    context.log.info(f"pyarrow {probe.pyarrow_version}: {probe.outcome} in {probe.seconds} s")
    verdict = judge_agreement(config.issue_state, config.issue_state_reason, probe)
    return dg.MaterializeResult(
        metadata=probe_metadata(probe, config),
        check_results=[
            dg.AssetCheckResult(
                check_name=PROBE_CHECK,
                passed=verdict.passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=verdict.description,
                metadata={"issue_state": config.issue_state, "outcome": probe.outcome},
            )
        ],
    )


pyarrow_probe_job = dg.define_asset_job(
    PROBE_JOB,
    selection=dg.AssetSelection.assets(pyarrow_hang_probe),
    description="Probe the installed pyarrow for the apache/arrow#45214 hang.",
)


def watch_arrow_issue(context: dg.SensorEvaluationContext, github_issue: GitHubIssueResource) -> dg.SensorResult:
    """One bounded GitHub request per tick; never raises for GitHub trouble."""
    previous = WatchCursor.from_json(context.cursor)
    outcome = github_issue.fetch(etag=previous.etag if previous else None)
    return decide_tick(github_issue.ref, previous, outcome, installed_pyarrow_version())


def build_arrow_issue_sensor(running: bool = False) -> dg.SensorDefinition:
    """``arrow_issue_sensor``, started with the code location when ``running`` (ISLES_AUTOMATION)."""
    return dg.sensor(
        name="arrow_issue_sensor",
        job=pyarrow_probe_job,
        minimum_interval_seconds=WATCH_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description="Polls apache/arrow#45214 (conditional requests) and requests a probe when the "
                    "issue state or the installed pyarrow changes. Off by default.",
    )(watch_arrow_issue)


UPSTREAM_ASSETS = [pyarrow_hang_probe]
UPSTREAM_JOBS = [pyarrow_probe_job]
