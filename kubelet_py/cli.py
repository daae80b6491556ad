"""The `kubelet-py` command line: one entry point, a subcommand per job.

Subcommands grow with the project; each is a thin shell over a library API so
tests drive the same code people do.
"""

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kubelet_py import __version__


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubelet-py",
        description=(
            "kubelet-py, a Kubernetes node agent in Python (early development). "
            "What works today: `images` (pull, list, remove, inspect, import OCI images) "
            "and `cluster` (a real local control plane to develop and test against). "
            "The node agent, container runtime, networking and volumes follow."
        ),
        epilog="Run `kubelet-py <command> --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"kubelet-py {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")

    commands.add_parser("version", help="print the version of kubelet-py and its pinned Kubernetes")

    cluster = commands.add_parser(
        "cluster",
        help="a real local control plane (etcd, apiserver, controller-manager, scheduler)",
        description=(
            "Build (once, cached by version) and run a real Kubernetes control plane inside "
            "a 'lab' network namespace. The apiserver is reachable from this shell at "
            "127.0.0.1 through a forwarder. Needs root."
        ),
    )
    cluster_cmds = cluster.add_subparsers(dest="cluster_command", metavar="<action>")
    cluster_cmds.required = True
    cluster_cmds.add_parser(
        "build",
        help="build and cache the control plane, crictl, helm and metrics-server, then exit",
    )
    up = cluster_cmds.add_parser(
        "up", help="start the control plane, print what to try, and run until Ctrl-C"
    )
    up.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where PKI, kubeconfigs, etcd data and logs go (default: a new temp dir, removed "
        "on exit)",
    )
    up.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="also create this many node network namespaces on the lab underlay",
    )
    up.add_argument(
        "--node",
        action="store_true",
        help="also run a kubelet-py node with the examples in manifests/ (the main job)",
    )
    standalone = commands.add_parser(
        "demo-standalone",
        help="run the static pod examples on a kubelet-py node with no cluster (until Ctrl-C)",
    )
    standalone.add_argument(
        "--check", action="store_true", help="start, check the static pod answers, stop"
    )
    up.add_argument(
        "--metrics-server",
        action="store_true",
        help="also run metrics-server (built from its Go module once), so `kubectl top` works",
    )
    up.add_argument(
        "--check",
        action="store_true",
        help="start, list namespaces with kubectl, stop: a smoke test of the whole path",
    )
    _add_lazy_parsers(commands, argv[0] if argv else "")

    install = commands.add_parser(
        "install",
        help="write a systemd unit and /etc/kubelet-py for running kubelet-py on this host",
        description=(
            "Write kubelet-py.service, /etc/kubelet-py/config.yaml, kubelet-py.env and the "
            "static pod directory (under --prefix, / by default). Then: `kubelet-py join "
            "--no-start ...` and `systemctl daemon-reload && systemctl enable --now kubelet-py`."
        ),
    )
    install.add_argument("--prefix", type=Path, default=Path("/"), help="install under this root")
    install.add_argument(
        "--exec",
        dest="exec_path",
        type=Path,
        default=None,
        help="the kubelet-py executable the unit runs (default: the one on PATH)",
    )
    install.add_argument("--config-dir", type=Path, default=Path("/etc/kubelet-py"))
    install.add_argument("--root-dir", type=Path, default=Path("/var/lib/kubelet-py"))
    install.add_argument("--force", action="store_true", help="replace files that exist")

    down = cluster_cmds.add_parser(
        "down", help="clean up a cluster whose `up` process was killed (by its work dir)"
    )
    down.add_argument("--work-dir", type=Path, required=True)
    return parser


def _add_lazy_parsers(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", wanted: str
) -> None:
    # Each command's module (and its heavy imports: aiohttp, grpc) loads only when it runs
    # or when --help is asked for; `images pull` does not pay for the gRPC stack.
    from kubelet_py import cli_images

    cli_images.add_parser(commands)
    if wanted in ("node", "-h", "--help", ""):
        from kubelet_py import cli_node

        cli_node.add_parser(commands)
    else:
        commands.add_parser("node", help="run the node agent")
    if wanted in ("join", "-h", "--help", ""):
        from kubelet_py import cli_join

        cli_join.add_parser(commands)
    else:
        commands.add_parser("join", help="join a cluster as a node with a bootstrap token")
    if wanted in ("token", "-h", "--help", ""):
        from kubelet_py import cli_token

        cli_token.add_parser(commands)
    else:
        commands.add_parser("token", help="make bootstrap tokens for joining nodes")
    if wanted in ("approve-serving-csrs", "-h", "--help", ""):
        from kubelet_py import cli_approver

        cli_approver.add_parser(commands)
    else:
        commands.add_parser("approve-serving-csrs", help="approve kubelet-serving CSRs")
    if wanted in ("cri", "-h", "--help", ""):
        from kubelet_py import cli_cri

        cli_cri.add_parser(commands)
    else:
        commands.add_parser("cri", help="serve the CRI v1 gRPC API on a unix socket")


