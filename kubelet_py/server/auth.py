"""Who is asking (authentication) and may they (authorization), as the kubelet decides it.

Authentication, first that applies:
  1. a client certificate verified against the client CA during the TLS handshake:
     user = its CN, groups = its O values;
  2. `Authorization: Bearer <token>`: a TokenReview on the API server (results cached,
     2 min when valid, 10 s when not); a token it rejects is a 401, never anonymous;
  3. anonymous (`system:anonymous` in `system:unauthenticated`) if enabled.
Everyone authenticated is also in `system:authenticated`.

Authorization is a SubjectAccessReview for the node object: resource `nodes`, name the
node's name, verb from the HTTP method, and a subresource from the path
(`request_attributes`, after pkg/kubelet/server/auth.go with fine-grained authorization:
`/pods`, `/healthz` and `/configz` are tried as their own subresource first and then as
`proxy`). Allowed answers are cached 5 min, denials 30 s.
"""

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kubelet_py.agent.apiclient import ApiClient, ApiError

log = logging.getLogger("kubelet_py.server.auth")

AUTHENTICATED = "system:authenticated"
ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"

_VERBS = {"POST": "create", "GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

# (path, subresource, also try "proxy") in the order the kubelet checks them
_SUBRESOURCES: tuple[tuple[str, str, bool], ...] = (
    ("/stats/", "stats", False),
    ("/metrics", "metrics", False),
    ("/logs/", "log", False),
    ("/checkpoint/", "checkpoint", False),
    ("/spec/", "spec", False),
    ("/pods", "pods", True),
    ("/runningpods/", "pods", True),
    ("/healthz", "healthz", True),
    ("/configz", "configz", True),
)


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Attributes:
    verb: str
    subresource: str
    name: str  # the node
    resource: str = "nodes"
    path: str = ""


class AuthenticationError(Exception):
    """The request carried credentials that are not valid (401)."""


class AuthorizationError(Exception):
    """The authorizer could not be asked (500)."""


def is_subpath(path: str, base: str) -> bool:
    base = base.rstrip("/")
    return path == base or (path.startswith(base) and path[len(base)] == "/")


def request_attributes(method: str, path: str, node_name: str) -> list[Attributes]:
    """What to authorize for `method path`, in order; any one allowed is enough."""
    verb = _VERBS.get(method.upper(), "")
    for base, sub, fallback in _SUBRESOURCES:
        if is_subpath(path, base):
            subs = [sub, "proxy"] if fallback else [sub]
            return [Attributes(verb, s, node_name, path=path) for s in subs]
    return [Attributes(verb, "proxy", node_name, path=path)]


def user_from_peercert(cert: Mapping[str, Any] | None) -> UserInfo | None:
    """CN -> user, O -> groups, from `SSLSocket.getpeercert()` of a verified certificate."""
    if not cert:
        return None
    cn = ""
    orgs: list[str] = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    if not cn:
        return None
    return UserInfo(cn, tuple(orgs))


def with_authenticated(user: UserInfo) -> UserInfo:
    if AUTHENTICATED in user.groups or user.name == ANONYMOUS:
        return user
    return UserInfo(user.name, (*user.groups, AUTHENTICATED), user.uid, user.extra)


K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A small map whose entries expire; oldest entries go first when it is full."""

    def __init__(self, *, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic):
        self._data: dict[K, tuple[float, V]] = {}
        self._max = max_entries
        self._clock = clock

    def get(self, key: K) -> V | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._data[key]
            return None
        return hit[1]

    def put(self, key: K, value: V, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        now = self._clock()
        if len(self._data) >= self._max:
            for k in [k for k, (exp, _) in self._data.items() if exp <= now]:
                del self._data[k]
            while len(self._data) >= self._max:
                del self._data[next(iter(self._data))]
        self._data.pop(key, None)
        self._data[key] = (now + ttl_s, value)


@dataclass
class Authenticator:
    api: ApiClient | None
    anonymous: bool = False
    valid_ttl_s: float = 120.0
    invalid_ttl_s: float = 10.0
    cache: TTLCache[str, tuple[UserInfo | None]] = field(default_factory=TTLCache)

    async def authenticate(
        self, peercert: Mapping[str, Any] | None, authorization: str | None
    ) -> UserInfo | None:
        """The user, or None when the request carries no credentials and anonymous is off.

        Raises AuthenticationError for credentials that are not valid.
        """
        user = user_from_peercert(peercert)
        if user is not None:
            return with_authenticated(user)
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                found = await self._token(token)
                if found is None:
                    raise AuthenticationError("invalid bearer token")
                return with_authenticated(found)
        if self.anonymous:
            return UserInfo(ANONYMOUS, (UNAUTHENTICATED,))
        return None

    async def _token(self, token: str) -> UserInfo | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        if (hit := self.cache.get(key)) is not None:
            return hit[0]  # a valid token's user, or None for one known to be invalid
        if self.api is None:
            return None
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        try:
            review = await self.api.create("/apis/authentication.k8s.io/v1/tokenreviews", body)
        except (ApiError, OSError, TimeoutError) as err:
            log.warning("TokenReview failed: %s", err)
            raise AuthenticationError(f"TokenReview failed: {err}") from err
        status = review.get("status") or {}
        if not status.get("authenticated"):
            log.debug("token rejected: %s", status.get("error", "not authenticated"))
            self.cache.put(key, (None,), self.invalid_ttl_s)
            return None
        u = status.get("user") or {}
        user = UserInfo(
            name=u.get("username", ""),
            groups=tuple(u.get("groups") or ()),
            uid=u.get("uid", ""),
            extra=tuple(sorted((k, tuple(v)) for k, v in (u.get("extra") or {}).items())),
        )
        self.cache.put(key, (user,), self.valid_ttl_s)
        return user


@dataclass
class Authorizer:
    """SubjectAccessReview on the API server; without one, every authenticated user is allowed."""

    api: ApiClient | None
    allowed_ttl_s: float = 300.0
    denied_ttl_s: float = 30.0
    cache: TTLCache[tuple[UserInfo, Attributes], bool] = field(default_factory=TTLCache)

    async def allowed(self, user: UserInfo, attrs: Attributes) -> bool:
        """Raises AuthorizationError when the API server cannot be asked."""
        if self.api is None:
            return True
        key = (user, Attributes(attrs.verb, attrs.subresource, attrs.name, attrs.resource))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "verb": attrs.verb,
                    "group": "",
                    "version": "v1",
                    "resource": attrs.resource,
                    "subresource": attrs.subresource,
                    "name": attrs.name,
                },
                "user": user.name,
                "groups": list(user.groups),
                "uid": user.uid,
                "extra": {k: list(v) for k, v in user.extra},
            },
        }
        try:
            review = await self.api.create(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews", body
            )
        except (ApiError, OSError, TimeoutError) as err:
            log.warning("SubjectAccessReview failed: %s", err)
            raise AuthorizationError(str(err)) from err
        status = review.get("status") or {}
        ok = bool(status.get("allowed")) and not status.get("denied")
        self.cache.put(key, ok, self.allowed_ttl_s if ok else self.denied_ttl_s)
        return ok
