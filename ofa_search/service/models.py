"""Request and response bodies of the HTTP service (pydantic models, in the OpenAPI schema).

Request bodies are strict: a budget must be a JSON number (``"0.15"`` and ``true`` are
refused; an integer is a number), finite (``NaN``, ``Infinity`` and ``1e309`` are refused),
and unknown keys are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
PRECISION_PATTERN = r"^[a-z0-9_]{1,32}$"
EXPORT_ID_PATTERN = r"^[0-9a-f]{32}$"
QUERY_JOB_ID_PATTERN = EXPORT_ID_PATTERN
ExportStatus = Literal["queued", "running", "done", "failed"]
JobStatus = Literal["queued", "running", "done", "failed"]
# strict: no numbers from strings or booleans, no coercion of any kind
_STRICT = ConfigDict(extra="forbid", strict=True)


class QueryRequest(BaseModel):
    """``POST /query``: the most accurate subnet predicted to fit ``latency_ms``."""

    model_config = _STRICT

    device: str = Field(pattern=DEVICE_ID_PATTERN, description="device id, e.g. cpu-ort-1t")
    latency_ms: float = Field(gt=0, allow_inf_nan=False,
                              description="latency budget in milliseconds (a finite number)")
    precision: str | None = Field(default=None, pattern=PRECISION_PATTERN,
                                  description="fp32 (default), int8, binary, mixed or any")
    confidence: float | None = Field(
        default=None, gt=0, lt=1, allow_inf_nan=False, description="the answer's calibrated "
        "latency bound at this confidence must fit the budget (default 0.9 on a calibrated "
        "device)")


class QueryResponse(BaseModel):
    """What ``ofa-search query --json`` prints."""

    arch: str
    space: str
    device: str
    precision: str
    predicted_accuracy: float
    accuracy_std: float
    predicted_latency_ms: float
    latency_upper_ms: float | None = Field(
        description="calibrated upper bound of the latency at `confidence` (null: the "
        "device is not calibrated and the answer fits by its point estimate)")
    confidence: float | None
    latency_scale: float = Field(description="speed scale applied to predictions "
                                 "(`ofa-search check-device --rescale`), 1.0 without one")
    macs_m: float
    params_m: float
    source: str
    latency_predictor: str
    found_in_s: float
    warnings: list[str]


class ExportRequest(BaseModel):
    """``POST /exports``: give ``arch``, or ``device`` and ``latency_ms`` (queried first).

    With ``arch`` and ``device`` the model card also holds the device's latency."""

    model_config = _STRICT

    format: str = Field(default="auto", pattern=r"^[a-z0-9_]{1,32}$",
                        description="onnx, torchscript or state_dict")
    arch: str | None = Field(default=None, min_length=1, max_length=4096,
                             description="compact arch string or JSON")
    device: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    latency_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    precision: str | None = Field(default=None, pattern=PRECISION_PATTERN)

    @model_validator(mode="after")
    def _arch_or_budget(self) -> ExportRequest:
        if self.arch is None and (self.device is None or self.latency_ms is None):
            raise ValueError("give 'arch', or 'device' and 'latency_ms'")
        if self.arch is not None and self.latency_ms is not None:
            raise ValueError("give either 'arch' or 'latency_ms', not both")
        return self


class ExportAccepted(BaseModel):
    """Answer to ``POST /exports`` (202)."""

    id: str
    status: ExportStatus
    arch: str
    format: str
    url: str
    query: dict[str, Any] | None = None


class ExportState(BaseModel):
    """``GET /exports/{id}``."""

    id: str
    status: ExportStatus
    arch: str | None = None
    format: str | None = None
    device: str | None = None
    created: str | None = None
    finished: str | None = None
    error: str | None = None
    card: dict[str, Any] | None = None
    artefact_url: str | None = None


class QueryJobAccepted(BaseModel):
    """Answer (202) to a ``POST /query`` that needs a search, on a server started with
    ``--cold-queries queue``: poll ``url``."""

    id: str
    status: JobStatus
    url: str


class QueryJobState(BaseModel):
    """``GET /queries/{id}``: a queued cold query; ``result`` once done, ``error`` (with the
    status code the query would have answered) once failed."""

    id: str
    status: JobStatus
    device: str
    latency_ms: float
    precision: str | None = None
    confidence: float | None = None
    created: str
    finished: str | None = None
    result: QueryResponse | None = None
    error: ErrorBody | None = None
    error_status: int | None = None


class ValidationIssue(BaseModel):
    """One reason a request was refused (422): where, what, and pydantic's error type."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: ``detail`` says what is wrong in one line; some add context
    (``known`` device ids, ``min_latency_ms``, the validation ``errors``)."""

    detail: str
    known: list[str] | None = None
    min_latency_ms: float | None = None
    errors: list[ValidationIssue] | None = None


QueryJobState.model_rebuild()
