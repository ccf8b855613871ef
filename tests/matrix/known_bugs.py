"""A pytest plugin of the matrix runs (``-p tests.matrix.known_bugs``): failures caused by a
known, reported provider bug are reported as xfail (non-strict), every other failure stays one.

A bug is recognised by its exact symptom, never by test name, so a test that fails for any
other reason still fails, and a test passes again as soon as the provider is fixed.
"""

from __future__ import annotations

import pytest

# (exception type name, text in the message) -> why it is a known bug
KNOWN_BUGS = {
    ("TypeError", "unexpected keyword argument 'no_host_key_check'"): (
        "provider bug: hooks/transport.py SSHTransport._connect passes SSHHook(no_host_key_check=...), "
        "a keyword that apache-airflow-providers-ssh accepts only from 7.0.0; the constraints of Airflow "
        "2.11.0 / 3.0.6 pin 4.1.0 / 4.1.3 (see docs/AIRFLOW_VERSIONS.md)"
    ),
}


def known_bug(exc_type: str, message: str) -> str | None:
    for (name, text), reason in KNOWN_BUGS.items():
        if exc_type == name and text in message:
            return reason
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or not report.failed or call.when != "call":
        return
    reason = known_bug(call.excinfo.type.__name__, str(call.excinfo.value))
    if reason:
        report.outcome = "skipped"
        report.wasxfail = reason
