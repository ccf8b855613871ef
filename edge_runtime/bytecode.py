"""Bytecode for the runtime archive, compiled on the host by the interpreter that will run it.

Python caches no bytecode for modules it imports from a zip, so a call run from
the archive of an agentless host would compile every module it imports, each
time (about twice the start-up of a pipx install). The hook uploads sources only
(so one archive, and one sha256, serves hosts with any Python); once the upload
is verified, the install script runs ``python3 -I <archive> bytecode SOURCE DEST
FINAL`` and installs DEST: the same entries plus, beside each module, the
``.pyc`` that zipimport looks for first. They are unchecked hash-based pycs, so
zipimport uses them without comparing timestamps; an interpreter with another
magic number (the host's python3 upgraded later) skips them and compiles the
sources, as before.
"""

from __future__ import annotations

import importlib.util
import marshal
import sys
import zipfile

_UNCHECKED_HASH_PYC = 0b01  # PEP 552 flags: hash-based, source not checked


def pyc(source: bytes, filename: str) -> bytes:
    """The ``.pyc`` bytes of ``source`` for this interpreter."""
    code = compile(source, filename, "exec", dont_inherit=True)
    return b"".join(
        [
            importlib.util.MAGIC_NUMBER,
            _UNCHECKED_HASH_PYC.to_bytes(4, "little"),
            importlib.util.source_hash(source),
            marshal.dumps(code),
        ]
    )


def add_bytecode(source: str, dest: str, final: str) -> None:
    """Write ``dest``: the entries of the archive ``source`` plus a pyc of each module in it, compiled with
    file names under ``final`` (where the archive will live, so tracebacks name it)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info)
            out.writestr(info, data)
            if info.filename.endswith(".py") and info.filename != "__main__.py":
                entry = zipfile.ZipInfo(info.filename[:-3] + ".pyc", date_time=info.date_time)
                entry.external_attr = info.external_attr
                out.writestr(entry, pyc(data, f"{final}/{info.filename}"))


def main() -> None:
    source, dest, final = sys.argv[1:4]
    add_bytecode(source, dest, final)
