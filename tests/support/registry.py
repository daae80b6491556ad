"""A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on loopback.

`Registry` writes its own config.yml, starts `docker-registry serve` on 127.0.0.1 at a
free port in the root network namespace, waits until `GET /v2/` answers, and stops the
one process it started, by PID. Three modes:

- plain HTTP, no auth (`Registry(work_dir)`);
- HTTPS with htpasswd basic auth (`Registry(work_dir, username="u", password="p")`): the
  serving certificate comes from a fresh test CA whose PEM is at `ca_path` (and alone in
  `cert_dir`, the layout skopeo's `--*-cert-dir` expects);
- plain HTTP with bearer-token auth (`Registry(work_dir, token_auth=TokenAuth(...))`,
  distribution's `auth: token:`): every request needs a JWT from the token service at
  `realm`, signed by a key whose certificate chains to `root_cert_bundle` (see
  tests/support/tokenserver.py).

Nothing listens anywhere but 127.0.0.1: no debug server, no notifications, no redirects,
no upload purging, no proxy mode.
"""

import http.client
import secrets
import signal
import socket
import ssl
import subprocess
import time
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType
from typing import Self

import bcrypt
import yaml

from kubelet_py.devcluster.pki import CertificateAuthority

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class TokenAuth:
    """distribution's `auth: token:` settings: where clients get tokens, and whose to trust."""

    realm: str
    service: str
    issuer: str
    root_cert_bundle: Path


class RegistryError(RuntimeError):
    """The registry did not start, or died; the message carries the tail of its log."""


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry; distribution only accepts bcrypt (cost 4 keeps requests fast)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}\n"


