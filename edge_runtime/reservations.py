"""Reservations: store the intent to run a job now, dispatch it on the host later.

Life of a reservation::

    reserve ─▶ RESERVED ──claim (write txn)──▶ DISPATCHING ──job_id──▶ DISPATCHED
                  │  │                              │
                  │  └─ expires_at reached ─▶ EXPIRED└─ start failed, no job ─▶ DISPATCH_FAILED
                  └─ cancel ─▶ CANCELLED   (cancel also works from EXPIRED / DISPATCH_FAILED)

Every transition is one ``BEGIN IMMEDIATE`` transaction whose UPDATE names the
status it leaves (``WHERE status = 'RESERVED'`` ...), so a cancel racing a
claim, or two dispatchers, can never both win. The reservation's run key is
the job's run key; that is what lets a restarted dispatcher find a job it
started but never recorded (see ``edge_runtime.dispatcher``).
"""

from __future__ import annotations

import json
import os
import sqlite3

from .errors import InvalidState, NotFound, OrchesError, UsageError
from .home import reserver_db_path
from .schema import RESERVATION_STATUSES, RESERVER_MIGRATIONS, TERMINAL_RESERVATION_STATUSES
from .store import Cleaning, Store, new_id, validate_run_key
from .timefmt import epoch_value, now, with_iso

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1_000_000
MAX_ERROR_LEN = 4000
PENDING_CANCELLABLE = ("RESERVED", "DISPATCH_FAILED", "EXPIRED")


class NotDispatched(InvalidState):
    """The reservation has no job yet (result/job of a not-dispatched reservation)."""

    kind = "not_dispatched"


class CannotCancel(InvalidState):
    """Cancellation is not possible in the reservation's (or its job's) state."""

    kind = "cannot_cancel"


def wake_path(db_path: str) -> str:
    """The FIFO through which ``reserve`` wakes a sleeping dispatcher early."""
    return db_path + ".wake"


def lock_path(db_path: str) -> str:
    """The file a dispatcher holds an exclusive ``flock`` on (one per database)."""
    return db_path + ".dispatcher.lock"


def poke(db_path: str) -> None:
    """Best effort: tell a dispatcher sleeping on ``db_path`` to look again.

    Non-blocking open of the FIFO fails with ENXIO when no dispatcher has it
    open, and a full FIFO just means a wake-up is already pending; either way
    the dispatcher's periodic poll remains the safety net.
    """
    try:
        fd = os.open(wake_path(db_path), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        import stat

        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b"w")
    except OSError:
        pass
    finally:
        os.close(fd)


def _epoch_out(out: dict[str, Any], name: str, ts: float | None, keep_fraction: bool = False) -> None:
    """``name`` + ``name_iso``; user-given instants keep their sub-second part."""
    with_iso(out, name, ts)
    if keep_fraction:
        out[name] = epoch_value(ts)


def reservation_json(row: sqlite3.Row) -> dict[str, Any]:
    """The reservation object printed by every command (spec field order)."""
    options, env_keys = _options_and_env_keys(row)
    out: dict[str, Any] = {
        "reservation_id": row["reservation_id"],
        "run_key": row["run_key"],
        "reservation_status": row["status"],
        "job_id": row["job_id"],
        "command": _loads(row["command"]),
        "orchesjob_start_options": options,
        "env_keys": env_keys,
        "metadata": _loads(row["metadata"]) if row["metadata"] is not None else None,
    }
    _epoch_out(out, "not_before", row["not_before"], keep_fraction=True)
    _epoch_out(out, "expires_at", row["expires_at"], keep_fraction=True)
    for name in ("created_at", "updated_at", "dispatched_at"):
        _epoch_out(out, name, row[name])
    out["last_error"] = row["last_error"]
    out["cancel_reason"] = row["cancel_reason"]
    return out


def _lateness(res: dict[str, Any], t: float) -> float | None:
    """How long a RESERVED reservation has been due without being dispatched (None when not due)."""
    due = res["not_before"] if res["not_before"] is not None else res["created_at"]
    if res["reservation_status"] != "RESERVED" or due is None or due > t:
        return None
    return t - due


