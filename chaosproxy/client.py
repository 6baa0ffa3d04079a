"""A client of Toxiproxy's HTTP API; works against this chaos proxy and against a real Toxiproxy 2.x."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests


class ToxiproxyError(Exception):
    """The API answered an error; ``status`` is the HTTP status, ``message`` Toxiproxy's ``error`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ToxiproxyClient:
    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    # -- transport ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        response = self._session.request(
            method,
            f"{self.base_url}{path}",
            json=payload,
            timeout=self.timeout,
        )
        if response.status_code >= 400:
            raise ToxiproxyError(response.status_code, _error_message(response))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> ToxiproxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- proxies -----------------------------------------------------------------------------------
    def proxies(self) -> dict[str, dict[str, Any]]:
        return dict(self._request("GET", "/proxies"))

    def create_proxy(self, name: str, listen: str, upstream: str, enabled: bool = True) -> dict[str, Any]:
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return dict(self._request("POST", "/proxies", body))

    def get_proxy(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/proxies/{name}"))

    def update_proxy(self, name: str, **fields: Any) -> dict[str, Any]:
        """Change ``listen``, ``upstream`` and/or ``enabled``. POST, which every Toxiproxy 2.x accepts."""
        return dict(self._request("POST", f"/proxies/{name}", fields))

    def enable(self, name: str) -> dict[str, Any]:
        return self.update_proxy(name, enabled=True)

    def disable(self, name: str) -> dict[str, Any]:
        return self.update_proxy(name, enabled=False)

    def delete_proxy(self, name: str) -> None:
        self._request("DELETE", f"/proxies/{name}")

    def populate(self, proxies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = self._request("POST", "/populate", proxies)
        return list(body.get("proxies") or [])

    def reset(self) -> None:
        self._request("POST", "/reset")

    def version(self) -> str:
        response = self._session.get(f"{self.base_url}/version", timeout=self.timeout)
        if response.status_code >= 400:
            raise ToxiproxyError(response.status_code, _error_message(response))
        # Toxiproxy >= 2.6 answers {"version": ...}; older releases answer the bare version text.
        try:
            return str(response.json()["version"])
        except (ValueError, KeyError, TypeError):
            return response.text.strip()

    # -- toxics ------------------------------------------------------------------------------------
    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/proxies/{proxy}/toxics"))

    def get_toxic(self, proxy: str, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/proxies/{proxy}/toxics/{name}"))

    def add_toxic(
        self,
        proxy: str,
        type: str,  # noqa: A002 - Toxiproxy's field name
        attributes: dict[str, Any],
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": type, "stream": stream, "toxicity": toxicity, "attributes": attributes,
        }
        if name is not None:
            body["name"] = name
        return dict(self._request("POST", f"/proxies/{proxy}/toxics", body))

    def update_toxic(
        self,
        proxy: str,
        name: str,
        attributes: dict[str, Any] | None = None,
        *,
        toxicity: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if attributes is not None:
            body["attributes"] = attributes
        if toxicity is not None:
            body["toxicity"] = toxicity
        return dict(self._request("POST", f"/proxies/{proxy}/toxics/{name}", body))

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._request("DELETE", f"/proxies/{proxy}/toxics/{name}")

    @contextmanager
    def toxic(
        self,
        proxy: str,
        type: str,  # noqa: A002 - Toxiproxy's field name
        attributes: dict[str, Any],
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> Iterator[dict[str, Any]]:
        """``with client.toxic("payment", "latency", {"latency": 2000}):``: removed on exit, errors too."""
        created = self.add_toxic(proxy, type, attributes, name=name, stream=stream, toxicity=toxicity)
        try:
            yield created
        finally:
            try:
                self.remove_toxic(proxy, created["name"])
            except ToxiproxyError as exc:
                if exc.status != 404:  # already gone (a reset, or the proxy deleted) is fine
                    raise


def _error_message(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return response.text.strip()
