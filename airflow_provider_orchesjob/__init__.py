"""Apache Airflow provider for orchesjob: retry-safe remote jobs over SSH.

The hooks, operators, sensors and triggers arrive in later milestones; this
package already registers the provider metadata with Airflow.
"""

__version__ = "0.1.0"


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-orchesjob",
        "name": "OrchesJob",
        "description": "Run idempotent, retry-safe jobs on remote hosts over SSH with the orchesjob edge runtime.",
        "versions": [__version__],
    }
