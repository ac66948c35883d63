"""Errors raised at the ground floor (the etcd connection), with a stable code and HTTP status.

`StoreError` is the base of every intent-store error (`controlplane.intent.errors` adds the
rest); it lives here so that `etcd.py` raises it without importing the rooms above it.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class: `code` is stable API surface, `status` the HTTP status it maps to."""

    code = "store-error"
    status = 500
    title = "Store error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class TooLarge(StoreError):
    code = "batch-too-large"
    status = 413
    title = "Batch too large"


class StoreUnavailable(StoreError):
    code = "store-unavailable"
    status = 503
    title = "Store unavailable"


class PageTokenExpired(StoreError):
    code = "page-token-expired"
    status = 410
    title = "Page token expired"