class Registry:
    """One docker-registry process on 127.0.0.1; a context manager (or start()/stop())."""

    def __init__(
        self,
        work_dir: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        start_timeout_s: float = 30.0,
        token_auth: TokenAuth | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password (TLS + basic auth) or neither")
        if token_auth is not None and username is not None:
            raise ValueError("token_auth and htpasswd (username/password) exclude each other")
        self.work_dir = work_dir
        self.username = username
        self.password = password
        self.tls = username is not None
        self.token_auth = token_auth
        self.start_timeout_s = start_timeout_s
        self.storage_dir = work_dir / "storage"
        self.config_path = work_dir / "config.yml"
        self.log_path = work_dir / "registry.log"
        self.cert_dir = work_dir / "certs"  # only ca.crt: what skopeo's --*-cert-dir reads
        self.ca_path: Path | None = None
        self.ca_pem: bytes | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- addresses -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def reference(self, name: str, tag: str = "latest") -> str:
        """`127.0.0.1:PORT/name:tag`."""
        return f"{self.host}/{name}:{tag}"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Write config (and PKI, htpasswd), start the process, wait for `GET /v2/`."""
        if self.proc is not None:
            raise RegistryError("registry already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        tls_files = self._write_tls() if self.tls else None
        htpasswd = self._write_htpasswd() if self.tls else None
        # The port is picked then released; another process could grab it in between, so a
        # bind failure is retried on a new port.
        for attempt in range(3):
            self.port = free_loopback_port()
            self._write_config(tls_files, htpasswd)
            self._spawn()
            try:
                self._wait_ready()
            except RegistryError as err:
                self.stop()
                if attempt < 2 and "address already in use" in str(err):
                    continue
                raise
            return self
        raise AssertionError("unreachable")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process we started (by PID), SIGKILL after `grace_s`; reap it."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        finally:
            self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients -------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only this registry's CA (TLS mode only)."""
        if self.ca_path is None:
            raise RegistryError("plain-HTTP registry has no CA")
        return ssl.create_default_context(cafile=str(self.ca_path))

    def connection(self, timeout_s: float = 10.0) -> http.client.HTTPConnection:
        """A direct connection to the registry (no proxy from the environment)."""
        if self.tls:
            return http.client.HTTPSConnection(
                LOOPBACK, self.port, context=self.ssl_context(), timeout=timeout_s
            )
        return http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout_s)

    def basic_auth_header(self) -> dict[str, str]:
        """`{"Authorization": "Basic ..."}` for the configured user, `{}` without auth."""
        if self.username is None or self.password is None:
            return {}
        token = b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        timeout_s: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; returns (status, headers with lower-case names, body)."""
        all_headers = dict(self.basic_auth_header() if auth else {})
        all_headers.update(headers or {})
        conn = self.connection(timeout_s)
        try:
            conn.request(method, path, headers=all_headers)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -----------------------------------------------------------------------

    def _write_tls(self) -> tuple[Path, Path]:
        ca = CertificateAuthority.create("test-registry-ca")
        pair = ca.issue(
            LOOPBACK,
            ip_addresses=[IPv4Address(LOOPBACK)],
            dns_names=["localhost"],
            server=True,
        )
        tls_dir = self.work_dir / "tls"
        tls_dir.mkdir(exist_ok=True)
        cert_path, key_path = pair.write(tls_dir, "registry")
        self.cert_dir.mkdir(exist_ok=True)
        self.ca_pem = ca.pair.cert_pem
        self.ca_path = self.cert_dir / "ca.crt"
        self.ca_path.write_bytes(self.ca_pem)
        return cert_path, key_path

    def _write_htpasswd(self) -> Path:
        assert self.username is not None and self.password is not None
        path = self.work_dir / "htpasswd"
        path.write_text(htpasswd_line(self.username, self.password))
        path.chmod(0o600)
        return path

    def _write_config(self, tls_files: tuple[Path, Path] | None, htpasswd: Path | None) -> None:
        http_section: dict[str, object] = {
            "addr": f"{LOOPBACK}:{self.port}",
            "net": "tcp",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
            # no "debug" key: the debug server would be one more listener.
        }
        if tls_files is not None:
            http_section["tls"] = {
                "certificate": str(tls_files[0]),
                "key": str(tls_files[1]),
            }
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "redirect": {"disable": True},
                "maintenance": {
                    "uploadpurging": {"enabled": False},
                    "readonly": {"enabled": False},
                },
            },
            "http": http_section,
            "health": {"storagedriver": {"enabled": False}},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(htpasswd)}}
        elif self.token_auth is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token_auth.realm,
                    "service": self.token_auth.service,
                    "issuer": self.token_auth.issuer,
                    "rootcertbundle": str(self.token_auth.root_cert_bundle),
                }
            }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _spawn(self) -> None:
        # Only what the registry needs: no REGISTRY_* overrides or proxies from our env.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.work_dir)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(REGISTRY_BINARY), "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work_dir,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RegistryError(
                    f"docker-registry exited with {code} before serving {self.url}/v2/; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                # short timeout: whatever else holds our port may accept and never answer
                status, headers, _ = self.request("GET", "/v2/", auth=False, timeout_s=1.0)
            except (OSError, http.client.HTTPException) as err:
                last_error = f"{type(err).__name__}: {err}"
            else:
                api = headers.get("docker-distribution-api-version")
                # the answer must come from a registry, and ours must still be running
                if status in (200, 401) and api == "registry/2.0" and self.proc.poll() is None:
                    return
                last_error = f"GET /v2/ answered {status} (API version {api!r})"
            time.sleep(0.05)
        raise RegistryError(
            f"docker-registry did not come up on {self.url} within {self.start_timeout_s}s "
            f"({last_error}); log {self.log_path}:\n{self.log_tail()}"
        )


def serve_registry(
    work_dir: Path,
    *,
    auth: bool = False,
    username: str = "tester",
    password: str | None = None,
) -> Iterator[Registry]:
    """Yield a started Registry and stop it afterwards; wrap it in any pytest fixture:

        @pytest.fixture(scope="session")
        def registry(tmp_path_factory):
            yield from serve_registry(tmp_path_factory.mktemp("registry"), auth=True)

    With `auth`, TLS + htpasswd for `username` and `password` (random when None).
    """
    if auth:
        registry = Registry(
            work_dir, username=username, password=password or secrets.token_urlsafe(12)
        )
    else:
        registry = Registry(work_dir)
    with registry:
        yield registry
