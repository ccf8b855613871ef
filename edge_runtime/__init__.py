"""Edge runtime: the host-side half of airflow-provider-orchesjob.

Installed on remote hosts without Airflow; provides the ``orchesjob``,
``orchesjob-reserver`` and ``orchesjob-flow`` command-line tools, all backed by
local SQLite files through one shared store layer.
"""

# Kept as a literal (not importlib.metadata) because every remote poll is a new
# process and metadata lookups cost several milliseconds of start-up time.
__version__ = "0.1.0"

# Capabilities advertised by ``orchesjob info`` so remote callers can check
# what this runtime supports before relying on it.
CAPABILITIES = (
    "reuse-policy",
    "result",
    "cancel",
    "status-log-chunks",
    "status-batch",
    "start-cwd-env-timeout",
    "forget-keys",
    "start-request-id",
    "status-batch-poll",
    "env-file",
    "clean-older-than",
    "clean-summary",  # `clean --summary` in the three CLIs (only the counts and the selection)
    "job-lifecycle-v2",
    "reserve-rearm",
    "job-labels",
    "reserve-cancel-reason",
    "flow-labels",
    "start-compat-check",
    # a host owner's terminal: `orchesjob list`, `--format table` (status/list/stats of the three CLIs),
    # `logs --follow`, `stats`, `start/rerun --sync --exit-code`, and stopping an ended job/reservation/flow
    # run succeeds (exit 0, already_ended) in all three CLIs
    "job-list",
    "format-table",
    "logs-follow",
    "stats",
    "sync-exit-code",
    "stop-ended-ok",
)


def check_caller_major(expected: str) -> None:
    """Refuse a caller that speaks another major version of this runtime's interface
    (``start --expect-major``): checked before anything is written, so a refused start
    did nothing and the caller can ask ``info`` and adapt."""
    from .errors import IncompatibleCaller

    if expected != __version__.split(".")[0]:
        raise IncompatibleCaller(
            f"this edge runtime is version {__version__}; the caller expects major version {expected}: "
            f"install the matching airflow-provider-orchesjob on this host",
            version=__version__,
        )


def runtime_summary() -> dict:
    """What a caller needs to know about this runtime (the start reply's ``runtime`` field):
    the same version and capabilities as ``info``, without its state-path lookups."""
    return {"version": __version__, "capabilities": list(CAPABILITIES)}
