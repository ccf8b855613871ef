"""The one layer that owns SQLite: connection settings, migrations, transactions.

Durability: WAL journal with ``synchronous=FULL`` — every commit fsyncs the WAL,
so a committed claim on a run key survives a power loss (``NORMAL`` in WAL mode
may lose the last transactions). Writers use ``BEGIN IMMEDIATE`` so that every
check-then-insert decision is taken while holding the single write lock.

Schema work runs only when ``PRAGMA user_version`` is behind the code, i.e. once
per schema version, never on the hot path of a poll.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from .errors import LockError, OrchesError, UsageError

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Any

BUSY_TIMEOUT_S = 30.0
MAX_RUN_KEY_LEN = 1024
# Rows deleted per write transaction by `clean`: the write lock is held for
# milliseconds, never long enough to stall a supervisor recording an outcome.
CLEAN_BATCH = 200


def new_id() -> str:
    """A random (version 4) UUID string; os.urandom is cheaper to import than uuid."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def validate_run_key(run_key: str) -> str:
    """A run key every store accepts: non-blank, at most 1024 characters, no NUL."""
    if not run_key or not run_key.strip():
        raise UsageError("--run-key must not be empty")
    if len(run_key) > MAX_RUN_KEY_LEN:
        raise UsageError(f"--run-key longer than {MAX_RUN_KEY_LEN} characters")
    if "\x00" in run_key:
        raise UsageError("--run-key must not contain NUL bytes")
    try:
        run_key.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--run-key must be valid UTF-8") from None
    return run_key


MAX_LABELS = 32
MAX_LABEL_VALUE_LEN = 1024


def validate_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    """Labels every job accepts: at most 32; keys of letters, digits and ``._/-`` (at most 63,
    starting with a letter or digit); values of at most 1024 characters without NUL."""
    if not labels:
        return None
    if len(labels) > MAX_LABELS:
        raise UsageError(f"--label: at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not (
            isinstance(key, str)
            and 0 < len(key) <= 63
            and key[0].isascii()
            and key[0].isalnum()
            and all(c.isascii() and (c.isalnum() or c in "._/-") for c in key)
        ):
            raise UsageError(f"--label: invalid key {key!r} (letters, digits and ._/-, at most 63)")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_LEN or "\x00" in value:
            raise UsageError(f"--label {key}: the value must be at most {MAX_LABEL_VALUE_LEN} characters, no NUL")
    return labels


def labels_column(labels: dict[str, str] | None) -> str | None:
    """How labels are stored: a JSON object (sorted keys), NULL for none."""
    return json.dumps(labels, sort_keys=True) if labels else None


def stored_labels(value: str | None) -> dict[str, str]:
    """The labels of a ``labels`` column (``{}`` for NULL)."""
    return json.loads(value) if value else {}


def has_labels(value: str | None, wanted: dict[str, str] | None) -> bool:
    """Whether a ``labels`` column carries every one of ``wanted`` (any, when none are wanted)."""
    return not wanted or wanted.items() <= stored_labels(value).items()


def clean_selection(
    time_column: str,
    statuses: Sequence[str],
    *,
    before: float | None,
    after: float | None,
    run_key: str | None,
    where: str | None = None,
    params: Sequence = (),
) -> tuple[str, list]:
    """The WHERE clause of a ``clean``: rows in one of ``statuses`` (the terminal ones).

    ``where``/``params`` select one row by id; otherwise ``before`` (exclusive),
    ``after`` (inclusive) on ``time_column`` and ``run_key`` narrow the set (none
    of them = every terminal row, i.e. ``--all``).
    """
    if where is None:
        clauses, values = [], []
        for clause, value in ((f"{time_column} < ?", before), (f"{time_column} >= ?", after), ("run_key = ?", run_key)):
            if value is not None:
                clauses.append(clause)
                values.append(value)
        where, params = " AND ".join(clauses) or "1", values
    marks = ",".join("?" * len(statuses))
    # `+status`: no index on status may serve this term. A clean pages through rows in time order,
    # which only the time column's index gives; SQLite would otherwise pick a status index
    # (orchesjob-flow's) and sort every finished row again for each page.
    return f"{where} AND +status IN ({marks})", [*params, *statuses]


