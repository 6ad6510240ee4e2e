"""Writing result directories atomically: all files appear at once, or none do."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import GhostifyError


@dataclass(frozen=True)
class OutputWording:
    """How error messages name the output settings: the command line's options or Python's arguments."""

    force_remedy: str  # what replaces a non-empty directory
    path: str  # what to choose instead of a refused output path
    example: str  # a good output path, as the caller writes it


CLI_WORDING = OutputWording(force_remedy="pass --force to replace it", path="-o path", example="-o out/model")
PYTHON_WORDING = OutputWording(force_remedy="pass force=True to replace it", path="output directory", example="'out/model'")
REPORT_WORDING = OutputWording(force_remedy="pass force=True to write into it anyway", path="output directory", example="'out/report'")


def _protected_directories() -> list[Path]:
    """The current and home directories: an output directory must never replace them or a parent of them."""
    found = []
    for get in (Path.cwd, Path.home):
        try:
            found.append(get().resolve())
        except (OSError, RuntimeError, KeyError):  # cwd deleted, no home directory, ...
            pass
    return found


def _not_empty_error(target: Path, wording: OutputWording) -> GhostifyError:
    return GhostifyError(f"output directory {target} already exists and is not empty; {wording.force_remedy}.")


def check_output_path(
    target: str | Path, *, force: bool = False, inputs: Iterable[str | Path | None] = (), wording: OutputWording = CLI_WORDING,
) -> Path:
    """The absolute output directory ``target``, or ``GhostifyError`` if it cannot or must not be written.

    Cheap (it creates and removes one empty probe directory), so callers can run it before any slow
    work. Refuses a path that is a file (or lies under one), a non-empty directory without ``force``
    and an unwritable location; even with ``force``, it refuses the current directory, the home
    directory or any directory holding them (``-o . --force`` would otherwise replace the directory
    the user is working in), and a directory that is or holds one of ``inputs`` (the model file,
    checkpoint or saved model the command reads). ``wording``: how the messages name the remedies
    (``--force`` / ``-o`` on the command line, ``force=True`` in Python).
    """
    target = Path(target).expanduser().absolute()
    try:
        real = target.resolve()
    except (OSError, RuntimeError):  # a symlink loop: the checks below report it
        real = target
    if any(real == p or real in p.parents for p in _protected_directories()):
        raise GhostifyError(
            f"refusing to write output to {target}: it is or contains the current or home directory, which "
            f"the output would replace. Choose a new directory, e.g. {wording.example}."
        )
    for source in inputs:
        if source is None or str(source) == "":
            continue
        try:
            source_path = Path(source).expanduser().absolute().resolve()
        except (OSError, RuntimeError):
            continue
        if real == source_path or real in source_path.parents:
            raise GhostifyError(
                f"refusing to write output to {target}: it is or contains {source}, which this command reads "
                f"and the output would replace. Choose another {wording.path}."
            )
    try:
        if target.exists() and not target.is_dir():
            raise GhostifyError(f"output path {target} exists and is not a directory; choose another {wording.path}.")
        if target.is_dir() and any(target.iterdir()) and not force:
            raise _not_empty_error(target, wording)
        existing = target.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as err:
        raise GhostifyError(
            f"cannot use {target} as the output directory ({err.strerror or err}); choose another {wording.path}."
        ) from None
    if not existing.is_dir():
        raise GhostifyError(f"cannot write to {target}: {existing} is a file, not a directory; choose another {wording.path}.")
    try:  # os.access is not enough: root may "write" to /proc, read-only mounts, ...
        os.rmdir(tempfile.mkdtemp(prefix=".ghostify-probe-", dir=existing))
    except OSError as err:
        raise GhostifyError(
            f"cannot write to {target}: cannot create anything in {existing} ({err.strerror or err}); "
            f"choose a writable {wording.path}."
        ) from None
    return target


def _apply_umask(directory: Path) -> None:
    """Give the staged directory and its files the modes a plain mkdir / open would have
    (mkdtemp and some writers create them private to the user)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, force: bool = False, wording: OutputWording = CLI_WORDING) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` in one rename.

    An existing non-empty ``target`` is an error unless ``force``; on any exception the temporary
    directory is removed and ``target`` is left exactly as it was. ``wording``: see ``check_output_path``.
    """
    target = check_output_path(target, force=force, wording=wording)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as err:
        raise GhostifyError(
            f"cannot create the output directory in {parent} ({err.strerror or err}); choose a writable {wording.path}."
        ) from None
    try:
        try:
            yield staging
            _apply_umask(staging)
            if target.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
                os.replace(target, retired / target.name)
                try:
                    os.replace(staging, target)
                except OSError:
                    os.replace(retired / target.name, target)  # put the old directory back
                    os.rmdir(retired)
                    raise
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, target)
        except OSError as err:  # disk full, permissions changed meanwhile, ...
            raise GhostifyError(
                f"could not write {target} ({err.strerror or err}); nothing was written. Check free space and "
                f"permissions, or choose another {wording.path}."
            ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def prepare_report_directory(directory: str | Path, *, force: bool = False, may_join: Collection[str] = ()) -> None:
    """Create ``directory`` for a report's files, or ``GhostifyError`` if it holds other files and not ``force``.

    The same rule as ``ghostify.save``: a non-empty directory needs ``force``, except one holding
    only files named in ``may_join`` (a saved model, which its report joins as in ``convert -o``).
    Unlike ``save``, ``force`` does not replace the directory: the report's files overwrite those of
    the same name and anything else stays.
    """
    target = Path(directory).expanduser().absolute()
    try:
        if target.exists() and not target.is_dir():
            raise GhostifyError(f"output path {target} exists and is not a directory; choose another {REPORT_WORDING.path}.")
        if not force and target.is_dir() and any(entry.name not in may_join for entry in target.iterdir()):
            raise _not_empty_error(target, REPORT_WORDING)
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GhostifyError(
            f"cannot write a report to {target} ({err.strerror or err}); choose a writable {REPORT_WORDING.path}."
        ) from None
