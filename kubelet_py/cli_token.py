"""`kubelet-py token create`: a bootstrap token for joining nodes, and the join command to use it.

Like `kubeadm token create --print-join-command`: writes the kube-system Secret (with
the group the Helm chart binds, signing and authentication usages, an expiration) using
an admin kubeconfig, and prints `kubelet-py join ...` with the CA hash of that kubeconfig's
CA. The Secret's keys are in kubelet_py/bootstrap/token.py.
"""

import argparse
import asyncio
import datetime
import sys
from pathlib import Path

from kubelet_py.agent.apiclient import ApiClient, ApiError, load_kubeconfig
from kubelet_py.bootstrap.discovery import ca_cert_hash_of_pem
from kubelet_py.bootstrap.errors import BootstrapError
from kubelet_py.bootstrap.token import NODE_TOKEN_GROUP, BootstrapToken


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    token = commands.add_parser("token", help="make bootstrap tokens for joining nodes")
    actions = token.add_subparsers(dest="token_command", metavar="<action>")
    actions.required = True
    create = actions.add_parser("create", help="create a token and print the join command")
    create.add_argument("--kubeconfig", type=Path, required=True, help="an admin's kubeconfig")
    create.add_argument(
        "--ttl", type=float, default=86400.0, metavar="SECONDS", help="lifetime (default 24 h)"
    )
    create.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=None,
        help=f"auth-extra-groups (repeatable; default {NODE_TOKEN_GROUP})",
    )
    create.add_argument(
        "--server", default=None, help="API server URL for the join command (default: kubeconfig's)"
    )


async def _create(args: argparse.Namespace) -> str:
    cfg = load_kubeconfig(args.kubeconfig)
    if not cfg.ca_pem:
        raise BootstrapError(f"{args.kubeconfig} names no CA; the join command needs its hash")
    token = BootstrapToken.generate()
    expiration = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=args.ttl)
    body = token.secret_manifest(
        expiration=expiration, groups=tuple(args.groups or (NODE_TOKEN_GROUP,))
    )
    api = ApiClient(cfg, user_agent="kubelet-py/token")
    try:
        await api.create("/api/v1/namespaces/kube-system/secrets", body)
    except ApiError as err:
        raise BootstrapError(f"creating Secret bootstrap-token-{token.id}: {err}") from err
    finally:
        await api.close()
    return (
        f"kubelet-py join --server {args.server or cfg.server} --token {token.value} "
        f"--discovery-token-ca-cert-hash {ca_cert_hash_of_pem(cfg.ca_pem)}"
    )


def run(args: argparse.Namespace) -> int:
    try:
        print(asyncio.run(_create(args)))
    except (BootstrapError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
