"""MetaSchedule tuning databases: merge shards, pack one to ship beside a table, unpack it.

A tuned TVM table is usable only with its tuning database: without it, measuring a subnet
would tune every workload again (minutes each) or compile it untuned (~20× slower). A full
database keeps every candidate measured while tuning (16 per workload at 16 trials); the
schedules actually applied are only the best record of each workload, which is what
:func:`pack_database` keeps, gzipped into one ``.tar.gz`` (MetaSchedule's workload JSON
compresses ~14×). A table names its database in ``device["tuning_db"]``, as a folder or
such an archive, relative to the table's own folder when not absolute;
:func:`resolve_tuning_db` turns that into a database folder, unpacking an archive once into
a cache (:func:`cache_dir`) keyed by its digest, so the shipped archive is never written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ofa_search.atomic import atomic_write_bytes
from ofa_search.errors import FileFormatError
from ofa_search.profiling.backends.tvm_tuning import workload_digest
from ofa_search.profiling.device import DeviceProfile

ARCHIVE_SUFFIX = ".tar.gz"
FILES = ("database_workload.json", "database_tuning_record.json")
"""The two files of a MetaSchedule JSON database (and of a packed archive)."""


def cache_dir() -> Path:
    """Where packed databases are unpacked: ``$OFA_SEARCH_CACHE`` or
    ``~/.cache/ofa-search``, then ``tvm-db/``."""
    root = os.environ.get("OFA_SEARCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ofa-search")
    return Path(root) / "tvm-db"


def _require_database(folder: Path) -> None:
    absent = [name for name in FILES if not (folder / name).is_file()]
    if absent:
        raise FileFormatError(f"{folder}: not a MetaSchedule JSON database (lacks {absent})")


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing an existing ``dest``."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def merge_databases(sources: Sequence[str | os.PathLike[str]],
                    dest: str | os.PathLike[str]) -> dict[str, int]:
    """The best record of every workload of ``sources`` as one new JSON database ``dest``
    (built beside it, then renamed over it). Returns ``workloads`` and ``records`` in the
    sources.

    A workload found in several sources keeps the records of the first source only:
    MetaSchedule tells workloads apart by structure, not names, so two sources may hold
    "the same" workload with other block names, and a record replays its schedule by block
    name on the workload stored first (one from another source may not apply).
    """
    # deferred: TVM is a heavy optional import (the tvm extra)
    from tvm.s_tir import meta_schedule as ms

    if not sources:
        raise ValueError("merge_databases needs at least one source database")
    folders = [Path(s) for s in sources]
    for folder in folders:
        _require_database(folder)
    best: dict[str, Any] = {}
    owner: dict[str, int] = {}
    records = 0
    for index, folder in enumerate(folders):
        for record in ms.database.JSONDatabase(work_dir=str(folder)).get_all_tuning_records():
            records += 1
            key = workload_digest(record.workload.mod)
            if owner.setdefault(key, index) != index:
                continue
            if key not in best or _mean_secs(record) < _mean_secs(best[key]):
                best[key] = record
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        folder = Path(tmp) / "best"
        folder.mkdir()
        merged = ms.database.JSONDatabase(work_dir=str(folder))
        for record in best.values():
            workload = merged.commit_workload(record.workload.mod)
            merged.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info))
        del merged
        try:  # loading replays every record on its workload: a last check
            ms.database.JSONDatabase(work_dir=str(folder))
        except Exception as exc:
            raise FileFormatError(f"merging {[str(f) for f in folders]} gave a database "
                                  f"that does not load: {exc}") from exc
        _replace_dir(folder, target)
    return {"workloads": len(best), "records": records}


def _mean_secs(record: Any) -> float:
    secs = [float(s) for s in (record.run_secs or [])]
    return sum(secs) / len(secs) if secs else float("inf")


def pack_database(source: str | os.PathLike[str],
                  archive: str | os.PathLike[str]) -> dict[str, int]:
    """The best record of every workload of the database ``source``, as a gzipped tar of
    its two files written atomically to ``archive`` (byte-identical for the same records).
    Returns ``workloads``, ``records`` (in ``source``) and ``bytes`` (of the archive)."""
    with tempfile.TemporaryDirectory(prefix="ofa-tvm-pack-") as tmp:
        best = Path(tmp) / "best"
        counts = merge_databases([source], best)
        buffer = io.BytesIO()
        # fixed mtimes and owners: the same records give the same bytes
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9,
                          format=tarfile.PAX_FORMAT) as tar:
            for name, data in zip(FILES, _canonical_lines(best), strict=True):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    _fix_gzip_mtime(buffer)
    atomic_write_bytes(archive, buffer.getvalue())
    return {**counts, "bytes": len(buffer.getvalue())}


def _canonical_lines(folder: Path) -> tuple[bytes, bytes]:
    """The two files of a database with one record per workload, in a canonical order
    (MetaSchedule writes them in hash-map order): workloads sorted by their text, records
    sorted likewise with their workload index renumbered."""
    workloads = [line for line in (folder / FILES[0]).read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in
               (folder / FILES[1]).read_text().splitlines() if line.strip()]
    order = sorted(range(len(workloads)), key=lambda i: workloads[i])
    renumber = {old: new for new, old in enumerate(order)}
    lines = sorted((renumber[int(r[0])], json.dumps([renumber[int(r[0])], *r[1:]],
                                                    separators=(",", ":")))
                   for r in records)
    return (("\n".join(workloads[i] for i in order) + "\n").encode(),
            ("\n".join(text for _, text in lines) + "\n").encode())


def _fix_gzip_mtime(buffer: io.BytesIO) -> None:
    data = bytearray(buffer.getvalue())
    data[4:8] = b"\0\0\0\0"  # gzip header MTIME: 0 = not recorded
    buffer.seek(0)
    buffer.truncate()
    buffer.write(bytes(data))


def unpack_database(archive: str | os.PathLike[str], cache: Path | None = None) -> Path:
    """The database folder of a packed ``archive``, unpacked once into ``cache`` (default
    :func:`cache_dir`) under its digest. A corrupt or foreign archive is a
    :class:`FileFormatError`."""
    path = Path(archive)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"cannot read the tuning database archive {path}: {exc}") from exc
    folder = (cache or cache_dir()) / hashlib.sha256(data).hexdigest()[:24]
    if all((folder / name).is_file() for name in FILES):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as tmp:
        unpacked = Path(tmp) / "db"
        unpacked.mkdir()
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                names = sorted(tar.getnames())
                if names != sorted(FILES):
                    raise FileFormatError(f"{path}: not a packed tuning database (holds "
                                          f"{names}, expected {sorted(FILES)})")
                for name in FILES:  # by our names only: nothing else leaves the archive
                    member = tar.extractfile(name)
                    if member is None:
                        raise FileFormatError(f"{path}: {name} is not a file")
                    (unpacked / name).write_bytes(member.read())
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise FileFormatError(f"{path}: corrupt tuning database archive ({exc})") from exc
        try:
            os.replace(unpacked, folder)
        except OSError:  # another process unpacked it first
            if not all((folder / name).is_file() for name in FILES):
                raise
    return folder


def resolve_tuning_db(profile: DeviceProfile, base: Path | None) -> DeviceProfile:
    """``profile`` with its ``tuning_db`` made usable: a relative path taken from ``base``
    (a table's folder), an archive unpacked (:func:`unpack_database`). A database that is
    gone is a :class:`FileFormatError`: measuring without it would tune again or run
    untuned code."""
    if profile.tuning_db is None:
        return profile
    path = Path(profile.tuning_db)
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.name.endswith(ARCHIVE_SUFFIX):
        if not path.is_file():
            raise FileFormatError(f"device {profile.id!r}: its tuning database archive "
                                  f"{path} is missing")
        return profile.replace(tuning_db=str(unpack_database(path)))
    if not path.is_dir():
        raise FileFormatError(
            f"device {profile.id!r}: its tuning database {path} is missing; without it TVM "
            "would tune every workload again or run untuned code. Restore it, or "
            "re-profile the device")
    return profile.replace(tuning_db=str(path))


def database_stats(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``workloads`` and ``records`` in a database folder (line counts of its two files)."""
    path = Path(folder)
    _require_database(path)
    return {"workloads": _count_lines(path / FILES[0]),
            "records": _count_lines(path / FILES[1])}
