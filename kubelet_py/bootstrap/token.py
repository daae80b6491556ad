"""Bootstrap tokens: `<id>.<secret>` (6 and 16 of [a-z0-9]) and the Secret that defines one.

The format and the Secret's keys are those of k8s.io/cluster-bootstrap (token/api):
`bootstrap-token-<id>` in kube-system, type `bootstrap.kubernetes.io/token`. The
secret half is never logged; `BootstrapToken.__repr__` shows the id only.
"""

import datetime
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubelet_py.bootstrap.errors import BadInput

TOKEN_RE = re.compile(r"\A([a-z0-9]{6})\.([a-z0-9]{16})\Z")
GROUP_RE = re.compile(r"\Asystem:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]\Z")
SECRET_TYPE = "bootstrap.kubernetes.io/token"  # noqa: S105 - a type name, not a password
SECRET_PREFIX = "bootstrap-token-"  # noqa: S105
DEFAULT_GROUP = "system:bootstrappers"
# The group kubelet-py's join tokens carry by default; the Helm chart and the dev cluster
# bind it to CSR creation and to auto-approval of node client certificates.
NODE_TOKEN_GROUP = "system:bootstrappers:kubelet-py:default-node-token"  # noqa: S105
_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class BootstrapToken:
    """A parsed bootstrap token."""

    id: str
    secret: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> "BootstrapToken":
        m = TOKEN_RE.match(text.strip())
        if m is None:
            raise BadInput(
                "the bootstrap token must look like <6 chars>.<16 chars> of [a-z0-9] "
                "(as `kubeadm token create` or `kubelet-py token create` print it)"
            )
        return cls(m.group(1), m.group(2))

    @classmethod
    def generate(cls) -> "BootstrapToken":
        return cls(
            "".join(secrets.choice(_ALPHABET) for _ in range(6)),
            "".join(secrets.choice(_ALPHABET) for _ in range(16)),
        )

    @property
    def value(self) -> str:
        """The bearer token, `<id>.<secret>`."""
        return f"{self.id}.{self.secret}"

    @property
    def user(self) -> str:
        return f"system:bootstrap:{self.id}"

    def secret_manifest(
        self,
        *,
        expiration: datetime.datetime | None,
        groups: Sequence[str] = (NODE_TOKEN_GROUP,),
        signing: bool = True,
        authentication: bool = True,
        description: str = "kubelet-py node bootstrap token",
    ) -> dict[str, Any]:
        """The kube-system Secret that makes this token exist (as `kubeadm token create`)."""
        for group in groups:
            if not GROUP_RE.match(group):
                raise BadInput(f"bootstrap token group {group!r} must match system:bootstrappers:*")
        data: dict[str, str] = {
            "description": description,
            "token-id": self.id,
            "token-secret": self.secret,
            "usage-bootstrap-authentication": "true" if authentication else "false",
            "usage-bootstrap-signing": "true" if signing else "false",
        }
        if groups:
            data["auth-extra-groups"] = ",".join(groups)
        if expiration is not None:
            data["expiration"] = expiration.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET_PREFIX + self.id, "namespace": "kube-system"},
            "type": SECRET_TYPE,
            "stringData": data,
        }