class Cleaning:
    """One ``clean`` as it runs: terminal rows deleted batch by batch, never all of them in memory.

    A tool subclasses it with its table, the columns it prints, the row time it
    selects by and its terminal statuses. Each page of ``CLEAN_BATCH`` rows is read
    without the write lock by keyset pagination on (time column, rowid) — an index
    seek, so the millionth row costs what the first did — then read again under the
    write lock, and only the rows still selected (still terminal, not taken by a
    concurrent clean) are deleted, in one short transaction. ``batches()`` yields the
    deleted rows (with ``dry_run``, the selected ones); the counts grow as it goes,
    so the caller streams what it prints and keeps nothing.
    """

    table: str
    columns: str  # what describe() and the hooks read; includes time_column
    time_column: str
    statuses: Sequence[str]
    list_key: str  # the name of the list of deleted rows in the output
    fields: Sequence[str] = ("deleted", "errors", "dry_run")  # the counts printed, in the tool's order

    def __init__(
        self,
        store: Store,
        *,
        before: float | None = None,
        after: float | None = None,
        run_key: str | None = None,
        by_id: tuple[str, str] | None = None,
        dry_run: bool = False,
    ) -> None:
        """``by_id`` = (column, value) selects one row; otherwise the window and ``run_key`` narrow the set."""
        from .timefmt import with_iso

        one = {"where": f"{by_id[0]} = ?", "params": [by_id[1]]} if by_id else {}
        self._where, self._params = clean_selection(
            self.time_column, self.statuses, before=before, after=after, run_key=run_key, **one
        )
        self.store = store
        self.dry_run = dry_run
        self.deleted = self.matched = self.errors = 0
        self.selection: dict[str, Any] = {}
        with_iso(self.selection, "before", before)
        with_iso(self.selection, "after", after)
        self.selection["run_key"] = run_key
        if by_id:
            self.selection[by_id[0]] = by_id[1]

    def describe(self, row: sqlite3.Row) -> dict[str, Any]:
        """The output item of one deleted row."""
        raise NotImplementedError

    def deleted_locked(self, db: sqlite3.Connection, rows: list[sqlite3.Row]) -> None:
        """What else goes with ``rows``, in the transaction that deleted them."""

    def deleted_files(self, rows: list[sqlite3.Row]) -> int:
        """Remove the files of ``rows`` once their deletion is committed; returns how many could not be."""
        return 0

    def counts(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.fields}

    @staticmethod
    def remove(paths: Iterable[str]) -> int:
        """Unlink ``paths`` (one already gone is fine); returns how many could not be removed."""
        errors = 0
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                errors += 1
        return errors

    def run(self) -> Cleaning:
        """The whole clean, when nobody wants the rows (a summary, the dispatcher's retention)."""
        for _ in self.batches():
            pass
        return self

    def batches(self) -> Iterator[list[sqlite3.Row]]:
        cursor: tuple[Any, int] | None = None
        while True:
            page = self._page(cursor)
            if not page:
                return
            self.matched += len(page)
            cursor = (page[-1][self.time_column], page[-1]["row_id"])
            rows = page
            if not self.dry_run:
                with self.store.write() as db:
                    rows = self._delete_locked(db, page)
            # Counted as soon as committed, before anything else may fail: never under-reported.
            self.deleted += len(rows)
            if not self.dry_run:
                self.errors += self.deleted_files(rows)
            yield rows
            if len(page) < CLEAN_BATCH:
                return

    def _page(self, cursor: tuple[Any, int] | None) -> list[sqlite3.Row]:
        """The next ``CLEAN_BATCH`` selected rows after ``cursor`` (time, rowid), in that order."""
        t = self.time_column
        select = f"SELECT rowid AS row_id, {self.columns} FROM {self.table} WHERE ({self._where})"
        order = f" ORDER BY {t}, row_id LIMIT {CLEAN_BATCH}"
        if cursor is None:
            return self.store.all(select + order, self._params)
        # Two index seeks, merged: the rest of the cursor's time, then later times. One
        # row-value comparison, (t, rowid) > (?, ?), would rescan every row of the
        # cursor's time on each page: quadratic when many rows share a time.
        at, row_id = cursor
        later, values = (f"{t} > ?", [at]) if at is not None else (f"{t} IS NOT NULL", [])
        return self.store.all(
            f"{select} AND {t} IS ? AND rowid > ? UNION ALL {select} AND {later}{order}",
            [*self._params, at, row_id, *self._params, *values],
        )

    def _delete_locked(self, db: sqlite3.Connection, page: list[sqlite3.Row]) -> list[sqlite3.Row]:
        ids = [r["row_id"] for r in page]
        rows = db.execute(
            f"SELECT rowid AS row_id, {self.columns} FROM {self.table} "
            f"WHERE rowid IN ({','.join('?' * len(ids))}) AND ({self._where}) ORDER BY {self.time_column}, row_id",
            [*ids, *self._params],
        ).fetchall()
        # One statement for the batch: SQLite opens a scratch table for every DELETE it runs, and
        # one per row (executemany) made malloc grow and trim the heap twice a row (~40 % of the CPU).
        db.execute(
            f"DELETE FROM {self.table} WHERE rowid IN ({','.join('?' * len(rows))})", [r["row_id"] for r in rows]
        )
        self.deleted_locked(db, rows)
        return rows


