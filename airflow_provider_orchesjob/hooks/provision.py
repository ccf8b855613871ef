"""Agentless hosts: the edge runtime as one versioned archive that the hook uploads itself.

With the connection extra ``provision_runtime: true`` a host needs only sshd and
a Python >= 3.10: no ``pipx install``. The worker builds a zip application from
the ``edge_runtime`` package installed beside this provider plus PyYAML's
pure-Python ``yaml`` package, byte for byte the same for the same sources
(entries sorted, timestamps and modes fixed, stored uncompressed), so its sha256
names it. On the host it lives at
``~/.cache/orchesjob/runtime/<version>-<sha256[:16]>/orchesjob.pyz`` (directories
0700, the file 0400) and every CLI call runs ``python3 -I <that file> <cli> ...``
(:func:`.commands.provisioned_command_line`). A call that finds it missing exits
with :data:`.commands.RUNTIME_MISSING_EXIT` before anything runs; the hook then
uploads it (:func:`.commands.install_runtime_script`: written to a temporary name
in the same directory, its sha256 checked on the host, the host interpreter's
bytecode added by the verified archive itself — ``edge_runtime/bytecode.py`` —
then linked into place atomically and never replaced, so concurrent first
contacts end with one good file) and resends the call. Another provider version
is another directory: the jobs that an older archive's supervisors run are never
disturbed by an upgrade.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from importlib import metadata

from ..exceptions import OrchesJobProvisionError, OrchesJobRuntimeIncompatible
from . import commands

# The archive's own entry point: the dispatcher of edge_runtime/__main__.py.
_MAIN = b"from edge_runtime.__main__ import main\n\nmain()\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
_VERSION_LINE = re.compile(r'^__version__ = "[^"]*"$', re.MULTILINE)
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]*")


@dataclass(frozen=True)
class RuntimeArchive:
    """One build of the runtime archive: its bytes and the names the host knows it by."""

    version: str
    sha256: str
    data: bytes = field(repr=False)

    @property
    def directory(self) -> str:
        """The archive's directory under the host's cache: version and hash, so builds never share one."""
        return f"{self.version}-{self.sha256[:16]}"


def _package_sources(package: str, prefix: str) -> dict[str, bytes]:
    """Every ``.py`` file of the installed ``package`` (compiled extensions left out), by archive name."""
    module = __import__(package)
    root = os.path.dirname(os.path.abspath(module.__file__))
    files: dict[str, bytes] = {}
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path, "rb") as f:
                    files[prefix + os.path.relpath(path, root).replace(os.sep, "/")] = f.read()
    return files


def _yaml_license() -> dict[str, bytes]:
    """PyYAML's licence (MIT: its notice travels with every copy of its code)."""
    try:
        dist = metadata.distribution("PyYAML")
    except metadata.PackageNotFoundError:
        return {}
    for path in sorted(dist.files or (), key=str):
        if path.name.upper().startswith(("LICENSE", "COPYING")):
            return {"LICENSES/PyYAML.txt": path.read_binary()}
    return {}


def _stamp_version(source: bytes, version: str) -> bytes:
    text, count = _VERSION_LINE.subn(f'__version__ = "{version}"', source.decode("utf-8"), count=1)
    if count != 1:
        raise RuntimeError("edge_runtime/__init__.py has no __version__ line to stamp")
    return text.encode("utf-8")


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip of ``files`` that depends on nothing but their names and contents."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.create_system = 3  # Unix, wherever the worker runs
            info.external_attr = 0o100644 << 16
            archive.writestr(info, files[name])
    return buffer.getvalue()


@functools.cache
def build_archive(version: str | None = None) -> RuntimeArchive:
    """The runtime archive of the installed ``edge_runtime`` (built once per process and version).

    ``version`` stamps another version number into the archive's
    ``edge_runtime.__version__`` (what ``orchesjob info`` reports), e.g. for a
    patched runtime; default: the installed one's.
    """
    import edge_runtime

    version = version or edge_runtime.__version__
    if not _VERSION.fullmatch(version):
        raise ValueError(f"not a version usable in a directory name: {version!r}")
    files = {"__main__.py": _MAIN, **_package_sources("edge_runtime", "edge_runtime/")}
    files["edge_runtime/__init__.py"] = _stamp_version(files["edge_runtime/__init__.py"], version)
    files.update(_package_sources("yaml", "yaml/"))
    files.update(_yaml_license())
    data = zip_bytes(files)
    return RuntimeArchive(version=version, sha256=hashlib.sha256(data).hexdigest(), data=data)


def archive_missing(exit_code: int, stderr: bytes) -> bool:
    """Whether a call answered that the host lacks the archive it was built for (and so ran nothing)."""
    return exit_code == commands.RUNTIME_MISSING_EXIT and commands.RUNTIME_MISSING_MESSAGE.encode() in stderr


def check_installed(exit_code: int, stderr: bytes, archive: RuntimeArchive, host: str) -> None:
    """Judge the exit status of :func:`.commands.install_runtime_script`: return when the archive is in
    place and verified, else raise a named error."""
    if exit_code == 0:
        return
    detail = stderr.decode("utf-8", "replace").strip() or "no error output"
    where = f"{commands.runtime_path_display(archive.directory)} on {host}"
    if exit_code == commands.RUNTIME_HASH_MISMATCH_EXIT:
        raise OrchesJobProvisionError(
            f"the runtime archive uploaded to {where} does not have sha256 {archive.sha256}: refused and removed "
            f"(nothing runs from it): {detail}",
            exit_code=exit_code,
            stderr=detail,
        )
    if exit_code == 127:
        raise OrchesJobRuntimeIncompatible(
            f"cannot provision {where}: the interpreter was not found ({detail}); install python3 (>= 3.10) there "
            "or name one with the connection extra `provision_python`",
            exit_code=exit_code,
            stderr=detail,
        )
    raise OrchesJobProvisionError(
        f"provisioning {where} failed (exit {exit_code}): {detail}", exit_code=exit_code, stderr=detail
    )
