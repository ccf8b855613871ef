"""The storage contract of all three tools, in one place.

Each database has an ordered list of migrations; ``PRAGMA user_version`` records
how many have run. Never edit a released migration: append a new one.

The exactly-once invariants live here as constraints, not only in code:

* ``jobs_one_active_per_run_key`` — at most one STARTING/RUNNING job per run key.
  Two racing ``start`` calls cannot both create an execution; the loser of the
  race hits this index (mapped to ``InvalidState``) if the logic ever let it by.
* ``UNIQUE (run_key, attempt_no)`` — attempt numbers are never reused.
* ``run_keys`` outlives ``clean``: it remembers that a key was consumed (and the
  outcome of its last attempt) after the job rows and logs are deleted, so a
  strict key stays consumed unless the user explicitly forgets it.
"""

ACTIVE_JOB_STATUSES = ("STARTING", "RUNNING")
TERMINAL_JOB_STATUSES = ("SUCCEEDED", "FAILED", "LOST", "CANCELLED", "ABORTED")

JOBS_MIGRATIONS = (
    """
    CREATE TABLE run_keys (
        run_key          TEXT PRIMARY KEY,
        attempts         INTEGER NOT NULL DEFAULT 0,
        last_job_id      TEXT,
        last_status      TEXT,
        last_exit_code   INTEGER,
        last_finished_at REAL,
        unlock_reason    TEXT,
        unlock_at        REAL,
        unlock_expires_at REAL,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL
    );
    CREATE TABLE jobs (
        job_id           TEXT PRIMARY KEY,
        run_key          TEXT NOT NULL,
        attempt_no       INTEGER NOT NULL CHECK (attempt_no >= 1),
        status           TEXT NOT NULL CHECK (status IN
                           ('STARTING','RUNNING','SUCCEEDED','FAILED','LOST','CANCELLED','ABORTED')),
        command          TEXT NOT NULL,
        cwd              TEXT,
        env              TEXT,
        timeout          REAL,
        mode             TEXT NOT NULL,
        reuse_policy     TEXT NOT NULL,
        strict_override_used INTEGER NOT NULL DEFAULT 0,
        override_reason  TEXT,
        boot_id          TEXT NOT NULL,
        claimer_pid      INTEGER,
        claimer_start    INTEGER,
        worker_pid       INTEGER,
        worker_start     INTEGER,
        target_pid       INTEGER,
        target_start     INTEGER,
        exit_code        INTEGER,
        error            TEXT,
        stdout_file      TEXT NOT NULL,
        stderr_file      TEXT NOT NULL,
        rerun_of_job_id  TEXT,
        rerun_reason     TEXT,
        abort_reason     TEXT,
        started_at       REAL NOT NULL,
        finished_at      REAL,
        updated_at       REAL NOT NULL,
        aborted_at       REAL,
        UNIQUE (run_key, attempt_no)
    );
    CREATE UNIQUE INDEX jobs_one_active_per_run_key ON jobs (run_key)
        WHERE status IN ('STARTING','RUNNING');
    CREATE INDEX jobs_active ON jobs (status) WHERE status IN ('STARTING','RUNNING');
    CREATE INDEX jobs_finished_at ON jobs (finished_at)
    """,
)
