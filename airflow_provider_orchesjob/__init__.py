"""Apache Airflow provider for orchesjob: retry-safe remote jobs over SSH.

The edge runtime (``edge_runtime``) ships in the same distribution, so the
local transport works wherever the provider is installed.
"""

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata for Airflow's ProvidersManager (``airflow providers list``)."""
    from .utils import connection_form

    return {
        "package-name": "airflow-provider-orchesjob",
        "name": "OrchesJob",
        "description": "Run idempotent, retry-safe jobs on remote hosts over SSH with the orchesjob edge runtime.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "orchesjob",
                "hook-class-name": "airflow_provider_orchesjob.hooks.orchesjob.OrchesJobHook",
                "hook-name": connection_form.HOOK_NAME,
                # Airflow 3.2+ builds the form from these without importing the hook; older
                # versions ignore them and ask the hook (the same table: utils/connection_form).
                "conn-fields": connection_form.conn_fields(),
                "ui-field-behaviour": connection_form.ui_field_behaviour(declarative=True),
            }
        ],
    }
