"""The ``orchesjob`` connection type in the Airflow UI: its extra fields and how the standard fields show.

One table, published two ways: declaratively in the provider info (``conn-fields`` and
``ui-field-behaviour``, which Airflow 3.2+ reads without importing the hook) and through the
hook's ``get_connection_form_widgets`` / ``get_ui_field_behaviour`` (Airflow 2.11 to 3.1,
which ignore the declarative keys). Each field is stored as the plain connection extra of
the same name, so a connection filled in through the form and one written as JSON extras
mean the same; the extras without a field (``private_key``, ``no_host_key_check``,
``run_key_namespace``...) stay in the Extra JSON.

Kept free of Airflow imports: ``get_provider_info`` reads it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

HOOK_NAME = "OrchesJob (SSH)"  # the connection type's name in the UI's list


class FormField(NamedTuple):
    label: str
    kind: str  # "string" or "integer"
    description: str
    placeholder: str


FIELDS: dict[str, FormField] = {
    "key_file": FormField(
        "Private key file", "string",
        "Path of the private key on the workers and triggerers (or put the key text in the Extra as private_key).",
        "/home/airflow/.ssh/id_ed25519",
    ),
    "host_key": FormField(
        "Host key", "string",
        "The edge host's public key, as printed by `ssh-keyscan -t ed25519 HOST` without the host name. "
        "Host keys are always verified: give this, a known_hosts file, or rely on ~/.ssh/known_hosts.",
        "ssh-ed25519 AAAA...",
    ),
    "known_hosts": FormField(
        "known_hosts file", "string",
        "Path of a known_hosts file holding the edge host's key (and the jump hosts').",
        "/home/airflow/.ssh/known_hosts",
    ),
    "orchesjob_home": FormField(
        "State home on the host", "string",
        "ORCHESJOB_HOME for the edge CLIs; empty: the host's default.",
        "default: /var/lib/orchesjob or ~/.local/share/orchesjob",
    ),
    "orchesjob_bin_dir": FormField(
        "CLI directory on the host", "string",
        "Absolute path of the directory holding orchesjob, orchesjob-reserver and orchesjob-flow; "
        "empty: the session's PATH plus ~/.local/bin (pipx).",
        "default: PATH and ~/.local/bin",
    ),
    "jump_hosts": FormField(
        "Jump hosts", "string",
        "Hosts to reach the edge host through, outermost first, as user@host:port separated by commas "
        "(like ssh -J). Each uses this connection's key and known_hosts; a JSON list in the Extra can give "
        "a hop its own key_file, known_hosts or host_key.",
        "bastion@jump.example.com:22, jump2.internal",
    ),
    "max_sessions": FormField(
        "Max sessions", "integer",
        "Concurrent SSH sessions per shared connection in a triggerer (stay below the host's MaxSessions).",
        "8",
    ),
}  # fmt: skip

HIDDEN_FIELDS = ["schema"]
RELABELING = {"login": "Username", "host": "Edge host"}
PLACEHOLDERS = {
    "host": "edge1.example.com",
    "port": "22",
    "login": "the user that runs the jobs",
    "password": "only for password authentication",
    "extra": '{"private_key_passphrase": "...", "conn_timeout": 10, "run_key_namespace": "prod"}',
    **{name: f.placeholder for name, f in FIELDS.items()},
}


def conn_fields() -> dict[str, Any]:
    """The fields as the provider info's ``conn-fields`` (Airflow 3.2+)."""
    return {
        name: {"label": f.label, "description": f.description, "schema": {"type": [f.kind, "null"]}}
        for name, f in FIELDS.items()
    }


def ui_field_behaviour(*, declarative: bool = False) -> dict[str, Any]:
    """Hidden, relabelled and pre-filled fields: the hook's dict, or (``declarative``) the provider info's."""
    hidden = "hidden-fields" if declarative else "hidden_fields"
    return {hidden: list(HIDDEN_FIELDS), "relabeling": dict(RELABELING), "placeholders": dict(PLACEHOLDERS)}


def form_widgets() -> dict[str, Any]:
    """The fields as wtforms fields (Airflow 2.11 to 3.1; wtforms and Flask-AppBuilder come with its UI)."""
    from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import IntegerField, StringField
    from wtforms.validators import NumberRange, Optional

    def widget(f: FormField) -> Any:
        if f.kind == "integer":
            return IntegerField(lazy_gettext(f.label), validators=[Optional(), NumberRange(min=1)],
                                widget=BS3TextFieldWidget(), description=f.description)  # fmt: skip
        return StringField(lazy_gettext(f.label), widget=BS3TextFieldWidget(), description=f.description)

    return {name: widget(f) for name, f in FIELDS.items()}
