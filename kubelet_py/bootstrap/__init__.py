"""Joining a cluster as a node: token discovery, TLS bootstrap, and certificate rotation.

token.py      bootstrap tokens and the Secret that defines one
discovery.py  cluster-info: JWS signature for the token, CA public-key pin (pure checks)
csr.py        CSRs for the client and serving certificates; waiting for the signer
store.py      pairs and kubeconfigs on disk, atomically, laid out like the kubelet's
join.py       the `kubelet-py join` flow
rotation.py   renewal at 70-90 % of a certificate's lifetime
clusterside.py the RBAC and cluster-info objects a cluster needs (the Helm chart's twin)
errors.py     the exception tree (temporary vs permanent)
"""

from kubelet_py.bootstrap.errors import BootstrapError
from kubelet_py.bootstrap.token import BootstrapToken

__all__ = ["BootstrapError", "BootstrapToken"]
