"""Export jobs of the HTTP service: a bounded worker pool over a folder of exports.

Every job has a random 32-hex-digit id and its own folder ``exports/<id>/`` holding
``job.json`` (its state, rewritten atomically at every change), then the artefact and
``model_card.json``. Ids are checked against ``[0-9a-f]{32}`` before any path is built,
so no request can name a file outside the exports folder. At most ``workers`` exports run
at once and at most ``max_pending`` wait; beyond that :meth:`ExportJobs.submit` raises
:class:`QueueFullError`. A job left queued or running by a previous server process is
reported as failed (interrupted). A ``job.json`` or model card that is not what this code
writes (not JSON, not an object, fields of the wrong type) is reported as
:class:`CorruptExportError` naming the file relative to the workspace; it is never rewritten.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ofa_search.atomic import atomic_write_json
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.model_card import CARD_JSON, read_card
from ofa_search.profiling.lut import now_iso

_ID_RE = re.compile(r"[0-9a-f]{32}")
JOB_FILE = "job.json"
STATUSES = ("queued", "running", "done", "failed")
# fields of job.json that the service reads, each a string or null
_TEXT_FIELDS = ("arch", "format", "device", "created", "finished", "error", "artefact")


class QueueFullError(OfaSearchError):
    """Too many exports queued; retry later."""


class UnknownExportError(OfaSearchError, KeyError):
    """No export with that id."""

    def __str__(self) -> str:  # KeyError's own __str__ would quote the message
        return str(self.args[0]) if self.args else ""


class CorruptExportError(OfaSearchError):
    """An export's ``job.json`` or model card is unreadable or not what the service wrote."""


def valid_export_id(export_id: str) -> bool:
    """Whether ``export_id`` has the form of an export id (32 lowercase hex digits)."""
    return _ID_RE.fullmatch(export_id) is not None


@dataclass
class Job:
    """One export's state (what ``job.json`` holds)."""

    id: str
    arch: str
    format: str
    device: str | None
    status: str = "queued"
    created: str = field(default_factory=now_iso)
    finished: str | None = None
    error: str | None = None
    artefact: str | None = None
    query: dict[str, Any] | None = None


