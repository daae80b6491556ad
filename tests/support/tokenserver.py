"""A distribution-style token service for tests: HTTP Basic in, signed JWT bearer tokens out.

`TokenServer` listens on 127.0.0.1 (plain HTTP, kernel-picked port) in a background thread
and implements the token endpoint of distribution's token auth spec
(docs/spec/auth/token.md, jwt.md), which docker-registry 2.8 checks in `auth: token:` mode:

- `GET /token?service=...&scope=repository:<name>:<actions>[&scope=...]`, with or without
  `Authorization: Basic ...`;
- right credentials: a token granting the requested actions the user is allowed
  (`actions`, pull and push by default) on every requested repository;
- no credentials: an anonymous token with an empty `access` list (as Docker Hub does for
  private repositories), so the registry answers 401 `insufficient_scope` with it;
- wrong credentials: 401 with a JSON error, as real token services do.

Tokens are ES256 JWTs whose header carries the signing certificate in `x5c`; that
certificate is issued by a fresh test CA whose PEM (`root_cert_path`) is the registry's
`rootcertbundle`. Claims: iss, sub, aud (the requested `service`, so a client that drops
it gets a token the registry rejects), exp, nbf, iat, jti and access. Every request is
recorded in `requests` (thread-safe) for tests to inspect.

Nothing listens anywhere but 127.0.0.1; `stop()` shuts the server down and joins its thread.
"""

import base64
import binascii
import json
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from kubelet_py.devcluster.pki import CertificateAuthority
from tests.support.registry import LOOPBACK, TokenAuth

DEFAULT_SERVICE = "kubelet-py-test-registry"
DEFAULT_ISSUER = "kubelet-py-test-token-issuer"
TOKEN_PATH = "/token"


class TokenServerError(RuntimeError):
    """The token server did not start."""


@dataclass(frozen=True)
class Grant:
    """What one token grants on one resource (a JWT `access` entry)."""

    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered, as the test sees it."""

    method: str
    path: str
    params: dict[str, list[str]]
    """The query parameters, every value of each (`scope` may repeat)."""
    credentials_given: bool
    """An `Authorization: Basic` header came with the request."""
    username: str | None
    authenticated: bool
    """The Basic credentials matched the configured user."""
    status: int
    granted: tuple[Grant, ...]

    @property
    def service(self) -> str | None:
        values = self.params.get("service")
        return values[0] if values else None

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every requested scope (repeated `scope` params, each possibly space-separated)."""
        return tuple(s for value in self.params.get("scope", []) for s in value.split())


def parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]] | None:
    """`repository:team/app:pull,push` -> ("repository", "team/app", ("pull", "push"))."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return kind, name, tuple(a for a in actions.split(",") if a)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_bytes(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class TokenServer:
    """The token endpoint on 127.0.0.1; a context manager (or start()/stop())."""

    def __init__(
        self,
        work_dir: Path,
        *,
        username: str,
        password: str,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        actions: Sequence[str] = ("pull", "push"),
        ttl_s: int = 300,
    ) -> None:
        self.work_dir = work_dir
        self.username = username
        self.password = password
        self.service = service
        self.issuer = issuer
        self.actions = tuple(actions)
        self.ttl_s = ttl_s
        self.root_cert_path = work_dir / "token-ca.crt"
        self.port = 0
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._x5c: list[str] = []

    # -- addresses -----------------------------------------------------------------------

    @property
    def realm(self) -> str:
        """`http://127.0.0.1:PORT/token`, the realm the registry's challenges name."""
        return f"http://{LOOPBACK}:{self.port}{TOKEN_PATH}"

    def registry_auth(self) -> TokenAuth:
        """The `auth: token:` settings for a `Registry` that trusts this server's tokens."""
        return TokenAuth(
            realm=self.realm,
            service=self.service,
            issuer=self.issuer,
            root_cert_bundle=self.root_cert_path,
        )

    # -- what it saw ---------------------------------------------------------------------

    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of the requests answered so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Make the signing PKI, bind 127.0.0.1:0 and serve in a daemon thread."""
        if self._server is not None:
            raise TokenServerError("token server already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._make_pki()
        server = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"token-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        try:
            server.shutdown()
        finally:
            server.server_close()
            if thread is not None:
                thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- tokens --------------------------------------------------------------------------

    def _make_pki(self) -> None:
        ca = CertificateAuthority.create("test-token-ca")
        pair = ca.issue("test-token-signer")
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        der = pair.certificate.public_bytes(serialization.Encoding.DER)
        self._x5c = [base64.b64encode(der).decode()]  # standard base64 DER, leaf first
        self.root_cert_path.write_bytes(ca.pair.cert_pem)

    def issue(self, *, subject: str, audience: str, grants: Sequence[Grant]) -> str:
        """A compact ES256 JWT (what the registry verifies) for `grants`."""
        assert self._key is not None, "token server not started"
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": self._x5c}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,  # distribution 2.8 wants a string here, not a list
            "exp": now + self.ttl_s,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [g.claim() for g in grants],
        }
        signing_input = f"{_b64url(_json_bytes(header))}.{_b64url(_json_bytes(claims))}"
        der_sig = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)  # JWS wants r || s, 32 bytes each
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def signing_certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(base64.b64decode(self._x5c[0]))

    def _grants(self, scopes: Sequence[str]) -> tuple[Grant, ...]:
        grants = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None or parsed[0] != "repository":
                continue
            kind, name, wanted = parsed
            allowed = tuple(a for a in wanted if a in self.actions)
            if allowed:
                grants.append(Grant(kind, name, allowed))
        return tuple(grants)

    def _answer(
        self, method: str, target: str, authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        split = urlsplit(target)
        params = parse_qs(split.query, keep_blank_values=True)
        username, password = _basic_credentials(authorization)
        given = authorization is not None
        authenticated = given and username == self.username and password == self.password
        scopes = tuple(s for value in params.get("scope", []) for s in value.split())
        grants: tuple[Grant, ...] = ()
        if split.path != TOKEN_PATH:
            status, body = HTTPStatus.NOT_FOUND, {"errors": [{"code": "NOT_FOUND"}]}
        elif given and not authenticated:
            status = HTTPStatus.UNAUTHORIZED
            body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication failed"}]}
        else:
            grants = self._grants(scopes) if authenticated else ()
            service = params.get("service", [""])[0]
            token = self.issue(subject=username or "", audience=service, grants=grants)
            status = HTTPStatus.OK
            body = {
                "token": token,
                "access_token": token,
                "expires_in": self.ttl_s,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        record = TokenRequest(
            method=method,
            path=split.path,
            params=params,
            credentials_given=given,
            username=username,
            authenticated=authenticated,
            status=int(status),
            granted=grants,
        )
        with self._lock:
            self._requests.append(record)
        return int(status), body


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    """(user, password) from `Basic base64(user:password)`; (None, None) if not that."""
    if header is None:
        return None, None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0 (the default): one request per connection, so no handler thread outlives
        # its answer waiting on an idle keep-alive connection.

        def _serve(self) -> None:
            status, body = server._answer(
                self.command, self.path, self.headers.get("Authorization")
            )
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Basic realm="test-token-service"')
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the recorded requests are the log

    return Handler
