"""`kubelet-py cri serve`: run the CRI v1 gRPC server alone, for crictl or the upstream kubelet."""

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from cni.install import install as install_plugins
from cri.images import ImageService
from cri.images.digest import Digest
from cri.runtime.service import RuntimeService
from cri.server import CRIServer
from kubelet_py.agent.network import CNIPodNetwork, NetworkSettings, NodePaths
from kubelet_py.cli_images import DEFAULT_ROOT, registry_config

DEFAULT_SOCKET = Path("/run/kubelet-py/cri.sock")


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    cri = commands.add_parser(
        "cri",
        help="serve the CRI v1 gRPC API on a unix socket (for crictl and kubelets)",
        description="Run kubelet-py's container runtime interface server.",
    )
    actions = cri.add_subparsers(dest="cri_command", metavar="<action>")
    actions.required = True
    serve = actions.add_parser("serve", help="serve until SIGTERM or Ctrl-C")
    serve.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="state directory")
    serve.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help="unix socket path")
    serve.add_argument(
        "--cgroup-parent",
        default="kubelet-py",
        help="name of the cgroup made beneath this process's own cgroup for all pods",
    )
    serve.add_argument(
        "--oci-runtime",
        default="kubelet-py-oci",
        metavar="NAME|PATH",
        help="the OCI executor under conmon: kubelet-py-oci (ours, default), runc or crun",
    )
    serve.add_argument(
        "--monitor",
        choices=("conmon", "node"),
        default="node",
        help="what holds each container's stdio, log and exit: one node-wide monitor "
        "process per runtime root (default) or a conmon per container",
    )
    serve.add_argument(
        "--stream-address",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the exec/attach/port-forward streaming server listens (loopback, any port)",
    )
    serve.add_argument(
        "--network",
        choices=("none", "loopback"),
        default="none",
        help="loopback: pods get loopback only and NetworkReady is reported true (until CNI)",
    )
    serve.add_argument(
        "--cni-conf-dir",
        type=Path,
        default=None,
        help="pods join the CNI network configured here (default: loopback-only pods)",
    )
    serve.add_argument(
        "--cni-bin-dir",
        type=Path,
        action="append",
        default=[],
        help="more plugin directories searched after ours (e.g. /usr/lib/cni)",
    )
    serve.add_argument("--plain-http", action="append", default=[], metavar="HOST")
    serve.add_argument("--ca-file", action="append", default=[], metavar="HOST=PATH")
    serve.add_argument("--mirror", action="append", default=[], metavar="HOST=URL")


async def _serve(args: argparse.Namespace) -> int:
    images = ImageService(args.root / "images", registry=registry_config(args))
    network = None
    if args.cni_conf_dir is not None:
        paths = NodePaths.under(args.root, NetworkSettings(conf_dir=args.cni_conf_dir))
        install_plugins(paths.bin_dir)
        network = CNIPodNetwork(paths, args.cni_bin_dir)
    runtime = RuntimeService(
        args.root / "runtime",
        images=images,
        cgroup_parent_name=args.cgroup_parent,
        oci_runtime=args.oci_runtime,
        monitor=args.monitor,
        network=network,
        network_ready=(lambda: (True, "")) if args.network == "loopback" else None,
    )
    images.set_in_use(lambda: {Digest(c.image_id) for c in runtime.containers()})
    await runtime.start()
    server = CRIServer(
        socket_path=args.socket,
        images=images,
        runtime=runtime,
        stream_address=args.stream_address,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"serving CRI v1 on unix://{args.socket}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await server.stop()
        await runtime.close()
        await images.close()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))
