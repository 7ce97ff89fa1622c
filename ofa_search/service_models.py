"""Request and response bodies of the HTTP service (pydantic models, in the OpenAPI schema)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
PRECISION_PATTERN = r"^[a-z0-9_]{1,32}$"
EXPORT_ID_PATTERN = r"^[0-9a-f]{32}$"
ExportStatus = Literal["queued", "running", "done", "failed"]


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class QueryRequest(BaseModel):
    """``POST /query``: the most accurate subnet predicted to fit ``latency_ms``."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(pattern=DEVICE_ID_PATTERN, description="device id, e.g. cpu-ort-1t")
    latency_ms: float = Field(gt=0, description="latency budget in milliseconds")
    precision: str | None = Field(default=None, pattern=PRECISION_PATTERN,
                                  description="fp32 (default), int8, binary, …")
    confidence: float | None = Field(
        default=None, gt=0, lt=1, description="the answer's calibrated latency bound at this "
        "confidence must fit the budget (default 0.9 on a calibrated device)")

    _check_finite = field_validator("latency_ms", "confidence")(_finite)


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

    model_config = ConfigDict(extra="forbid")

    format: str = Field(default="auto", pattern=r"^[a-z0-9_]{1,32}$",
                        description="onnx, torchscript or state_dict")
    arch: str | None = Field(default=None, min_length=1, max_length=4096,
                             description="compact arch string or JSON")
    device: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    latency_ms: float | None = Field(default=None, gt=0)
    precision: str | None = Field(default=None, pattern=PRECISION_PATTERN)

    _check_finite = field_validator("latency_ms")(_finite)

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


class ErrorBody(BaseModel):
    """Every 4xx answer: ``detail`` says what is wrong; some add context."""

    detail: Any
    known: list[str] | None = None
    min_latency_ms: float | None = None
