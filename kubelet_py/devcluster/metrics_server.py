"""metrics-server for the local cluster: `kubectl top` through the aggregation layer.

    kubectl top ─▶ kube-apiserver ─(aggregator, front-proxy client cert)─▶ metrics-server
                   https://10.77.0.1:4443 in the lab netns ─(its client cert)─▶ each kubelet's
                   /metrics/resource on the node's InternalIP:10250

What upstream's manifests (manifests/base/*.yaml of sigs.k8s.io/metrics-server) put in
a cluster, adapted to a process outside any pod: the RBAC is bound to the user
`metrics-server` (a client certificate from the cluster CA) instead of a service
account; the Service has no selector and an EndpointSlice names the lab address, which
the apiserver dials directly (it runs with --enable-aggregator-routing, so no kube-proxy
is needed); metrics-server serves a certificate from the cluster CA, which the APIService
trusts through caBundle. Kubelet serving certificates are checked against `kubelet_ca`
when given (a single node's self-signed cert), else not verified (--kubelet-insecure-tls).
"""

import base64
import ipaddress
import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubelet_py.devcluster.build import ensure_go_tool
from kubelet_py.devcluster.cluster import Component, LocalCluster
from kubelet_py.devcluster.errors import ComponentStartError
from kubelet_py.devcluster.fsutil import write_atomic
from kubelet_py.devcluster.netlab import run_in_netns
from kubelet_py.devcluster.pki import kubeconfig_yaml

PORT = 4443
USER = "metrics-server"
METRIC_RESOLUTION_S = 10  # metrics-server's minimum


def manifests(*, address: str, port: int, ca_bundle_pem: bytes, user: str = USER) -> list[Any]:
    """The API objects: RBAC for `user`, the Service + EndpointSlice, the APIService."""
    subject = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": "system:aggregated-metrics-reader",
                "labels": {
                    f"rbac.authorization.k8s.io/aggregate-to-{r}": "true"
                    for r in ("view", "edit", "admin")
                },
            },
            "rules": [
                {
                    "apiGroups": ["metrics.k8s.io"],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "metrics-server-auth-reader", "namespace": "kube-system"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "metrics-server:system:auth-delegator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:metrics-server"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {
                    "apiGroups": [""],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:metrics-server"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:metrics-server",
            },
            "subjects": subject,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "metrics-server", "namespace": "kube-system"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "metrics-server-lab",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "metrics-server",
                    "endpointslice.kubernetes.io/managed-by": "kubelet-py.devcluster",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "caBundle": base64.b64encode(ca_bundle_pem).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def argv(
    binary: Path,
    *,
    work_dir: Path,
    kubeconfig: Path,
    address: str,
    port: int,
    kubelet_ca: Path | None,
) -> list[str]:
    kubelet_tls = (
        [f"--kubelet-certificate-authority={kubelet_ca}"]
        if kubelet_ca is not None
        else ["--kubelet-insecure-tls"]
    )
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={address}",
        f"--secure-port={port}",
        f"--tls-cert-file={work_dir / 'serving.crt'}",
        f"--tls-private-key-file={work_dir / 'serving.key'}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--kubelet-use-node-status-port",
        *kubelet_tls,
        f"--metric-resolution={METRIC_RESOLUTION_S}s",
        "--kubelet-request-timeout=5s",
        "--v=2",
    ]


@dataclass(frozen=True)
class MetricsServerHandle:
    address: str
    port: int
    component: Component
    manifest: Path

    @property
    def log_path(self) -> Path:
        return self.component.log_path

    def stop(self, cluster: LocalCluster) -> None:
        """Unregister the APIService and the rest, then stop the process (by PID)."""
        cluster.kubectl("delete", "--ignore-not-found", "-f", str(self.manifest), check=False)
        self.component.stop()


def start_metrics_server(
    cluster: LocalCluster, *, kubelet_ca: Path | None = None, timeout_s: float = 60.0
) -> MetricsServerHandle:
    """Build (once), register and start metrics-server; the cluster stops it with the rest."""
    binary = ensure_go_tool("metrics-server", progress=cluster.progress)
    work = cluster.work_dir / "metrics-server"
    work.mkdir(parents=True, exist_ok=True)
    address = str(cluster.netlab.gateway)
    pki = cluster.pki
    # the aggregator dials the endpoint but checks the name <service>.<namespace>.svc
    pki.ca.issue(
        "metrics-server",
        dns_names=["metrics-server.kube-system.svc", "metrics-server.kube-system"],
        ip_addresses=[ipaddress.ip_address(address)],
        server=True,
    ).write(work, "serving")
    client = pki.ca.issue(USER, client=True)
    kubeconfig = work / "kubeconfig"
    write_atomic(
        kubeconfig,
        kubeconfig_yaml(
            cluster_name="kubelet-py-lab",
            server=cluster.lab_server_url,
            ca_pem=pki.ca.pair.cert_pem,
            user=USER,
            client=client,
        ),
        mode=0o600,
    )
    objects = manifests(address=address, port=PORT, ca_bundle_pem=pki.ca.pair.cert_pem)
    manifest = work / "manifests.json"
    write_atomic(
        manifest, json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}).encode()
    )
    cluster.kubectl("apply", "-f", str(manifest))
    component = cluster.launch(
        "metrics-server",
        argv(binary, work_dir=work, kubeconfig=kubeconfig, address=address, port=PORT,
             kubelet_ca=kubelet_ca),
    )  # fmt: skip
    handle = MetricsServerHandle(address=address, port=PORT, component=component, manifest=manifest)
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        deadline = time.monotonic() + timeout_s
        while True:
            if component.exit_code() is not None:
                raise ComponentStartError(
                    f"metrics-server exited with {component.exit_code()}:\n{component.log_tail()}"
                )
            if run_in_netns(cluster.netlab.lab_netns_path, lambda: _livez(address, PORT, ctx)):
                break
            if time.monotonic() > deadline:
                raise ComponentStartError(
                    f"metrics-server not live after {timeout_s:.0f} s:\n{component.log_tail()}"
                )
            time.sleep(0.3)
    except BaseException:
        handle.stop(cluster)
        raise
    return handle


def _livez(host: str, port: int, ctx: ssl.SSLContext) -> bool:
    import http.client

    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=2)
    try:
        conn.request("GET", "/livez")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
