"""What every router needs from a request: its JSON body, a model parsed from it with
pointer-accurate errors, the `?timeout=` of a waiting write, and waiting for a rollout."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from api.problems import ApiError, field_errors
from controlplane.intent.errors import FieldError, ValidationFailed
from controlplane.intent.model import parse_duration
from controlplane.xds.registry import read_fleet, rollout_status


async def json_body(request: Request, *, patch: bool = False) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    allowed = ("application/json", "application/merge-patch+json") if patch else ("application/json",)
    if ctype not in allowed:
        raise ApiError(
            415, "unsupported-media-type", "Unsupported media type", f"send the body as {' or '.join(allowed)}"
        )
    raw = await request.body()
    try:
        return json.loads(raw)
    except RecursionError:
        raise ApiError(400, "invalid-json", "Invalid JSON", "the body nests too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "invalid-json", "Invalid JSON", f"the body is not valid JSON: {exc}") from None


def parse(model: type[BaseModel], data: Any, base: str = "") -> Any:
    if not isinstance(data, dict):
        raise ValidationFailed([FieldError(base, "expected a JSON object")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(field_errors(exc, base)) from None


def wait_timeout(request: Request, default: str = "10s") -> float:
    """`?timeout=` of a waiting write (a duration, at most 300 s), or a 422."""
    try:
        timeout = parse_duration(request.query_params.get("timeout", default))
    except ValueError as exc:
        raise ValidationFailed([FieldError("/query/timeout", str(exc))]) from None
    if timeout > 300:
        raise ValidationFailed([FieldError("/query/timeout", "at most 300s")])
    return timeout


async def wait_for_rollout(request: Request, revision: int, timeout: float) -> dict[str, Any]:
    """Poll the registry until every connected node acked `revision` (or one rejected it)."""
    etcd = request.app.state.store.etcd
    deadline = time.monotonic() + timeout
    while True:
        status = rollout_status(await read_fleet(etcd), revision)
        if status["complete"] or status["rejected"] or time.monotonic() >= deadline:
            status["timed_out"] = not status["complete"] and not status["rejected"]
            return status
        await asyncio.sleep(0.05)
