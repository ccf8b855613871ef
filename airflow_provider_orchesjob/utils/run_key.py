"""Retry-safe run keys: one remote job per Airflow task instance, across all its tries.

The key is a pure function of (dag_id, task_id, run_id, map_index) — not the
try number — so every try of a task instance addresses the same remote job, and
the host's reuse policy decides whether a try reattaches, adopts a result, or
starts a new attempt.

Format: ``af:<dag_id>:<task_id>:<run_id>[:<map_index>]``, or with a namespace
(the connection extra ``run_key_namespace``, for two Airflow deployments sharing
one host user) ``af@<namespace>:<dag_id>:...`` — a first part that no key
without a namespace can have, so the two sets of keys never meet. Characters outside a
safe set (letters, digits and ``._:+@=-``) are replaced by ``_``; whenever that
changed anything, or the key would exceed :data:`MAX_LEN`, a hash of the exact
inputs is appended (``~<16 hex>``) so distinct task instances never collide.
Only these strings and ``hashlib.sha256`` are involved: the key is stable
across Airflow versions.
"""

from __future__ import annotations

import hashlib
import re

MAX_LEN = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._:+@=-]")
_HASH_LEN = 16


def run_key_for(
    dag_id: str,
    task_id: str,
    run_id: str,
    map_index: int | None = -1,
    *,
    prefix: str = "af",
    namespace: str | None = None,
) -> str:
    """The run key of one task instance (``map_index`` -1 or None for unmapped tasks)."""
    head = f"{prefix}@{namespace}" if namespace else prefix
    parts = [head, dag_id, task_id, run_id]
    if map_index is not None and map_index >= 0:
        parts.append(str(map_index))
    raw = ":".join(parts)
    safe = ":".join(_UNSAFE.sub("_", p) for p in parts)
    if safe == raw and len(safe) <= MAX_LEN:
        return safe
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:_HASH_LEN]
    return safe[: MAX_LEN - _HASH_LEN - 1] + "~" + digest


def run_key_from_context(context: dict, *, suffix: str | None = None, namespace: str | None = None) -> str:
    """The run key of the task instance in an Airflow ``context``."""
    ti = context["ti"]
    key = run_key_for(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1), namespace=namespace)
    return f"{key}:{suffix}" if suffix else key
