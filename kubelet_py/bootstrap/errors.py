"""The bootstrap package's exception tree: what failed, on what, and whether a retry can help.

`temporary` errors (the apiserver unreachable, a token not signed yet, an approval
that did not come in time) are worth retrying as they are; permanent ones (a wrong
secret, a CA that does not match the pinned hash, a denied CSR) need a human.
"""


class BootstrapError(Exception):
    """Joining a cluster or renewing a node's certificate failed."""

    temporary: bool = False


class BadInput(BootstrapError):
    """A flag's value is malformed (a token, a CA hash, a server URL)."""


class DiscoveryError(BootstrapError):
    """The cluster-info ConfigMap did not verify: wrong token secret or wrong CA hash."""


class TokenNotSigned(DiscoveryError):
    """cluster-info carries no signature for this token id: unknown, expired, or not yet signed."""

    temporary = True


class ApiUnreachable(BootstrapError):
    """The API server did not answer (connection refused, timeout, TLS failure)."""

    temporary = True


class TokenRejected(BootstrapError):
    """The API server refused the bootstrap token (401): wrong or expired."""


class Forbidden(BootstrapError):
    """The API server authenticated us but RBAC forbids the call (403)."""


class CSRDenied(BootstrapError):
    """Someone (or a controller) denied or failed our CertificateSigningRequest."""


class CSRTimeout(BootstrapError):
    """The CSR was not approved and signed in time."""

    temporary = True


class CredentialsError(BootstrapError):
    """Credentials on disk are unreadable, or could not be written."""