def reservations_table(items: list[dict[str, Any]]) -> str:
    """Reservations one per row (`list --format table`); Late: how long a due one waits for dispatch."""
    from .table import fmt_duration, fmt_time, render

    t = now()
    rows = [
        (r["reservation_id"], r["run_key"], r["reservation_status"], fmt_time(r["not_before"]),
         fmt_duration(_lateness(r, t)), r["job_id"], r["last_error"] or r["cancel_reason"])
        for r in items
    ]  # fmt: skip
    return render(("Reservation id", "Run key", "Status", "Not before", "Late", "Job id", "Error / reason"), rows,
                  caps={"Error / reason": 60})  # fmt: skip


def reservation_fields(out: dict[str, Any]) -> str:
    """`status --format table`: the reservation (and with --include-job its job) as ``name: value`` lines."""
    import shlex

    from .table import fmt_duration, fmt_time, render_fields

    r = out["reservation"]
    pairs = [
        ("Reservation id", r["reservation_id"]),
        ("Run key", r["run_key"]),
        ("Status", r["reservation_status"]),
        ("Command", shlex.join(str(c) for c in r["command"] or [])),
        ("Not before", fmt_time(r["not_before"])),
        ("Expires", fmt_time(r["expires_at"])),
        ("Late", fmt_duration(_lateness(r, now()))),
        ("Created", fmt_time(r["created_at"])),
        ("Dispatched", fmt_time(r["dispatched_at"])),
        ("Job id", r["job_id"]),
        ("Last error", r["last_error"]),
        ("Cancel reason", r["cancel_reason"]),
    ]
    job = out.get("job")
    if job:
        pairs += [("Job status", job.get("status")), ("Job exit code", job.get("exit_code"))]
    return render_fields(pairs)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None  # a damaged row must not break reading the others


def stored_env(row: sqlite3.Row) -> dict[str, str]:
    """The extra environment of the reservation's job (never printed: keys only)."""
    env = _loads(row["env"]) if row["env"] else None
    return env if isinstance(env, dict) else {}


def _options_and_env_keys(row: sqlite3.Row) -> tuple[list[str], list[str]]:
    """Start options for display, and the sorted env keys.

    Rows of earlier versions may still carry ``--env`` in their options: their
    values are dropped from the display here, and their keys listed.
    """
    from .jobclient import split_env_options

    options = _loads(row["start_options"])
    if not isinstance(options, list):
        options = []
    try:
        options, legacy = split_env_options([str(o) for o in options])
    except OrchesError:
        options, legacy = [o for o in options if not str(o).startswith("--env")], {}
    return options, sorted({*legacy, *stored_env(row)})


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"Invalid metadata_json: must be valid JSON object (--metadata-json: {exc})") from None
    except RecursionError:
        raise UsageError("Invalid metadata_json: nested too deeply (--metadata-json)") from None
    if not isinstance(value, dict):
        raise UsageError("Invalid metadata_json: must be a JSON object (--metadata-json)")
    return value


