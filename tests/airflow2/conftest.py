"""The e2e suite's fixtures (migrated DB, connection to the real sshd, fresh ORCHESJOB_HOME), reused as they are."""

from tests.e2e.conftest import airflow_db, e2e_conn, edge_home  # noqa: F401
