"""Named failures of remote edge-runtime calls.

Each maps an exit code of the edge CLIs (or a transport failure) to one class;
the message always carries the remote stderr JSON so the task log shows why.
"""

from __future__ import annotations

from .compat import AirflowException


class OrchesJobError(AirflowException):
    """Base class. ``exit_code``/``stderr``/``remote_error`` describe the remote failure.

    ``transient`` errors (a lock timeout, the runtime briefly missing) are retried
    by the hook and the triggers within their budgets instead of failing the task.
    """

    transient = False

    def __init__(
        self, message: str, *, exit_code: int | None = None, stderr: str = "", remote_error: dict | None = None
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr = stderr
        self.remote_error = remote_error or {}


class OrchesJobNotFound(OrchesJobError):
    """The job, run key, reservation or flow run does not exist on the host."""


class OrchesJobInvalidState(OrchesJobError):
    """Not allowed in the current state (e.g. result of a running job, cancel of a finished one)."""


class OrchesJobInvalidArguments(OrchesJobError):
    """The edge CLI rejected the arguments (exit 2)."""


class OrchesJobLockError(OrchesJobError):
    """The host's database or an exclusive role is held elsewhere (exit 5).

    Transient: nothing was written, so the call is resent within the reconnect budget.
    """

    transient = True


class OrchesJobRuntimeMissing(OrchesJobError):
    """The edge CLI is not installed (or not found) on the host.

    Transient once the runtime was seen on the host (e.g. during a ``pipx upgrade``):
    then resent within the reconnect budget; on first contact it is reported at once.
    """

    transient = True


class OrchesJobRuntimeIncompatible(OrchesJobError):
    """The host's edge runtime is too old or not this project's runtime."""


class OrchesJobCommandError(OrchesJobError):
    """The edge CLI failed in an unexpected way (exit 1, bad JSON, ...)."""


class OrchesJobConnectionError(OrchesJobError):
    """The SSH connection could not be made or was lost.

    ``sent`` tells whether the command may have reached the host: a command
    whose effect is not idempotent must then not be resent blindly.
    """

    retryable = True

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class OrchesJobHostKeyError(OrchesJobConnectionError):
    """The host key is unknown or does not match: refused, never retried."""

    retryable = False


class OrchesJobAuthenticationError(OrchesJobConnectionError):
    """The host refused our credentials: retrying cannot help."""

    retryable = False


class OrchesJobRuntimeNotProvisioned(OrchesJobError):
    """A provisioned host (connection extra ``provision_runtime``) lacks this provider's runtime archive.

    Nothing ran: the hook uploads the archive and resends the call.
    """


class OrchesJobProvisionError(OrchesJobError):
    """Uploading the runtime archive to a host failed, or what arrived there is not what was sent."""