class Reservations:
    """Reservation operations over one ``reserver.sqlite3``."""

    def __init__(self, db_path: str | None = None) -> None:
        self.db_path = os.path.abspath(db_path or reserver_db_path())
        try:
            self.store = Store(self.db_path, RESERVER_MIGRATIONS, check_dir=db_path is None)
        except OrchesError:
            raise
        except sqlite3.DatabaseError as exc:
            raise OrchesError(f"cannot use reservation database {self.db_path}: {exc}", db=self.db_path) from None

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ lookup
    def get(self, run_key: str | None = None, reservation_id: str | None = None) -> sqlite3.Row:
        if reservation_id is not None:
            row = self.store.one("SELECT * FROM reservations WHERE reservation_id = ?", (reservation_id,))
        else:
            row = self.store.one("SELECT * FROM reservations WHERE run_key = ?", (run_key,))
        if row is None:
            what = f"reservation_id {reservation_id}" if reservation_id is not None else f"run_key {run_key}"
            raise NotFound(
                f"Reservation not found: {what}",
                **({"reservation_id": reservation_id} if reservation_id is not None else {"run_key": run_key}),
            )
        return row

    def _by_id_locked(self, db: sqlite3.Connection, reservation_id: str) -> sqlite3.Row:
        return db.execute("SELECT * FROM reservations WHERE reservation_id = ?", (reservation_id,)).fetchone()

    # ----------------------------------------------------------------- reserve
    def reserve(
        self,
        run_key: str,
        command: Sequence[str],
        *,
        not_before: float | None = None,
        expires_at: float | None = None,
        metadata: dict[str, Any] | None = None,
        start_options: Sequence[str] = (),
        env: dict[str, str] | None = None,
        rearm: bool = False,
    ) -> dict[str, Any]:
        """Create the reservation of ``run_key``, or return the one it already has.

        Idempotent under concurrency: the insert and the read-back happen in one
        write transaction, and ``UNIQUE(run_key)`` makes a second insert a no-op.
        ``--env`` among ``start_options`` is stored with ``env``, apart from them.

        ``rearm``: a reservation that ended without ever dispatching a job
        (cancelled by a user's kill of the task, expired, failed to dispatch) is
        replaced by this request, in the same transaction — what a cleared
        Airflow task needs. A pending or dispatched one is never touched, so a
        resent or concurrent rearm cannot dispatch twice.
        """
        from .jobclient import split_env_options

        validate_run_key(run_key)
        if not command:
            raise UsageError("reserve requires command after --")
        start_options, option_env = split_env_options(start_options)
        env = {**option_env, **(env or {})}
        # command, start_options, env, metadata, not_before, expires_at: as stored, by insert and rearm alike
        request = (
            json.dumps(list(command)),
            json.dumps(list(start_options)),
            json.dumps(env) if env else None,
            json.dumps(metadata) if metadata is not None else None,
            not_before,
            expires_at,
        )
        t = now()
        with self.store.write() as db:
            inserted = db.execute(
                "INSERT INTO reservations (reservation_id, run_key, status, command, start_options, env, metadata, "
                "not_before, expires_at, created_at, updated_at) VALUES (?, ?, 'RESERVED', ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_key) DO NOTHING",
                (new_id(), run_key, *request, t, t),
            ).rowcount
            rearmed = 0
            if not inserted and rearm:
                rearmed = db.execute(
                    "UPDATE reservations SET status='RESERVED', command=?, start_options=?, env=?, metadata=?, "
                    "not_before=?, expires_at=?, dispatch_claimed_at=NULL, last_error=NULL, cancel_reason=NULL, "
                    "updated_at=? "
                    "WHERE run_key=? AND job_id IS NULL AND status IN ('CANCELLED','EXPIRED','DISPATCH_FAILED')",
                    (*request, t, run_key),
                ).rowcount
            row = db.execute("SELECT * FROM reservations WHERE run_key = ?", (run_key,)).fetchone()
        if inserted or rearmed:
            poke(self.db_path)
        return {"created": bool(inserted), "rearmed": bool(rearmed), "reservation": reservation_json(row)}

    # ------------------------------------------------------------ status/list
    def status(self, run_key: str | None = None, reservation_id: str | None = None) -> dict[str, Any]:
        return reservation_json(self.get(run_key, reservation_id))

    def list(self, status: str | None = None, limit: int = DEFAULT_LIST_LIMIT) -> list[dict[str, Any]]:
        if status is not None and status not in RESERVATION_STATUSES:
            raise UsageError(f"unknown status {status!r}; choose from {', '.join(RESERVATION_STATUSES)}")
        if not 0 <= limit <= MAX_LIST_LIMIT:
            raise UsageError(f"--limit must be between 0 and {MAX_LIST_LIMIT}", value=limit)
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self.store.all(
            f"SELECT * FROM reservations {where} ORDER BY created_at DESC, seq DESC LIMIT ?", [*params, limit]
        )
        return [reservation_json(r) for r in rows]

    # ------------------------------------------------------------------ cancel
    def cancel_pending(self, row: sqlite3.Row, reason: str | None = None) -> dict[str, Any] | None:
        """Cancel a not-yet-dispatched reservation, recording ``reason``; None if it has a job (cancel that
        instead)."""
        with self.store.write() as db:
            t = now()
            changed = db.execute(
                "UPDATE reservations SET status='CANCELLED', cancel_reason=?, updated_at=? WHERE reservation_id=? "
                "AND status IN ('RESERVED','DISPATCH_FAILED','EXPIRED')",
                (reason, t, row["reservation_id"]),
            ).rowcount
            current = self._by_id_locked(db, row["reservation_id"])
        if changed:
            return {"cancelled": True, "already_ended": False, "reservation": reservation_json(current)}
        if current["job_id"] is not None:
            return None
        if current["status"] == "CANCELLED":
            # Cancelling what is already cancelled succeeds and changes nothing (the stop rule of all three
            # tools); `cancelled` says the reservation is cancelled, as `orchesjob cancel` says it of a job.
            return {"cancelled": True, "already_ended": True, "reservation": reservation_json(current)}
        raise CannotCancel(
            f"Cannot cancel reservation in status {current['status']} without job_id",
            reservation_id=current["reservation_id"],
            run_key=current["run_key"],
            reservation_status=current["status"],
        )

    # ------------------------------------------------------------------- clean
    def clean(
        self,
        *,
        before: float | None = None,
        after: float | None = None,
        all_: bool = False,
        job_id: str | None = None,
        reservation_id: str | None = None,
        run_key: str | None = None,
        dry_run: bool = False,
    ) -> ReservationsCleaning:
        """Delete terminal reservations by the spec's selection rules (never RESERVED/DISPATCHING),
        as the result is iterated."""
        if job_id is not None or reservation_id is not None:
            if job_id is not None and reservation_id is not None:
                raise UsageError("--job-id and --reservation-id cannot be combined")
            if before is not None or after is not None or all_ or run_key is not None:
                option = "--job-id" if job_id is not None else "--reservation-id"
                raise UsageError(f"{option} cannot be combined with --all, --before, --after, or --run-key")
            by_id = ("job_id", job_id) if job_id is not None else ("reservation_id", reservation_id)
        else:
            if before is None and after is None and not all_:
                raise UsageError("Specify --all, --job-id, --reservation-id, --before, or --after (what to clean)")
            by_id = None
        return ReservationsCleaning(
            self.store, before=before, after=after, run_key=run_key, by_id=by_id, dry_run=dry_run
        )

    # ------------------------------------------------- dispatcher primitives
    def max_seq(self) -> int:
        return self.store.one("SELECT COALESCE(MAX(seq), 0) FROM reservations")[0]

    def created_since(self, seq: int) -> list[sqlite3.Row]:
        return self.store.all("SELECT * FROM reservations WHERE seq > ? ORDER BY seq", (seq,))

    def dispatching(self) -> list[sqlite3.Row]:
        return self.store.all("SELECT * FROM reservations WHERE status = 'DISPATCHING' ORDER BY seq")

    def expire_due(self, t: float) -> list[sqlite3.Row]:
        """RESERVED rows whose expires_at has passed → EXPIRED; returns them (updated)."""
        with self.store.write() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT seq FROM reservations WHERE status = 'RESERVED' AND expires_at IS NOT NULL "
                    "AND expires_at <= ? ORDER BY expires_at, seq",
                    (t,),
                )
            ]
            db.executemany(
                "UPDATE reservations SET status='EXPIRED', last_error='expired before dispatch', updated_at=? "
                "WHERE seq=? AND status='RESERVED'",
                [(t, i) for i in ids],
            )
            return [db.execute("SELECT * FROM reservations WHERE seq = ?", (i,)).fetchone() for i in ids]

    def next_due(self, t: float) -> sqlite3.Row | None:
        """The RESERVED reservation that may be dispatched at ``t`` and is due first (its ``not_before``, or
        its creation when it has none; then insertion order)."""
        # Two reads that each walk reservations_due in order and stop at the first row, instead of one
        # whose ORDER BY COALESCE(...) sorted every pending reservation on every pass.
        live = "status = 'RESERVED' AND (expires_at IS NULL OR expires_at > ?)"
        timed = self.store.one(
            f"SELECT * FROM reservations WHERE {live} AND not_before <= ? ORDER BY not_before, seq LIMIT 1", (t, t)
        )
        # Among those without a not_before, insertion order is creation order (short of a clock step back).
        now_ = self.store.one(
            f"SELECT * FROM reservations WHERE {live} AND not_before IS NULL ORDER BY seq LIMIT 1", (t,)
        )
        candidates = [(r["not_before"], r["seq"], r) for r in (timed,) if r is not None]
        candidates += [(r["created_at"], r["seq"], r) for r in (now_,) if r is not None]
        return min(candidates, key=lambda c: c[:2])[2] if candidates else None

    def next_wakeup(self, t: float) -> float | None:
        """The next instant something becomes due (a not_before or an expires_at)."""
        row = self.store.one(
            "SELECT MIN(x) FROM (SELECT MIN(not_before) AS x FROM reservations WHERE status = 'RESERVED' "
            "AND not_before > ? UNION ALL SELECT MIN(expires_at) FROM reservations WHERE status = 'RESERVED' "
            "AND expires_at > ?)",
            (t, t),
        )
        return row[0]

    def claim(self, reservation_id: str, t: float) -> sqlite3.Row | None:
        """RESERVED → DISPATCHING, recording the claim instant; None if someone else moved it."""
        with self.store.write() as db:
            changed = db.execute(
                "UPDATE reservations SET status='DISPATCHING', dispatch_claimed_at=?, updated_at=? "
                "WHERE reservation_id=? AND status='RESERVED' AND (not_before IS NULL OR not_before <= ?) "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (t, t, reservation_id, t, t),
            ).rowcount
            return self._by_id_locked(db, reservation_id) if changed else None

    def mark_dispatched(self, reservation_id: str, job_id: str, note: str | None = None) -> sqlite3.Row:
        t = now()
        with self.store.write() as db:
            db.execute(
                "UPDATE reservations SET status='DISPATCHED', job_id=?, dispatched_at=?, updated_at=?, last_error=? "
                "WHERE reservation_id=? AND status='DISPATCHING'",
                (job_id, t, t, note, reservation_id),
            )
            return self._by_id_locked(db, reservation_id)

    def mark_failed(self, reservation_id: str, error: str) -> sqlite3.Row:
        t = now()
        with self.store.write() as db:
            db.execute(
                "UPDATE reservations SET status='DISPATCH_FAILED', last_error=?, updated_at=? "
                "WHERE reservation_id=? AND status='DISPATCHING'",
                (error[:MAX_ERROR_LEN], t, reservation_id),
            )
            return self._by_id_locked(db, reservation_id)

    def requeue(self, reservation_id: str, note: str) -> sqlite3.Row:
        """DISPATCHING → RESERVED (only when provably no job was created)."""
        t = now()
        with self.store.write() as db:
            db.execute(
                "UPDATE reservations SET status='RESERVED', dispatch_claimed_at=NULL, last_error=?, updated_at=? "
                "WHERE reservation_id=? AND status='DISPATCHING'",
                (note, t, reservation_id),
            )
            return self._by_id_locked(db, reservation_id)


class ReservationsCleaning(Cleaning):
    """``orchesjob-reserver clean``: reservations by ``updated_at`` (no files of their own)."""

    table = "reservations"
    columns = "*"
    time_column = "updated_at"
    statuses = TERMINAL_RESERVATION_STATUSES
    list_key = "reservations"
    fields = ("deleted", "dry_run", "matched")

    def describe(self, row: sqlite3.Row) -> dict[str, Any]:
        return reservation_json(row)
