"""Named errors and their exit codes.

Every user-visible failure is one of these; the CLI layer turns it into a single
JSON object on stderr and the matching exit code. The codes follow the spec of
``orchesjob`` (0-5); the reserver and flow runner map them to their own tables.
"""

from __future__ import annotations

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class OrchesError(Exception):
    """Base class: a failure with a stable machine-readable kind and exit code."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "error_type": self.kind}
        out.update(self.details)
        return out


class UsageError(OrchesError):
    """Invalid arguments or input (bad flag, bad datetime, bad flow file)."""

    exit_code = 2
    kind = "invalid_arguments"


class IncompatibleCaller(UsageError):
    """The caller speaks another major version of this runtime's interface."""

    kind = "incompatible_runtime"


class NotFound(OrchesError):
    """The job, run key, reservation or flow run does not exist."""

    exit_code = 3
    kind = "not_found"


class InvalidState(OrchesError):
    """The operation is not allowed in the object's current state."""

    exit_code = 4
    kind = "invalid_state"


class LockError(OrchesError):
    """The database or an exclusive role (dispatcher, flow advancer) is held elsewhere."""

    exit_code = 5
    kind = "lock_error"


class ResourceError(OrchesError):
    """The host refused a resource needed to judge or run a job (file descriptors, memory, /proc).

    Never read as "the process is gone": a live job judged dead on such an error
    would be a guessed outcome.
    """

    kind = "resource_error"
