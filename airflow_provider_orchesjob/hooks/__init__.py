from airflow_provider_orchesjob.hooks.orchesjob import OrchesJobHook

__all__ = ["OrchesJobHook"]
