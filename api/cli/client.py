"""A small synchronous client for the admin API (used by the CLI, scripts and tests)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API = "http://127.0.0.1:8080"


@dataclass
class ApiProblem(Exception):
    """An RFC 9457 problem returned by the API."""

    status: int
    code: str
    title: str
    detail: str
    body: dict[str, Any] = field(default_factory=dict)
    # What to do about it, in the CLI's terms (a flag), set by the command that knows.
    hint: str | None = None

    def __str__(self) -> str:
        lines = [f"{self.title} ({self.status} {self.code}): {self.detail}"]
        for e in self.body.get("errors", []):
            lines.append(f"  {e.get('pointer') or '/'}: {e.get('detail')}")
        return "\n".join(lines)


def unreachable(client: Client, exc: Exception) -> ApiProblem:
    """The problem for an API that did not answer (status 0: nothing came back)."""
    why = str(exc) or type(exc).__name__
    return ApiProblem(0, "api-unreachable", "Admin API unreachable", f"no answer from the admin API at "
                      f"{client.http.base_url}: {why}")  # fmt: skip


def discover(state_dir: str | Path = ".lbcp") -> tuple[str, str | None]:
    """The API URL and token: LBCP_API / LBCP_TOKEN, else a local cluster's cluster.json."""
    url, token = os.environ.get("LBCP_API"), os.environ.get("LBCP_TOKEN")
    state = Path(state_dir) / "cluster.json"
    if (url is None or token is None) and state.exists():
        try:
            doc = json.loads(state.read_text())
            url = url or doc.get("admin_api")
            token = token or doc.get("token")
        except (OSError, ValueError):
            pass
    return url or DEFAULT_API, token


class Client:
    def __init__(self, base_url: str = DEFAULT_API, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
    ) -> httpx.Response:
        try:
            r = self.http.request(method, path, json=json_body, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise unreachable(self, exc) from None
        if r.status_code >= 400:
            self.raise_problem(r)
        return r

    @staticmethod
    def raise_problem(r: httpx.Response) -> None:
        """Raise the API's problem+json answer (a read response of status >= 400) as ApiProblem."""
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        raise ApiProblem(
            r.status_code,
            doc.get("code", "http-error"),
            doc.get("title", r.reason_phrase),
            doc.get("detail", r.text[:500]),
            doc,
        )

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def list_all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items, token = [], None
        while True:
            page = self.get(path, limit=1000, page_token=token, **params)
            items += page["items"]
            token = page.get("next_page_token")
            if not token:
                return items

    def put(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("PUT", path, json_body=body, params=params or None).json()

    def post(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", path, json_body=body, params=params or None).json()

    def patch(self, path: str, body: Any) -> Any:
        return self.request(
            "PATCH", path, json_body=body, headers={"content-type": "application/merge-patch+json"}
        ).json()

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path).json()
