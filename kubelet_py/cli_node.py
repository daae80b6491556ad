"""`kubelet-py node run`: the node agent, configured like the upstream kubelet.

Flags mirror the kubelet's where they exist (--kubeconfig, --hostname-override,
--node-ip, --node-labels, --register-with-taints, --root-dir, --pod-manifest-path,
--config for a KubeletConfiguration file). Without --kubeconfig the agent runs
standalone: static pods only, no API at all.
"""

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from kubelet_py.agent.agent import Agent, AgentConfig
from kubelet_py.agent.kubeletconfig import ConfigError as KubeletConfigError
from kubelet_py.agent.kubeletconfig import KubeletConfiguration, default_eviction_hard
from kubelet_py.agent.kubeletconfig import load as load_kubelet_config
from kubelet_py.agent.network import NetworkSettings
from kubelet_py.server import ServerConfig


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    node = commands.add_parser(
        "node",
        help="run the node agent (joins a cluster with --kubeconfig, or runs static pods alone)",
        description="Run kubelet-py's node agent.",
    )
    actions = node.add_subparsers(dest="node_command", metavar="<action>")
    actions.required = True
    run = actions.add_parser("run", help="run until SIGTERM or Ctrl-C")
    add_run_arguments(run)


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The node agent's flags (shared with `kubelet-py join`, which starts the node after)."""
    run.add_argument("--config", type=Path, help="a KubeletConfiguration YAML file")
    run.add_argument("--kubeconfig", type=Path, help="credentials for the API server")
    run.add_argument("--hostname-override", "--node-name", dest="node_name", default=None)
    run.add_argument("--node-ip", default=None, help="the node's InternalIP")
    run.add_argument("--root-dir", "--root", type=Path, default=Path("/var/lib/kubelet-py"))
    run.add_argument("--pod-manifest-path", type=Path, default=None, help="static pod directory")
    run.add_argument("--node-labels", default="", help="key=value,... to register the node with")
    run.add_argument("--register-with-taints", default="", help="key=value:Effect,...")
    run.add_argument("--cri-socket", type=Path, default=None)
    run.add_argument(
        "--remote-runtime",
        action="store_true",
        help="use the CRI runtime already serving --cri-socket instead of the built-in one",
    )
    run.add_argument("--cgroup-parent", default="kubelet-py")
    run.add_argument(
        "--oci-runtime",
        default="kubelet-py-oci",
        metavar="NAME|PATH",
        help="the built-in runtime's OCI executor: kubelet-py-oci (ours, default), runc or crun",
    )
    run.add_argument(
        "--monitor",
        choices=("conmon", "node"),
        default="node",
        help="what holds each container's stdio, log and exit: one node-wide monitor "
        "process per runtime root (default) or a conmon per container",
    )
    run.add_argument("--plain-http-registry", action="append", default=[], metavar="HOST")
    run.add_argument(
        "--registry-certs-dir",
        type=Path,
        default=None,
        help="<dir>/<host:port>/ca.crt: registry CAs to trust (default <root-dir>/certs.d)",
    )
    run.add_argument("--cluster-dns", default="", help="comma-separated DNS server IPs")
    run.add_argument(
        "--rotate-certificates",
        type=_flag,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="renew the client certificate (the kubeconfig's client-certificate file) through "
        "CSRs at 70-90%% of its lifetime (default: on for `join`, off for `node run`)",
    )
    run.add_argument(
        "--rotate-server-certificates",
        type=_flag,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="get the kubelet API's serving certificate from a kubernetes.io/kubelet-serving CSR "
        "(self-signed until an approver approves it) and renew it (default: on for `join`)",
    )
    run.add_argument("--cluster-domain", default=None, help="default cluster.local")
    api = run.add_argument_group("kubelet API (HTTPS: kubectl logs through the API server)")
    api.add_argument("--port", type=int, default=None, help="HTTPS port (10250); 0 turns it off")
    api.add_argument(
        "--healthz-port",
        type=int,
        default=None,
        help="plain-HTTP /healthz port on 127.0.0.1 (10248); 0 turns it off",
    )
    api.add_argument(
        "--anonymous-auth",
        type=_flag,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="let requests without credentials in as system:anonymous (default false)",
    )
    api.add_argument(
        "--client-ca-file",
        type=Path,
        default=None,
        help="CA bundle for client certificates (default: the CA in the kubeconfig)",
    )
    net = run.add_argument_group("pod network (CNI)")
    net.add_argument(
        "--network",
        choices=("loopback", "cni"),
        default="loopback",
        help="cni: pods join the node's CNI network; loopback: pods get lo only (default)",
    )
    net.add_argument("--cni-conf-dir", type=Path, default=None, help="default <root>/cni/net.d")
    net.add_argument(
        "--cni-bin-dir",
        type=Path,
        action="append",
        default=[],
        help="more plugin directories searched after ours (e.g. /usr/lib/cni)",
    )
    net.add_argument(
        "--cni-manage-config",
        choices=("true", "false"),
        default="true",
        help="write the node's conflist from its podCIDR (false: use the one in --cni-conf-dir)",
    )
    net.add_argument("--cluster-cidr", default="", help="pod addresses of the whole cluster")
    net.add_argument("--overlay", choices=("vxlan", "none"), default="vxlan")
    net.add_argument("--vxlan-vni", type=int, default=1)
    net.add_argument(
        "--pod-isolation",
        action="store_true",
        help="pods of this node cannot reach each other (Docker's --icc=false)",
    )
    run.add_argument("-v", "--verbose", action="store_true")


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "t", "yes"):
        return True
    if value in ("false", "0", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _server_config(kc: KubeletConfiguration) -> ServerConfig:
    """The kubelet API server's settings from the effective configuration."""
    return ServerConfig(
        port=kc.port,
        address=kc.address,
        healthz_port=kc.healthz_port,
        healthz_bind_address=kc.healthz_bind_address,
        anonymous_auth=kc.anonymous_auth,
        client_ca_file=Path(kc.client_ca_file) if kc.client_ca_file else None,
        tls_cert_file=Path(kc.tls_cert_file) if kc.tls_cert_file else None,
        tls_private_key_file=Path(kc.tls_private_key_file) if kc.tls_private_key_file else None,
        authn_cache_ttl_s=kc.webhook_authn_cache_ttl_s,
        authz_allowed_ttl_s=kc.authz_allowed_ttl_s,
        authz_denied_ttl_s=kc.authz_denied_ttl_s,
    )


def _taints(text: str) -> tuple[dict[str, str], ...]:
    out = []
    for item in filter(None, text.split(",")):
        kv, _, effect = item.partition(":")
        key, _, value = kv.partition("=")
        out.append({"key": key, "value": value, "effect": effect or "NoSchedule"})
    return tuple(out)


def _default_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: UDP connect only picks a route
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _network_settings(args: argparse.Namespace) -> NetworkSettings:
    return NetworkSettings(
        mode=args.network,
        conf_dir=args.cni_conf_dir,
        bin_dirs=tuple(args.cni_bin_dir),
        manage_config=args.cni_manage_config == "true",
        cluster_cidr=args.cluster_cidr,
        overlay=args.overlay,
        vni=args.vxlan_vni,
        isolation=args.pod_isolation,
    )


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The agent's configuration: the KubeletConfiguration file (defaults applied), with the
    flags that were given overriding it, as the upstream kubelet does. Raises ConfigError."""
    kc = KubeletConfiguration(eviction_hard=default_eviction_hard())
    if args.config is not None:
        kc, warnings = load_kubelet_config(args.config)
        for warning in warnings:
            logging.getLogger("kubelet_py").warning("kubelet config %s: %s", args.config, warning)
    node_name = (args.node_name or socket.gethostname()).lower()
    root: Path = args.root_dir
    labels = dict(kv.split("=", 1) for kv in filter(None, args.node_labels.split(",")))
    overrides: dict[str, Any] = {}
    if args.register_with_taints:
        overrides["register_with_taints"] = _taints(args.register_with_taints)
    if args.pod_manifest_path is not None:
        overrides["static_pod_path"] = str(args.pod_manifest_path)
    if args.cluster_dns:
        overrides["cluster_dns"] = tuple(filter(None, args.cluster_dns.split(",")))
    if args.cluster_domain is not None:
        overrides["cluster_domain"] = args.cluster_domain
    if args.port is not None:
        overrides["port"] = args.port
    if args.healthz_port is not None:
        overrides["healthz_port"] = args.healthz_port
    if args.anonymous_auth is not None:
        overrides["anonymous_auth"] = args.anonymous_auth
    if args.client_ca_file is not None:
        overrides["client_ca_file"] = str(args.client_ca_file)
    kc = dataclasses.replace(kc, **overrides)
    return AgentConfig(
        node_name=node_name,
        node_ip=args.node_ip or _default_ip(),
        root=root,
        kubeconfig=args.kubeconfig,
        static_pod_path=Path(kc.static_pod_path) if kc.static_pod_path else None,
        cri_socket=args.cri_socket or (root / "cri.sock"),
        embedded_runtime=not args.remote_runtime,
        cgroup_parent=args.cgroup_parent,
        oci_runtime=args.oci_runtime,
        monitor=args.monitor,
        cluster_dns=kc.cluster_dns,
        cluster_domain=kc.cluster_domain or "cluster.local",
        node_labels=labels,
        register_with_taints=kc.register_with_taints,
        max_pods=kc.max_pods,
        plain_http_registries=tuple(args.plain_http_registry),
        rotate_client_certificates=(
            args.rotate_certificates
            if args.rotate_certificates is not None
            else kc.rotate_certificates
        ),
        rotate_server_certificates=(
            args.rotate_server_certificates
            if args.rotate_server_certificates is not None
            else kc.server_tls_bootstrap
        ),
        network=_network_settings(args),
        registry_certs_dir=args.registry_certs_dir,
        kubelet_server=_server_config(kc),
        kubelet=kc,
    )


async def _main(config: AgentConfig) -> int:
    agent = Agent(config)
    task = asyncio.create_task(agent.run(), name="agent")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger("kubelet_py").info("stopping; containers keep running")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.geteuid() != 0:
        print("error: the node agent needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 1
    try:
        config = config_from_args(args)
    except KubeletConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    config.root.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_main(config))
