"""Importable by every process of the test deployment (on its PYTHONPATH)."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """``[core] hostname_callable``: the deployment's name of this process (triggerer-1, celery-worker-2, ...).

    Task instances and triggerer jobs record it, so a test can tell which process ran what.
    """
    return os.environ.get("ORCHESJOB_DEPLOY_PROCESS") or socket.getfqdn()
