"""The storage contract of all three tools, in one place.

Each database has an ordered list of migrations; ``PRAGMA user_version`` records
how many have run. Never edit a released migration: append a new one.

The exactly-once invariants live here as constraints, not only in code:

* ``jobs_one_active_per_run_key`` — at most one active job per run key (STARTING,
  RUNNING, or being stopped: ABORTING/CANCELLING).
  Two racing ``start`` calls cannot both create an execution; the loser of the
  race hits this index (mapped to ``InvalidState``) if the logic ever let it by.
* ``UNIQUE (run_key, attempt_no)`` — attempt numbers are never reused.
* ``run_keys`` outlives ``clean``: it remembers that a key was consumed (and the
  outcome and number of its newest *launched* attempt) after the job rows and logs are deleted, so a
  strict key stays consumed unless the user explicitly forgets it.
"""

# The job lifecycle itself (what each status means, who may move a job between
# them) is edge_runtime/lifecycle.py; the sets are here because the indexes use them.
ACTIVE_JOB_STATUSES = ("STARTING", "RUNNING", "ABORTING", "CANCELLING")
TERMINAL_JOB_STATUSES = ("SUCCEEDED", "FAILED", "ABORTED", "CANCELLED", "LOST", "NEVER_LAUNCHED")

# Reuse policies: what a new ``start`` does when the run key already has a
# finished attempt. An active attempt (also one being stopped) is always
# returned, never duplicated; one that provably NEVER_LAUNCHED never blocks.
REUSE_ALWAYS = "always"  # default: start a new attempt (spec behaviour)
REUSE_FAILED_ONLY = "failed-only"  # new attempt after FAILED/ABORTED/CANCELLED; LOST only with retry_lost
REUSE_NEVER = "never"  # --strict: one execution per run key, ever
REUSE_POLICIES = (REUSE_ALWAYS, REUSE_FAILED_ONLY, REUSE_NEVER)

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
    # A caller-chosen id per start *request*: a resent request (the reply was lost)
    # returns the job the first copy created instead of being judged again.
    """
    ALTER TABLE jobs ADD COLUMN request_id TEXT;
    CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL
    """,
    # The lifecycle made explicit: a stop is a state (ABORTING, CANCELLING) that the
    # one-active-job index counts as active, so a retry arriving during the grace
    # period gets the stopping job back instead of starting next to it; a job whose
    # command provably never ran is NEVER_LAUNCHED, distinct from LOST (unknown).
    # SQLite cannot alter a CHECK: the table is rebuilt, rows copied unchanged.
    """
    CREATE TABLE jobs_v3 (
        job_id           TEXT PRIMARY KEY,
        run_key          TEXT NOT NULL,
        attempt_no       INTEGER NOT NULL CHECK (attempt_no >= 1),
        status           TEXT NOT NULL CHECK (status IN
                           ('STARTING','RUNNING','ABORTING','CANCELLING',
                            'SUCCEEDED','FAILED','ABORTED','CANCELLED','LOST','NEVER_LAUNCHED')),
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
        request_id       TEXT,
        stop_requested_at REAL,
        stop_grace       REAL,
        tree_killed      INTEGER NOT NULL DEFAULT 0,
        orphan_term_at   REAL,
        UNIQUE (run_key, attempt_no),
        CHECK ((status IN ('ABORTING','CANCELLING')) <= (stop_requested_at IS NOT NULL)),
        CHECK ((status IN ('RUNNING','ABORTING','CANCELLING')) <= (target_pid IS NOT NULL))
    );
    INSERT INTO jobs_v3 (job_id, run_key, attempt_no, status, command, cwd, env, timeout, mode, reuse_policy,
        strict_override_used, override_reason, boot_id, claimer_pid, claimer_start, worker_pid, worker_start,
        target_pid, target_start, exit_code, error, stdout_file, stderr_file, rerun_of_job_id, rerun_reason,
        abort_reason, started_at, finished_at, updated_at, aborted_at, request_id)
    SELECT job_id, run_key, attempt_no, status, command, cwd, env, timeout, mode, reuse_policy,
        strict_override_used, override_reason, boot_id, claimer_pid, claimer_start, worker_pid, worker_start,
        target_pid, target_start, exit_code, error, stdout_file, stderr_file, rerun_of_job_id, rerun_reason,
        abort_reason, started_at, finished_at, updated_at, aborted_at, request_id FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v3 RENAME TO jobs;
    CREATE UNIQUE INDEX jobs_one_active_per_run_key ON jobs (run_key)
        WHERE status IN ('STARTING','RUNNING','ABORTING','CANCELLING');
    CREATE INDEX jobs_active ON jobs (status) WHERE status IN ('STARTING','RUNNING','ABORTING','CANCELLING');
    CREATE INDEX jobs_finished_at ON jobs (finished_at);
    CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL;
    ALTER TABLE run_keys ADD COLUMN last_attempt_no INTEGER
    """,
    # 4: labels — who started the job (e.g. the Airflow task instance), a JSON object of strings
    """
    ALTER TABLE jobs ADD COLUMN labels TEXT
    """,
)