class Store:
    """A connection to one SQLite database file with a given migration list."""

    def __init__(self, path: str, migrations: Sequence[str], *, check_dir: bool = True) -> None:
        """Open (creating 0600 in a private directory) ``path``; ``check_dir=False`` for a ``--db`` the
        caller named: its existing directory is used as it is (see ``home.private_dir``)."""
        from .home import private_dir, private_file

        self.path = path
        private_dir(os.path.dirname(os.path.abspath(path)), check=check_dir)
        private_file(path)
        self.conn = self._connect()
        try:
            if self.conn.execute("PRAGMA user_version").fetchone()[0] < len(migrations):
                self._migrate(migrations)
        except sqlite3.Error as exc:
            self.conn.close()
            raise database_error(exc, path) from None

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OrchesError(f"cannot open database {self.path}: {exc}", db=self.path) from None
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            conn.close()
            raise database_error(exc, self.path) from None
        return conn

    def reopen(self) -> None:
        """A new connection in place of the closed one (the schema was checked when first opened)."""
        self.conn = self._connect()

    def _refuse_foreign(self) -> None:
        # Tables but no version of ours: another program's file (e.g. the public
        # orchesjob release uses the same file name). Never touch it.
        # One statement, so one snapshot: another process may be creating our
        # schema right now, and its tables and version appear together.
        version, tables = self.conn.execute(
            "SELECT user_version, (SELECT count(*) FROM sqlite_master) FROM pragma_user_version"
        ).fetchone()
        if version == 0 and tables:
            raise OrchesError(
                f"database {self.path} was not created by this edge runtime (unknown schema); "
                "point ORCHESJOB_HOME (or --db) at a separate directory",
                db=self.path,
            )

    def _migrate(self, migrations: Sequence[str]) -> None:
        self._refuse_foreign()
        self._use_wal()
        with self.write():
            self._refuse_foreign()  # again under the lock: another process may have raced us
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(migrations[version:], start=version + 1):
                for statement in script.split(";\n"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={number}")

    def _use_wal(self) -> None:
        # journal_mode is persistent in the file; set it once, outside a transaction.
        # The switch needs the file to itself for an instant, and SQLite answers
        # "locked" at once, without its busy handler, while another process that
        # opens the same new file holds a read lock: wait for that here, as long
        # as any other lock would be waited for.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.001
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def write(self, *, wait: bool = True) -> _WriteTransaction:
        """One write transaction holding the database write lock from its start.

        ``with store.write() as db:`` commits on success and rolls back on any
        exception (a class, not ``contextlib``: one import less per CLI call).
        ``wait=False``: raise ``LockError`` at once if another writer holds the lock,
        instead of waiting up to the busy timeout.
        """
        return _WriteTransaction(self, wait)

    def one(self, sql: str, params: Sequence = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()


class DatabaseError(OrchesError):
    """The database file is corrupt, not a database, or cannot be read or written."""

    kind = "database_error"


def database_error(exc: BaseException, path: str | None = None) -> OrchesError:
    """A named error for an ``sqlite3`` exception (locked -> ``LockError``; read-only, corrupt,
    I/O -> ``DatabaseError``); the CLIs use it for any that escapes the tools' own handling."""
    text = str(exc)
    where = f" {path}" if path else ""
    details = {"db": path} if path else {}
    if "locked" in text or "busy" in text:
        return LockError(f"database is locked:{where}: {text}", **details)
    if "readonly" in text or "read-only" in text:
        hint = "the database file or its directory is read-only for this user"
    elif "not a database" in text or "malformed" in text or "corrupt" in text:
        hint = "the database file is damaged or not an orchesjob database; restore it or move it aside"
    else:
        hint = "the database cannot be used"
    return DatabaseError(f"database error{where}: {text} ({hint})", sqlite_error=text, **details)


class _WriteTransaction:
    """``BEGIN IMMEDIATE`` on enter; ``COMMIT`` on a clean exit, ``ROLLBACK`` on an exception."""

    __slots__ = ("store", "wait")

    def __init__(self, store: Store, wait: bool = True) -> None:
        self.store = store
        self.wait = wait

    def __enter__(self) -> sqlite3.Connection:
        conn = self.store.conn
        try:
            if self.wait:
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("PRAGMA busy_timeout=0")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                finally:
                    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.OperationalError as exc:
            raise LockError(f"database is locked: {self.store.path}: {exc}", db=self.store.path) from None
        return conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        self.store.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
