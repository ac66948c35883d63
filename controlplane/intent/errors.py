"""Errors of the intent store, each with a stable code and the HTTP status it maps to.

The ground-floor ones (`StoreError` and what etcd.py raises) live in `controlplane.errors`
and are re-exported here, so callers import every store error from one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.errors import PageTokenExpired, StoreError, StoreUnavailable, TooLarge

__all__ = [
    "AlreadyExists",
    "FieldError",
    "InUse",
    "InvalidPageToken",
    "NotFound",
    "PageTokenExpired",
    "PreconditionFailed",
    "StoreError",
    "StoreUnavailable",
    "TooLarge",
    "ValidationFailed",
    "WriteConflict",
]


@dataclass(frozen=True)
class FieldError:
    """One reason a document is invalid: a JSON pointer into the document and why."""

    pointer: str
    detail: str


class NotFound(StoreError):
    status = 404
    title = "Not found"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} does not exist")
        self.code = f"{kind}-not-found"
        self.title = f"{kind.capitalize()} not found"


class AlreadyExists(StoreError):
    code = "already-exists"
    status = 409
    title = "Already exists"


class InUse(StoreError):
    status = 409

    def __init__(self, kind: str, detail: str, users: list[str]) -> None:
        super().__init__(detail, users=users)
        self.code = f"{kind}-in-use"
        self.title = f"{kind.capitalize()} in use"


class PreconditionFailed(StoreError):
    code = "precondition-failed"
    status = 412
    title = "Precondition failed"

    def __init__(self, detail: str, current_revision: int | None) -> None:
        super().__init__(detail, current_revision=current_revision)
        self.current_revision = current_revision


class ValidationFailed(StoreError):
    code = "validation-failed"
    status = 422
    title = "Validation failed"

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        super().__init__(detail or "; ".join(f"{e.pointer or '/'}: {e.detail}" for e in errors))
        self.errors = errors


class WriteConflict(StoreError):
    code = "write-conflict"
    status = 409
    title = "Concurrent write conflict"


class InvalidPageToken(StoreError):
    code = "invalid-page-token"
    status = 400
    title = "Invalid page token"
