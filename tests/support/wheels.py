"""Hand-made wheels and the lock lines pinning them, for install tests that run with no package index."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import tests.support.gdk_build  # noqa: F401 - puts tools/ on sys.path

# isort: split
import gg_lock as lk


def wheel(directory: Path, name: str, body: bytes = b"VALUE = 42\n", requires: tuple[str, ...] = ()) -> Path:
    """A real minimal wheel of ``name`` 1.0 (module of the same name)."""
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": body,
        f"{name}-1.0.dist-info/METADATA": meta.encode(),
        f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += f"{name}-1.0.dist-info/RECORD,,\n"
    target = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{name}-1.0.dist-info/RECORD", record)
    return target


def lock_line(path: Path, name: str) -> str:
    """The lock file line pinning the wheel at ``path`` (``name`` 1.0) by its sha256."""
    return lk.Entry(name, "1.0", None, [lk.sha256(path)], [path.name]).render()
