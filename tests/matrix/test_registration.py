"""Each matrix venv was installed as its MWAA recipe says (docs/mwaa/, scripts/test_matrix.sh):
there, Airflow's ProvidersManager finds the provider, its connection type and its hook."""

from __future__ import annotations

from importlib import metadata


def test_providers_manager_registers_the_orchesjob_connection_type():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-orchesjob" in manager.providers
    assert manager.providers["airflow-provider-orchesjob"].version == metadata.version("airflow-provider-orchesjob")
    hook = manager.hooks["orchesjob"]  # loads the hook class: it must import in this venv
    assert hook is not None
    assert hook.hook_class_name == "airflow_provider_orchesjob.hooks.orchesjob.OrchesJobHook"
    assert hook.connection_type == "orchesjob"
    assert hook.package_name == "airflow-provider-orchesjob"
