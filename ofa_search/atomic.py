"""Atomic file output: write to a temporary file in the target folder, fsync, rename.

A crash mid-write leaves the previous file (or none), never a truncated one.

Temporary files are named ``.<target name>.<pid>-<host tag>.<random>.tmp`` (:data:`TEMP_RE`):
the id of the writing process and an 8-hex tag of this host's name. A process killed
mid-write (``kill -9``) leaves its temporary file behind; :func:`remove_stale_temps`
removes those whose writer is gone (its pid is no live process of this host), and every
atomic write first does so for its own target, so a rerun that rewrites a file also
clears what an interrupted run left beside it. Temporary files of other hosts (a shared
folder) and of live processes are never touched; names of the older form
``.<target>.<8 random>.tmp`` (no pid) count as stale once older than
:data:`LEGACY_STALE_AFTER_S` (a write holds its temporary file for no longer than one
``write`` + ``fsync`` of bytes already in memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from ofa_search.errors import OfaSearchError

TEMP_SUFFIX = ".tmp"
TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[a-z0-9_]+\.tmp$")
"""Name of an atomic write's temporary file: target name, writer pid, host tag."""
LEGACY_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
"""Temporary files of earlier versions (``tempfile.mkstemp``'s 8 random characters)."""
LEGACY_STALE_AFTER_S = 900.0


class OutputPathError(OfaSearchError, ValueError):
    """An output file or folder that cannot be written (a file in the way, no permission)."""


def host_tag() -> str:
    """8 hex digits naming this host in temporary-file names."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-{host_tag()}."


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created; stale temporary
    files of ``path`` left by killed writers are removed first)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX,
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=False) + "\n")


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process of this host; ``True`` when unsure."""
    if pid <= 0 or pid == os.getpid():
        return True
    import psutil  # deferred: psutil (~20 ms) only when a stale temporary file is checked

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return True


def is_stale_temp(path: Path, *, now: float | None = None) -> bool:
    """Whether ``path`` is an atomic write's temporary file whose writer is gone: its pid
    (of this host) is no live process, or it has the older pid-less name and is older than
    :data:`LEGACY_STALE_AFTER_S`."""
    match = TEMP_RE.match(path.name)
    if match is not None:
        return match["host"] == host_tag() and not _pid_alive(int(match["pid"]))
    if LEGACY_TEMP_RE.match(path.name) is None:
        return False
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return False
    return age > LEGACY_STALE_AFTER_S


def stale_temps(folder: str | os.PathLike[str], target: str | None = None) -> list[Path]:
    """Stale temporary files (:func:`is_stale_temp`) in ``folder`` (not recursive), only
    those of ``target`` (a file name) when given; none when the folder does not exist."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
            continue
        if target is not None and not name.startswith(f".{target}."):
            continue
        match = TEMP_RE.match(name) or LEGACY_TEMP_RE.match(name)
        if match is None or (target is not None and match["target"] != target):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        path = Path(entry.path)
        if is_stale_temp(path):
            found.append(path)
    return sorted(found)


def remove_stale_temps(folder: str | os.PathLike[str], target: str | None = None) -> list[Path]:
    """Remove :func:`stale_temps` of ``folder`` (best effort: a file that cannot be removed
    is left); returns the removed paths."""
    removed = []
    for path in stale_temps(folder, target):
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it up first
        except OSError:
            continue
        removed.append(path)
    return removed


def unwritable_reason(path: str | os.PathLike[str]) -> str | None:
    """Why the folder ``path`` cannot be created or written (a phrase to follow its name),
    or ``None``."""
    folder = Path(path)
    probe = folder
    try:
        while not probe.exists():
            if probe.is_symlink():
                return ("is a dangling symbolic link" if probe == folder
                        else f"lies under {probe}, a dangling symbolic link")
            if probe.parent == probe:
                break
            probe = probe.parent
        if not probe.is_dir():
            return ("is a file, not a folder" if probe == folder
                    else f"lies under {probe}, which is a file")
    except OSError as exc:  # a name too long, a folder that cannot be searched, ...
        return f"cannot be used ({exc.strerror or type(exc).__name__})"
    if not os.access(probe, os.W_OK | os.X_OK):
        return "is not writable" if probe == folder else f"lies under {probe}, not writable"
    return None


def check_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Refuse (:class:`OutputPathError`, one line naming ``what`` and the path) a folder
    that cannot be created or written: one that is a file, lies under a file, or whose
    nearest existing folder is not writable. Creates nothing; returns ``path``."""
    folder = Path(path)
    reason = unwritable_reason(folder)
    if reason is not None:
        raise OutputPathError(f"{what} {folder} {reason}")
    return folder


def check_writable_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Like :func:`check_writable_dir` for the file ``path``: its folder must be creatable
    and writable, and ``path`` itself must not be a folder. Creates nothing."""
    target = Path(path)
    try:
        is_dir = target.is_dir()
    except OSError as exc:
        raise OutputPathError(f"{what} {target} cannot be used "
                              f"({exc.strerror or type(exc).__name__})") from None
    if is_dir:
        raise OutputPathError(f"{what} {target} is a folder, not a file")
    reason = unwritable_reason(target.parent)
    if reason is not None:
        raise OutputPathError(f"{what} {target}: its folder {target.parent} {reason}")
    return target
