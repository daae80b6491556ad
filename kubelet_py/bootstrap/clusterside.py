"""The objects a cluster needs before kubelet-py nodes can join with a token (pure data).

These are what kubeadm's `bootstrap-token` phase creates, and what the Helm chart in
helm/kubelet-py renders (a test checks that the two agree):

    ClusterRoleBinding kubelet-py:node-bootstrapper           token groups -> node-bootstrapper
                                                              (create/get/list/watch CSRs)
    ClusterRoleBinding kubelet-py:node-autoapprove-bootstrap  token groups -> ...:nodeclient
                                                              (csrapproving approves first certs)
    ClusterRoleBinding kubelet-py:node-autoapprove-certificate-rotation
                                                              system:nodes -> ...:selfnodeclient
                                                              (and renewals by the node itself)
    Role + RoleBinding kube-public/kubelet-py:bootstrap-signer-clusterinfo
                                                              system:anonymous may get cluster-info
    ConfigMap kube-public/cluster-info                        kubeconfig: server + CA, which
                                                              kcm's bootstrapsigner signs per token

What kube-controller-manager already provides (with `--controllers=*,bootstrapsigner,
tokencleaner`): the signatures (`jws-kubeconfig-<id>`, and their removal when a token
goes), the bootstrapsigner's own RBAC to update cluster-info, deletion of expired token
Secrets, auto-approval itself (csrapproving, which asks RBAC whether the requester may
create certificatesigningrequests/nodeclient or /selfnodeclient), and the signing.
Nothing upstream approves `kubernetes.io/kubelet-serving` CSRs: see docs/ARCHITECTURE.md.
"""

import base64
from collections.abc import Sequence
from typing import Any

import yaml

from kubelet_py.bootstrap.token import NODE_TOKEN_GROUP

NODE_BOOTSTRAPPER_ROLE = "system:node-bootstrapper"
NODECLIENT_ROLE = "system:certificates.k8s.io:certificatesigningrequests:nodeclient"
SELFNODECLIENT_ROLE = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"
CLUSTER_INFO_ROLE = "kubelet-py:bootstrap-signer-clusterinfo"


def _crb(name: str, role: str, groups: Sequence[str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g} for g in groups
        ],
    }


def bootstrap_rbac(
    *,
    bootstrap_groups: Sequence[str] = (NODE_TOKEN_GROUP,),
    auto_approve_groups: Sequence[str] = (NODE_TOKEN_GROUP,),
    auto_approve_renewals: bool = True,
) -> list[dict[str, Any]]:
    """RBAC for token holders to ask for node certs, and for the approver to approve them."""
    objs = [_crb("kubelet-py:node-bootstrapper", NODE_BOOTSTRAPPER_ROLE, bootstrap_groups)]
    if auto_approve_groups:
        objs.append(
            _crb("kubelet-py:node-autoapprove-bootstrap", NODECLIENT_ROLE, auto_approve_groups)
        )
    if auto_approve_renewals:
        objs.append(
            _crb(
                "kubelet-py:node-autoapprove-certificate-rotation",
                SELFNODECLIENT_ROLE,
                ["system:nodes"],
            )
        )
    return objs


def cluster_info_rbac() -> list[dict[str, Any]]:
    """Anonymous read of kube-public/cluster-info (kubeadm's Role of the same purpose)."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": CLUSTER_INFO_ROLE, "namespace": "kube-public"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["cluster-info"],
                    "verbs": ["get"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": CLUSTER_INFO_ROLE, "namespace": "kube-public"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": CLUSTER_INFO_ROLE,
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": "system:anonymous",
                }
            ],
        },
    ]


def cluster_info_kubeconfig(*, server: str, ca_pem: bytes) -> str:
    """The kubeconfig kept in cluster-info: one cluster, no users (what kubeadm writes)."""
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "",
                "cluster": {
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    "server": server,
                },
            }
        ],
        "contexts": None,
        "current-context": "",
        "preferences": {},
        "users": None,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def cluster_info_configmap(*, server: str, ca_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": cluster_info_kubeconfig(server=server, ca_pem=ca_pem)},
    }


def join_objects(*, server: str, ca_pem: bytes, **rbac: Any) -> list[dict[str, Any]]:
    """Everything above, for `kubectl apply`."""
    return [
        *bootstrap_rbac(**rbac),
        *cluster_info_rbac(),
        cluster_info_configmap(server=server, ca_pem=ca_pem),
    ]
