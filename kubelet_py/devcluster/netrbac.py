"""Cluster-side objects kubelet-py's pod network needs (the Helm chart ships the same).

Since Kubernetes 1.32 the Node authorizer lets a node read only its own Node
object. The VXLAN overlay needs every node's pod CIDR and VTEP annotations, as
flannel does, so nodes (group system:nodes) get get/list/watch on Nodes through
RBAC, which the API server consults after the Node authorizer. Writes stay
limited to the node's own object by the Node authorizer and NodeRestriction.
"""

from typing import Any

OVERLAY_ROLE = "kubelet-py:node-overlay"


def node_network_rbac() -> list[dict[str, Any]]:
    """A ClusterRole to read Nodes and its binding to every node."""
    labels = {"app.kubernetes.io/part-of": "kubelet-py"}
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": OVERLAY_ROLE, "labels": labels},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": OVERLAY_ROLE, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": OVERLAY_ROLE,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
            ],
        },
    ]
