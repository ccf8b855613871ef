"""``python -m edge_runtime <cli> [arguments]``: the three CLIs behind one entry point.

This is how a host without a ``pipx install`` runs the runtime: the hook uploads
one zip archive of this package (built by
``airflow_provider_orchesjob/hooks/provision.py``) and calls ``python3 -I
orchesjob.pyz orchesjob status ...``; the archive's own ``__main__`` calls
:func:`main`. A job's supervisor is normally the ``start`` process forked, so it
runs from the archive its job was started from; ``supervisor`` is the entry for
the one exception, a job in its own systemd scope (``supervisor.spawn``), and
``bytecode`` the install step that adds the host's bytecode to the archive (see
bytecode.py).

Written in syntax every Python from 3.6 parses, so an interpreter too old for the
runtime gets a clear JSON error (exit :data:`UNSUPPORTED_PYTHON_EXIT`) instead
of a SyntaxError from deeper down.
"""

import sys

MIN_PYTHON = (3, 10)
UNSUPPORTED_PYTHON_EXIT = 98

# Imported by name so that one call loads only its own CLI: name -> (module, function).
ENTRIES = {
    "orchesjob": ("edge_runtime.cli.orchesjob", "entry"),
    "orchesjob-reserver": ("edge_runtime.cli.reserver", "entry"),
    "orchesjob-flow": ("edge_runtime.cli.flow", "entry"),
}
# Not CLIs: a scoped job's supervisor (supervisor.spawn) and the install script's bytecode step.
INTERNAL = {
    "supervisor": ("edge_runtime.supervisor", "main"),
    "bytecode": ("edge_runtime.bytecode", "main"),
}
USAGE = f"""usage: python3 -I orchesjob.pyz {{{",".join(ENTRIES)}}} [arguments]

The edge runtime of airflow-provider-orchesjob as one archive: the first argument
names the CLI, the rest is that CLI's (e.g. `orchesjob --help`). The hook uploads
this archive to agentless hosts and runs every call this way."""


def _fail(message, error_type, code):
    import json

    sys.stderr.write(json.dumps({"error": message, "error_type": error_type}) + "\n")
    sys.exit(code)


def main():
    if sys.version_info < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        have = ".".join(map(str, sys.version_info[:3]))
        _fail(
            f"the orchesjob edge runtime needs Python >= {need}; {sys.executable} is {have}",
            "unsupported_python",
            UNSUPPORTED_PYTHON_EXIT,
        )
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name in ("-h", "--help"):
        print(USAGE)
        return
    target = ENTRIES.get(name) or INTERNAL.get(name)
    if target is None:
        _fail(f"{USAGE.splitlines()[0]}; got {name!r}", "invalid_arguments", 2)
    # The CLI sees the argv its console script would: its own name, then its arguments.
    sys.argv = [name] + sys.argv[2:]
    module, function = target
    getattr(__import__(module, fromlist=[function]), function)()


if __name__ == "__main__":
    main()
