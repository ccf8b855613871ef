"""The ``orchesjob`` connection type's form, as Airflow's own ProvidersManager hands it to the UI."""

from __future__ import annotations

import importlib.util

from airflow_provider_orchesjob import get_provider_info
from airflow_provider_orchesjob.hooks import OrchesJobHook
from airflow_provider_orchesjob.utils.connection_form import FIELDS

FORM_FIELDS = {"key_file", "host_key", "known_hosts", "orchesjob_home", "orchesjob_bin_dir", "jump_hosts",
               "max_sessions"}  # fmt: skip


def declared() -> dict:
    (conn_type,) = get_provider_info()["connection-types"]
    return conn_type


def test_the_provider_info_and_the_hook_describe_the_same_form():
    conn_type = declared()
    assert conn_type["connection-type"] == OrchesJobHook.conn_type and conn_type["hook-name"] == OrchesJobHook.hook_name
    assert set(conn_type["conn-fields"]) == FORM_FIELDS == set(FIELDS)
    assert conn_type["conn-fields"]["max_sessions"]["schema"]["type"] == ["integer", "null"]
    assert all(f["label"] and f["description"] for f in conn_type["conn-fields"].values())
    hook, info = OrchesJobHook.get_ui_field_behaviour(), conn_type["ui-field-behaviour"]
    assert hook["hidden_fields"] == info["hidden-fields"] == ["schema"]
    assert hook["relabeling"] == info["relabeling"] and hook["placeholders"] == info["placeholders"]
    # Every form field and the standard ones a user fills in show an example.
    assert FORM_FIELDS | {"host", "port", "login", "extra"} <= set(hook["placeholders"])


def test_airflow_serves_the_form_fields_and_their_behaviour():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    widgets = {key.removeprefix("extra__orchesjob__"): w for key, w in manager.connection_form_widgets.items()
               if key.startswith("extra__orchesjob__")}  # fmt: skip
    if not widgets:
        # Airflow 2.11 to 3.1 build the form from the hook's wtforms fields: without Airflow's
        # UI packages installed there is no form to build, for any provider.
        assert importlib.util.find_spec("wtforms") is None
        return
    assert set(widgets) == FORM_FIELDS
    assert all(w.hook_class_name.endswith("OrchesJobHook") and not w.is_sensitive for w in widgets.values())
    behaviour = manager.field_behaviours["orchesjob"]
    assert behaviour["hidden_fields"] == ["schema"] and behaviour["relabeling"]["login"] == "Username"
    # Placeholders of extra fields are addressed by their form names.
    assert behaviour["placeholders"]["extra__orchesjob__jump_hosts"] == FIELDS["jump_hosts"].placeholder


def test_the_airflow_3_ui_gets_typed_fields():
    try:
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
    except ImportError:
        assert importlib.util.find_spec("airflow.api_fastapi") is None  # Airflow 2: the FAB form above
        return
    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "orchesjob"]
    fields = meta.extra_fields or {}
    if not fields:  # Airflow 3.0/3.1 without wtforms: see the test above
        assert importlib.util.find_spec("wtforms") is None
        return
    assert set(fields) == FORM_FIELDS
    assert fields["max_sessions"]["schema"]["type"] == ["integer", "null"]
    assert fields["jump_hosts"]["schema"]["title"] == "Jump hosts"
    standard = meta.standard_fields
    assert standard.login.title == "Username" and standard.host.placeholder == "edge1.example.com"
