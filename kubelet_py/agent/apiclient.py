"""A small asyncio client for the Kubernetes API: the calls a node agent makes, nothing more.

The `kubernetes` package's client is synchronous (urllib3); a node agent that
watches pods and patches statuses for a hundred pods wants one event loop and
one connection pool instead of a thread per call, so this speaks REST directly
with aiohttp. Objects stay plain JSON dicts here and become typed objects in
the agent's own modules (pods/model.py) — the edge is right above this file.
"""

import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml


class ApiError(Exception):
    """The API answered with an error status; `status` and `reason` say which."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def temporary(self) -> bool:
        return self.status in (408, 429) or self.status >= 500


class WatchExpired(Exception):
    """410 Gone: the resourceVersion is too old; relist and watch again."""


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_pem: bytes | None
    cert_pem: bytes | None
    key_pem: bytes | None
    token: str | None
    insecure: bool = False
    cert_file: Path | None = None
    """The client certificate's file when the kubeconfig names one (it may rotate)."""


def load_kubeconfig(path: Path) -> KubeConfig:
    """The current context's cluster and user, with file references read in."""
    doc = yaml.safe_load(path.read_text())
    ctx_name = doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in doc.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in doc.get("users") or []}
    if ctx_name not in contexts:
        raise ValueError(f"kubeconfig {path}: current-context {ctx_name!r} not found")
    ctx = contexts[ctx_name]
    cluster, user = clusters[ctx["cluster"]], users.get(ctx.get("user", ""), {})

    def data(entry: Mapping[str, Any], key: str) -> bytes | None:
        if entry.get(f"{key}-data"):
            return base64.b64decode(entry[f"{key}-data"])
        if entry.get(key):
            ref = Path(entry[key])
            return (ref if ref.is_absolute() else path.parent / ref).read_bytes()
        return None

    cert_file = None
    if user.get("client-certificate") and not user.get("client-certificate-data"):
        ref = Path(user["client-certificate"])
        cert_file = ref if ref.is_absolute() else path.parent / ref
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return KubeConfig(
        server=cluster["server"].rstrip("/"),
        ca_pem=data(cluster, "certificate-authority"),
        cert_pem=data(user, "client-certificate"),
        key_pem=data(user, "client-key"),
        token=token,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_file=cert_file,
    )


def _ssl_context(cfg: KubeConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if cfg.ca_pem:
        ctx.load_verify_locations(cadata=cfg.ca_pem.decode())
    if cfg.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_pem and cfg.key_pem:
        # load_cert_chain wants files; they exist only for the duration of the call.
        with tempfile.NamedTemporaryFile() as cert, tempfile.NamedTemporaryFile() as key:
            cert.write(cfg.cert_pem)
            cert.flush()
            key.write(cfg.key_pem)
            key.flush()
            ctx.load_cert_chain(cert.name, key.name)
    return ctx


class ApiClient:
    def __init__(self, cfg: KubeConfig, *, user_agent: str = "kubelet-py") -> None:
        self.cfg = cfg
        self._ssl = _ssl_context(cfg)
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if cfg.token:
            self._headers["Authorization"] = f"Bearer {cfg.token}"
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
            )
        return self._session

    def reload_client_certificate(self, pem_file: Path) -> None:
        """Use a rotated client cert+key (one PEM file) for every new connection.

        OpenSSL copies the certificate into each connection when it is made, so open
        connections (watches in flight) keep the one they started with.
        """
        self._ssl.load_cert_chain(str(pem_file))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
    ) -> Any:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._sess().request(
            method,
            self.cfg.server + path,
            params=params,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    doc = json.loads(text)
                    raise ApiError(resp.status, doc.get("reason", ""), doc.get("message", text))
                except ValueError:
                    raise ApiError(resp.status, resp.reason or "", text) from None
            return json.loads(text) if text else None

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Any, *, kind: str = "strategic") -> Any:
        ctype = {
            "strategic": "application/strategic-merge-patch+json",
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return await self.request("PATCH", path, body=body, content_type=ctype)

    async def put(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body=body)

    async def delete(self, path: str, body: Any = None) -> Any:
        return await self.request("DELETE", path, body=body)

    async def watch(
        self, path: str, *, resource_version: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield (type, object) events; raises WatchExpired on 410 Gone."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
            **(params or {}),
        }
        async with self._sess().get(
            self.cfg.server + path, params=query, timeout=aiohttp.ClientTimeout(total=None)
        ) as resp:
            if resp.status == 410:
                raise WatchExpired()
            if resp.status >= 400:
                raise ApiError(resp.status, resp.reason or "", await resp.text())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired()
                    raise ApiError(
                        int(obj.get("code", 500)), obj.get("reason", ""), obj.get("message", "")
                    )
                yield event["type"], obj