class ExportJobs:
    """Runs exports of one workspace's checkpoint in a bounded thread pool (thread-safe)."""

    def __init__(self, workspace: Any, *, workers: int = 1, max_pending: int = 8,
                 data_dir: Path | None = None) -> None:
        if workers < 1 or max_pending < 0:
            raise ValueError(f"need workers >= 1 and max_pending >= 0, got {workers=}, "
                             f"{max_pending=}")
        self.workspace = workspace
        self.data_dir = data_dir  # the dataset folder exports recalibrate on (None: trained-on)
        self.root: Path = workspace.exports_dir
        self.capacity = workers + max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="export")
        self._jobs: dict[str, Job] = {}
        self._active = 0
        self._lock = threading.Lock()

    # -- paths and state -----------------------------------------------------------------
    def folder(self, export_id: str) -> Path:
        """The folder of an export (the id is validated first)."""
        if not valid_export_id(export_id):
            raise UnknownExportError(f"no export with id {export_id!r} (ids are 32 hex digits)")
        return self.root / export_id

    def _save(self, job: Job) -> None:
        atomic_write_json(self.root / job.id / JOB_FILE, asdict(job))

    def state(self, export_id: str) -> dict[str, Any]:
        """The job's state plus its model card when done; :class:`UnknownExportError` when
        there is no such export."""
        folder = self.folder(export_id)
        with self._lock:
            job = self._jobs.get(export_id)
            data = asdict(job) if job is not None else None
        if data is None:
            data = self._from_disk(folder, export_id)
        if data["status"] == "done":
            data["card"] = self._card(folder / CARD_JSON)
        return data

    def _relative(self, path: Path) -> str:
        """``path`` as the service may show it: relative to the workspace."""
        return f"{self.root.name}/{path.relative_to(self.root).as_posix()}"

    def _card(self, path: Path) -> dict[str, Any]:
        """The model card at ``path``, checked for the fields the service reads."""
        where = self._relative(path)
        try:
            card = read_card(path)
            artefact = card["artefact"]
            if not (isinstance(card["arch"], dict) and isinstance(card["arch"]["string"], str)
                    and isinstance(artefact, dict) and isinstance(artefact["file"], str)
                    and isinstance(artefact["format"], str)
                    and isinstance(card["created"], str)
                    and isinstance(card.get("device") or {}, dict)):
                raise TypeError("fields of the wrong type")
        except FileFormatError as exc:
            # read_card's message names the full path: the client gets the relative one
            reason = str(exc).replace(str(path), where).replace(str(path.parent), where)
            raise CorruptExportError(f"the model card {where} is unreadable: "
                                     f"{_one_line(reason)}") from None
        except (KeyError, TypeError) as exc:
            raise CorruptExportError(f"the model card {where} is malformed "
                                     f"({type(exc).__name__}: {_one_line(str(exc))})") from None
        return card

    def _from_disk(self, folder: Path, export_id: str) -> dict[str, Any]:
        job_file, card_file = folder / JOB_FILE, folder / CARD_JSON
        if job_file.is_file():
            data = self._read_job(job_file, export_id)
            if data["status"] in ("queued", "running"):
                data.update(status="failed", error="interrupted: the server stopped before "
                            "this export finished")
            return data
        if card_file.is_file():  # written by `ofa-search export` into the workspace
            card = self._card(card_file)
            return {"id": export_id, "status": "done", "arch": card["arch"]["string"],
                    "format": card["artefact"]["format"],
                    "device": _text_or_none((card.get("device") or {}).get("id")),
                    "created": card["created"], "finished": card["created"],
                    "artefact": card["artefact"]["file"]}
        raise UnknownExportError(f"no export with id {export_id!r}")

    def _read_job(self, job_file: Path, export_id: str) -> dict[str, Any]:
        """``job.json``, checked: an object with a known status and text fields (it is
        only read here, never rewritten)."""
        where = self._relative(job_file)
        try:
            data = json.loads(job_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CorruptExportError(f"export {export_id}: cannot read {where} "
                                     f"({exc.strerror or type(exc).__name__})") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptExportError(f"export {export_id}: {where} is not valid JSON "
                                     f"({_one_line(str(exc))})") from None
        if not isinstance(data, dict):
            raise CorruptExportError(f"export {export_id}: {where} holds a JSON "
                                     f"{type(data).__name__}, not an object")
        if data.get("status") not in STATUSES:
            raise CorruptExportError(f"export {export_id}: {where} has no valid 'status' "
                                     f"(one of {', '.join(STATUSES)})")
        wrong = [key for key in _TEXT_FIELDS
                 if data.get(key) is not None and not isinstance(data[key], str)]
        if wrong:
            raise CorruptExportError(f"export {export_id}: {where} has non-text "
                                     f"{', '.join(wrong)}")
        return {key: data[key] for key in ("status", *_TEXT_FIELDS) if key in data}

    def artefact(self, export_id: str) -> Path:
        """Path of a finished export's artefact (inside its folder)."""
        state = self.state(export_id)
        if state["status"] != "done":
            raise ExportNotReadyError(f"export {export_id} is {state['status']}; its artefact "
                                      "exists once it is done")
        folder = self.folder(export_id)
        path = folder / Path(state["card"]["artefact"]["file"]).name
        if not path.is_file():
            raise UnknownExportError(f"export {export_id} has no artefact file")
        return path

    # -- running -------------------------------------------------------------------------
    def submit(self, *, arch: str, format: str, device: str | None,
               query: dict[str, Any] | None = None) -> Job:
        """Queue an export; :class:`QueueFullError` when the pool and its queue are full."""
        with self._lock:
            if self._active >= self.capacity:
                raise QueueFullError(f"{self._active} exports are queued or running (limit "
                                     f"{self.capacity}); retry later")
            job = Job(id=uuid.uuid4().hex, arch=arch, format=format, device=device,
                      query=query)
            self._jobs[job.id] = job
            self._active += 1
        self._save(job)
        self._pool.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        from ofa_search.export import export  # deferred: ofa_search.export loads torch and ONNX

        self._update(job, status="running")
        try:
            result = export(self.workspace.checkpoint, job.arch, job.format,
                            self.root / job.id, device=job.device, workspace=self.workspace,
                            data_dir=self.data_dir)
        except Exception as exc:  # every failure is reported on the job
            kind = "" if isinstance(exc, OfaSearchError) else f"{type(exc).__name__}: "
            self._update(job, status="failed", error=f"{kind}{exc}", finished=now_iso())
        else:
            self._update(job, status="done", artefact=result.artefact.name,
                         finished=now_iso())
        finally:
            with self._lock:
                self._active -= 1

    def _update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
        self._save(job)

    def shutdown(self) -> None:
        """Stop taking jobs; queued ones are cancelled, running ones finish."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class ExportNotReadyError(OfaSearchError):
    """The export exists but has no artefact yet (queued, running or failed)."""


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
