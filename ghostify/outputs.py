"""Writing result directories atomically: all files appear at once, or none do."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import GhostifyError


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` in one rename.

    An existing non-empty ``target`` is an error unless ``force``; on any exception the temporary
    directory is removed and ``target`` is left exactly as it was.
    """
    target = Path(target).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise GhostifyError(f"output path {target} exists and is not a directory; choose another -o path.")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise GhostifyError(f"output directory {target} already exists and is not empty; pass --force to replace it.")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as err:
        raise GhostifyError(f"cannot write to {parent}: {err.strerror}; choose a writable -o path.") from None
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
