"""Runs only in the Airflow 2.11 venv of scripts/test_airflow2.sh."""
