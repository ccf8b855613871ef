"""Apache Airflow provider for orchesjob: retry-safe remote jobs over SSH.

The edge runtime (``edge_runtime``) ships in the same distribution, so the
local transport works wherever the provider is installed.
"""

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata for Airflow's ProvidersManager (``airflow providers list``)."""
    return {
        "package-name": "airflow-provider-orchesjob",
        "name": "OrchesJob",
        "description": "Run idempotent, retry-safe jobs on remote hosts over SSH with the orchesjob edge runtime.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "orchesjob",
                "hook-class-name": "airflow_provider_orchesjob.hooks.orchesjob.OrchesJobHook",
            }
        ],
    }