def _cmd_version() -> int:
    from kubelet_py.devcluster.build import K8S_VERSION

    print(f"kubelet-py {__version__} (control plane pinned to Kubernetes {K8S_VERSION})")
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from kubelet_py.devcluster import DevClusterError, LocalCluster, ensure_binaries
    from kubelet_py.devcluster.build import ensure_go_tool
    from kubelet_py.devcluster.cluster import cleanup_from_state

    try:
        if args.cluster_command == "down":
            if not cleanup_from_state(args.work_dir, progress=_progress):
                _progress(f"no cluster state in {args.work_dir}; nothing to clean up")
            return 0
        binaries = ensure_binaries(progress=_progress)
        if args.cluster_command == "build":
            crictl = ensure_go_tool("crictl", progress=_progress)
            helm = ensure_go_tool("helm", progress=_progress)
            metrics_server = ensure_go_tool("metrics-server", progress=_progress)
            print(binaries.bin_dir)
            print(crictl)
            print(helm)
            print(metrics_server)
            return 0
        cluster = LocalCluster(binaries=binaries, work_dir=args.work_dir, progress=_progress)
        with cluster:
            for i in range(args.nodes):
                node = cluster.add_node(f"node{i + 1}")
                _progress(f"node namespace {node.netns} at {node.address}")
            if args.metrics_server:
                from kubelet_py.devcluster.metrics_server import start_metrics_server

                # every node's serving cert is self-signed: nothing to check them against
                ms = start_metrics_server(cluster, kubelet_ca=None)
                _progress(f"metrics-server on https://{ms.address}:{ms.port} (`kubectl top`)")
            if args.check and not args.node:
                print(cluster.kubectl("get", "namespaces").stdout, end="")
                return 0
            print(_try_this(cluster.admin_kubeconfig, binaries.bin_dir, cluster.logs_dir))
            if args.node:
                from kubelet_py.devcluster.demo import Demo, check_examples, run_demo

                failed: list[str] = []

                def check(demo: Demo) -> None:
                    for what, ok, detail in check_examples(demo):
                        print(f"{'ok' if ok else 'FAILED'}: {what}: {detail.strip()[:120]}")
                        if not ok:
                            failed.append(what)

                run_demo(
                    cluster,
                    progress=_progress,
                    wait=check if args.check else (lambda demo: _wait_for_signal()),
                )
                if failed:
                    _progress(f"error: examples failed: {', '.join(failed)}")
                    return 1
            else:
                _wait_for_signal()
    except DevClusterError as err:
        _progress(f"error: {err}")
        return 1
    return 0


def _cmd_standalone(args: argparse.Namespace) -> int:
    from kubelet_py.devcluster import DevClusterError
    from kubelet_py.devcluster.demo import run_standalone

    try:
        run_standalone(
            progress=_progress,
            wait=(lambda text: None) if args.check else (lambda text: _wait_for_signal()),
        )
    except DevClusterError as err:
        _progress(f"error: {err}")
        return 1
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    import shutil

    from kubelet_py.install import DEFAULT_EXEC, InstallError, apply_install, plan_install

    found = shutil.which("kubelet-py")
    exec_path = args.exec_path or (Path(found).absolute() if found else DEFAULT_EXEC)
    files, dirs = plan_install(
        args.prefix, exec_path=exec_path, config_dir=args.config_dir, root_dir=args.root_dir
    )
    try:
        apply_install(files, dirs, force=args.force)
    except InstallError as err:
        _progress(f"error: {err}")
        return 1
    for f in files:
        print(f.path)
    _progress(
        "next: kubelet-py join --no-start --server ... --token ... "
        "--discovery-token-ca-cert-hash ...; systemctl daemon-reload; "
        "systemctl enable --now kubelet-py"
    )
    return 0


def _try_this(kubeconfig: Path, bin_dir: Path, logs: Path) -> str:
    return f"""
The control plane is up. In another shell:

  export KUBECONFIG={kubeconfig}
  export PATH={bin_dir}:$PATH
  kubectl get --raw '/readyz?verbose'
  kubectl get namespaces
  kubectl create deployment hello --image=busybox --replicas=2 -- sleep 3600
  kubectl get deploy,rs,pods -o wide   # pods stay Pending until a kubelet-py node joins
  kubectl get events -A

Component logs: {logs}
Press Ctrl-C to stop everything and clean up.
"""


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    stop.wait()
    _progress("stopping the control plane")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "version":
        return _cmd_version()
    if args.command == "demo-standalone":
        return _cmd_standalone(args)
    if args.command == "cluster":
        return _cmd_cluster(args)
    if args.command == "images":
        from kubelet_py import cli_images

        return cli_images.run(args)
    if args.command == "cri":
        from kubelet_py import cli_cri

        return cli_cri.run(args)
    if args.command == "join":
        from kubelet_py import cli_join

        return cli_join.run(args)
    if args.command == "token":
        from kubelet_py import cli_token

        return cli_token.run(args)
    if args.command == "install":
        return _cmd_install(args)
    if args.command == "approve-serving-csrs":
        from kubelet_py import cli_approver

        return cli_approver.run(args)
    if args.command == "node":
        from kubelet_py import cli_node

        return cli_node.run(args)
    parser.error(f"unknown command {args.command}")
    return 2
