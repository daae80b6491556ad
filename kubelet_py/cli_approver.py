"""`kubelet-py approve-serving-csrs`: approve kubelet-serving CSRs whose SANs match their Node.

A thin shell over kubelet_py.bootstrap.approver, run with credentials that may approve
for the kubernetes.io/kubelet-serving signer (an admin kubeconfig, or in-cluster with
the Helm chart's servingApprover RBAC).
"""

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from kubelet_py.agent.apiclient import ApiClient, ApiError, KubeConfig, load_kubeconfig
from kubelet_py.bootstrap import approver


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    cmd = commands.add_parser(
        "approve-serving-csrs",
        help="approve kubelet-serving CSRs whose SANs are their Node's name and addresses",
        description=approver.__doc__.splitlines()[0] if approver.__doc__ else None,
    )
    cmd.add_argument(
        "--kubeconfig", type=Path, default=None, help="default: the pod's service account"
    )
    cmd.add_argument("--interval", type=float, default=2.0, metavar="SECONDS")
    cmd.add_argument("--once", action="store_true", help="one pass, then exit")


SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster_config() -> KubeConfig:
    """The pod's service account, as client-go's rest.InClusterConfig reads it."""
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if not host or not port:
        raise ValueError("no --kubeconfig and not in a pod (KUBERNETES_SERVICE_HOST is unset)")
    return KubeConfig(
        server=f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}",
        ca_pem=(SA_DIR / "ca.crt").read_bytes(),
        cert_pem=None,
        key_pem=None,
        token=(SA_DIR / "token").read_text().strip(),
    )


async def _main(args: argparse.Namespace) -> int:
    cfg = load_kubeconfig(args.kubeconfig) if args.kubeconfig else in_cluster_config()
    api = ApiClient(cfg, user_agent="kubelet-py/approver")
    try:
        if args.once:
            for name in await approver.approve_pending(api, said=set()):
                print(name)
            return 0
        await approver.run(api, interval_s=args.interval)
    finally:
        await api.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 0
    except (ApiError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