# --------------------------------------------------------------------------
# orchesjob-reserver (reserver.sqlite3)
#
# * ``UNIQUE run_key`` — one reservation per run key: concurrent ``reserve``
#   calls with the same key insert at most one row (the others get it back).
# * ``reservations_one_job`` — a job is linked to at most one reservation.
# * The CHECKs tie status and columns together: only DISPATCHED has a job_id,
#   DISPATCHING always records when it was claimed (recovery looks for jobs
#   started at/after that instant instead of starting the command again).
# * ``seq`` orders reservations by insertion, so the dispatcher can log "new
#   since I started" without re-logging history.

RESERVATION_STATUSES = ("RESERVED", "DISPATCHING", "DISPATCHED", "CANCELLED", "EXPIRED", "DISPATCH_FAILED")
TERMINAL_RESERVATION_STATUSES = ("DISPATCHED", "CANCELLED", "EXPIRED", "DISPATCH_FAILED")

RESERVER_MIGRATIONS = (
    """
    CREATE TABLE reservations (
        seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
        reservation_id      TEXT NOT NULL UNIQUE,
        run_key             TEXT NOT NULL UNIQUE,
        status              TEXT NOT NULL CHECK (status IN
                              ('RESERVED','DISPATCHING','DISPATCHED','CANCELLED','EXPIRED','DISPATCH_FAILED')),
        job_id              TEXT,
        command             TEXT NOT NULL,
        start_options       TEXT NOT NULL DEFAULT '[]',
        metadata            TEXT,
        not_before          REAL,
        expires_at          REAL,
        created_at          REAL NOT NULL,
        updated_at          REAL NOT NULL,
        dispatch_claimed_at REAL,
        dispatched_at       REAL,
        last_error          TEXT,
        CHECK ((status = 'DISPATCHED') = (job_id IS NOT NULL)),
        CHECK (status <> 'DISPATCHED' OR dispatched_at IS NOT NULL),
        CHECK (status <> 'DISPATCHING' OR dispatch_claimed_at IS NOT NULL)
    );
    CREATE UNIQUE INDEX reservations_one_job ON reservations (job_id) WHERE job_id IS NOT NULL;
    CREATE INDEX reservations_due ON reservations (not_before) WHERE status = 'RESERVED';
    CREATE INDEX reservations_updated_at ON reservations (updated_at);
    CREATE INDEX reservations_created_at ON reservations (created_at)
    """,
    # Extra environment of the dispatched job, apart from the start options: options are
    # printed and logged, environment values never are (only their keys).
    """
    ALTER TABLE reservations ADD COLUMN env TEXT
    """,
    # Why a reservation was cancelled (``cancel --reason``): who cancelled it can then be told
    # apart (e.g. the Airflow try that was killed, or a person on the host).
    """
    ALTER TABLE reservations ADD COLUMN cancel_reason TEXT
    """,
    # 4: every pass of the dispatcher looks for the next expiry among the pending reservations;
    # without this index that read every pending row (~50 ms a pass with 100,000 pending).
    """
    CREATE INDEX reservations_expiring ON reservations (expires_at) WHERE status = 'RESERVED'
    """,
)

