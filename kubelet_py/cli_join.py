"""`kubelet-py join`: turn this machine into a node of a cluster with a token and a CA hash.

    kubelet-py join --server https://10.0.0.1:6443 --token abcdef.0123456789abcdef \\
        --discovery-token-ca-cert-hash sha256:… [--node-name n1] [--root-dir DIR] [--no-start]

Discovery, TLS bootstrap and the credential files are kubelet_py.bootstrap's; this
module only maps flags to a JoinRequest, errors to exit codes (2 bad input, 1 needs a
fix, 75 temporary: run it again), and then starts the node agent with the same flags
as `kubelet-py node run` (client and serving certificate rotation on by default).
"""

import argparse
import asyncio
import datetime
import logging
import socket
import sys
from pathlib import Path

from kubelet_py import cli_node
from kubelet_py.bootstrap.errors import BadInput, BootstrapError
from kubelet_py.bootstrap.join import JoinRequest, describe_failure, join, usable_kubeconfig
from kubelet_py.bootstrap.token import BootstrapToken

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_TEMPORARY = 75  # EX_TEMPFAIL: nothing is wrong with the input; try again later
_MIN_LEFT = datetime.timedelta(minutes=1)


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "join",
        help="join a cluster as a node with a bootstrap token (TLS bootstrap), then run it",
        description=(
            "Verify the cluster's CA from kube-public/cluster-info (signed for the token, "
            "pinned by --discovery-token-ca-cert-hash), get a client certificate through a "
            "CSR, write <root-dir>/kubelet.conf, and start the node agent. A node whose "
            "--kubeconfig already holds valid credentials skips straight to starting."
        ),
    )
    join_group = parser.add_argument_group("joining")
    join_group.add_argument("--server", help="the API server, https://host:port")
    join_group.add_argument("--token", help="a bootstrap token, <id>.<secret>")
    join_group.add_argument(
        "--discovery-token-ca-cert-hash",
        dest="ca_hashes",
        action="append",
        default=[],
        metavar="sha256:HEX",
        help="pin of the cluster CA's public key (repeatable; any one must match)",
    )
    join_group.add_argument(
        "--discovery-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to retry discovery while the API server is unreachable or the token "
        "is not signed yet (default 300)",
    )
    join_group.add_argument(
        "--csr-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="how long to wait for the client CSR to be approved and signed (default 900)",
    )
    join_group.add_argument(
        "--no-start", action="store_true", help="write the credentials and exit"
    )
    cli_node.add_run_arguments(parser)


def _progress(message: str) -> None:
    print(f"[join] {message}", file=sys.stderr, flush=True)


def _request(args: argparse.Namespace, node_name: str, kubeconfig: Path) -> JoinRequest:
    if not args.server:
        raise BadInput("--server is needed to join (the API server's https:// URL)")
    if not args.token:
        raise BadInput("--token is needed to join (a bootstrap token, <id>.<secret>)")
    if not args.ca_hashes:
        raise BadInput(
            "--discovery-token-ca-cert-hash is needed: without it anyone between this machine "
            "and the API server could pose as the cluster"
        )
    return JoinRequest(
        server=args.server,
        token=BootstrapToken.parse(args.token),
        ca_hashes=tuple(args.ca_hashes),
        node_name=node_name,
        root=args.root_dir,
        kubeconfig=kubeconfig,
        discovery_timeout_s=args.discovery_timeout,
        csr_timeout_s=args.csr_timeout,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    node_name = (args.node_name or socket.gethostname()).lower()
    root: Path = args.root_dir
    kubeconfig: Path = args.kubeconfig or root / "kubelet.conf"
    why_not = usable_kubeconfig(kubeconfig, min_left=_MIN_LEFT)
    try:
        if why_not is None:
            _progress(f"{kubeconfig} holds valid credentials; not bootstrapping again")
        else:
            _progress(f"bootstrapping: {why_not}")
            request = _request(args, node_name, kubeconfig)
            asyncio.run(join(request, progress=_progress))
    except BadInput as err:
        _progress(f"error: {err}")
        return EXIT_BAD_INPUT
    except BootstrapError as err:
        _progress(describe_failure(err))
        return EXIT_TEMPORARY if err.temporary else EXIT_FAILED
    if args.no_start:
        _progress(f"joined; start the node with: kubelet-py node run --kubeconfig {kubeconfig}")
        return 0
    args.kubeconfig = kubeconfig
    args.node_name = node_name
    if args.rotate_certificates is None:
        args.rotate_certificates = True
    if args.rotate_server_certificates is None:
        args.rotate_server_certificates = True
    return cli_node.run(args)
