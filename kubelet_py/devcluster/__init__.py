"""A real local Kubernetes control plane for tests and demos.

Layout of this package, bottom up:

- `errors`   — the exception tree of the whole package.
- `fsutil`   — atomic file writes.
- `build`    — builds kube-apiserver, kube-controller-manager, kube-scheduler,
               kubectl and etcd from their Go modules at one pinned release and
               caches the binaries by version outside the repository.
- `pki`      — a kubeadm-like PKI: cluster CA, serving and client certificates,
               service-account keys, kubeconfigs; mints node identities.
- `netlab`   — the "lab" network namespace with its underlay bridge, and node
               namespaces attached to it. Nothing is added to the root namespace.
- `forward`  — a loopback TCP forwarder from the root namespace into the lab, so
               people and tests reach the apiserver at 127.0.0.1.
- `cluster`  — `LocalCluster`: starts etcd and the control plane inside the lab,
               waits on real health endpoints, and tears everything down.
"""

from kubelet_py.devcluster.build import K8S_VERSION, ControlPlaneBinaries, ensure_binaries
from kubelet_py.devcluster.cluster import LocalCluster
from kubelet_py.devcluster.errors import (
    BuildError,
    ComponentStartError,
    DevClusterError,
    NetLabError,
)
from kubelet_py.devcluster.netlab import LabNode, NetLab

__all__ = [
    "K8S_VERSION",
    "BuildError",
    "ComponentStartError",
    "ControlPlaneBinaries",
    "DevClusterError",
    "LabNode",
    "LocalCluster",
    "NetLab",
    "NetLabError",
    "ensure_binaries",
]