# ---------------------------------------------------------------- orchesjob-flow
# Invariants of the flow runner, in the schema:
#
# * ``flow_runs.definition`` is the validated snapshot the run executes; it is
#   written once at creation (replaced only on explicit request).
# * ``flow_advancers.run_key`` is the primary key: at most one advancer lease
#   per flow run. The lease records the holder's process identity (boot id, pid,
#   start time); it is taken over only when that identity is provably dead.
# * ``flow_attempts.job_run_key`` is UNIQUE and ``(run_key, step_id,
#   attempt_no)`` is the primary key: an attempt number, and the orchesjob run
#   key derived from it, is never handed out twice — the intent to start an
#   attempt is committed before the job is started, so a resumed advancer
#   finds it instead of starting a second copy.
FLOW_RUN_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
FLOW_TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
STEP_STATUSES = ("PENDING", "DELAYED", "RUNNING", "SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED")
STEP_TERMINAL = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED")

FLOW_MIGRATIONS = (
    """
    CREATE TABLE flow_runs (
        run_key          TEXT PRIMARY KEY,
        flow_id          TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('PENDING','RUNNING','SUCCEEDED','FAILED','CANCELLED')),
        definition       TEXT NOT NULL,
        definition_sha   TEXT NOT NULL,
        source_name      TEXT,
        workdir          TEXT NOT NULL,
        error            TEXT,
        repair_count     INTEGER NOT NULL DEFAULT 0,
        created_at       REAL NOT NULL,
        finished_at      REAL,
        cancelled_at     REAL,
        updated_at       REAL NOT NULL,
        CHECK ((status IN ('SUCCEEDED','FAILED','CANCELLED')) = (finished_at IS NOT NULL))
    );
    CREATE TABLE flow_steps (
        run_key          TEXT NOT NULL REFERENCES flow_runs (run_key) ON DELETE CASCADE,
        step_id          TEXT NOT NULL,
        position         INTEGER NOT NULL,
        status           TEXT NOT NULL CHECK (status IN
                           ('PENDING','DELAYED','RUNNING','SUCCEEDED','FAILED','SKIPPED','CANCELLED')),
        attempt_no       INTEGER NOT NULL DEFAULT 0 CHECK (attempt_no >= 0),
        attempt_base     INTEGER NOT NULL DEFAULT 0 CHECK (attempt_base >= 0 AND attempt_base <= attempt_no),
        max_retries      INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  REAL,
        started_at       REAL,
        finished_at      REAL,
        error            TEXT,
        orchesjob_status TEXT,
        updated_at       REAL NOT NULL,
        PRIMARY KEY (run_key, step_id),
        UNIQUE (run_key, position),
        CHECK (status <> 'RUNNING' OR attempt_no > 0)
    );
    CREATE TABLE flow_attempts (
        run_key          TEXT NOT NULL,
        step_id          TEXT NOT NULL,
        attempt_no       INTEGER NOT NULL CHECK (attempt_no >= 1),
        job_run_key      TEXT NOT NULL UNIQUE,
        outcome          TEXT,
        error            TEXT,
        started_at       REAL NOT NULL,
        finished_at      REAL,
        PRIMARY KEY (run_key, step_id, attempt_no),
        FOREIGN KEY (run_key, step_id) REFERENCES flow_steps (run_key, step_id) ON DELETE CASCADE
    );
    CREATE TABLE flow_advancers (
        run_key          TEXT PRIMARY KEY REFERENCES flow_runs (run_key) ON DELETE CASCADE,
        boot_id          TEXT NOT NULL,
        pid              INTEGER NOT NULL,
        pid_start        INTEGER NOT NULL,
        role             TEXT NOT NULL,
        acquired_at      REAL NOT NULL,
        taken_over_from  INTEGER
    );
    CREATE INDEX flow_runs_status ON flow_runs (status)
    """,
    # labels: who started the run (e.g. the Airflow task instance), a JSON object of strings
    """
    ALTER TABLE flow_runs ADD COLUMN labels TEXT
    """,
    # 3: `clean` pages through finished runs by (finished_at, rowid); without this index
    # every page of 200 read the whole table (a retention run over 10^6 runs: 5,000 scans).
    """
    CREATE INDEX flow_runs_finished_at ON flow_runs (finished_at)
    """,
)
